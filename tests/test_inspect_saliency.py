"""Logit lens, gradient × input and integrated gradients (completeness), and `lmkit inspect`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lmkit.cli import cli
from lmkit.inspect import gradient_x_input, integrated_gradients, logit_lens, token_logit_fn
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.encoder import EncoderLM

COMMON = dict(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32)
CONFIGS = {
    "llama": ModelConfig(**COMMON),
    "gpt2": ModelConfig(**COMMON, norm="layernorm", activation="gelu_tanh", gated_ffn=False, position="learned"),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def decoder(request):
    torch.manual_seed(0)
    return DecoderLM(CONFIGS[request.param]).eval()


IDS = torch.tensor([[5, 9, 17, 3, 44, 21, 8, 30, 12]])


def test_logit_lens_ends_at_the_models_logits(decoder):
    lens = logit_lens(decoder, IDS, top_k=3)
    assert [r.layer for r in lens] == [0, 1, 2]
    with torch.no_grad():
        logits = decoder(IDS).logits[0]
    assert torch.allclose(lens[-1].logits, logits, atol=1e-5)
    assert torch.equal(lens[-1].top_ids[:, 0], logits.argmax(-1))
    row = lens[0].to_dict(lambda i: f"<{i}>")["top"][0]
    assert len(row) == 3 and row[0]["token"] == f"<{row[0]['id']}>" and row[0]["prob"] >= row[1]["prob"]


@pytest.mark.parametrize("rule", ["trapezoid", "middle"])
def test_integrated_gradients_completeness(decoder, rule):
    res = integrated_gradients(decoder, IDS, steps=32, rule=rule)
    gap = abs(res.delta) / abs(res.f_input - res.f_baseline)
    assert gap < 0.01, gap  # Σ attributions = f(x) − f(baseline) within 1 %
    assert res.attributions.shape == (9,) and res.per_dim.shape == (9, 32)
    with torch.no_grad():  # f is the top next-token logit at the last position
        assert res.f_input == pytest.approx(float(decoder(IDS).logits[0, -1].max()), abs=1e-4)


def test_gradient_x_input_by_hand(decoder):
    scores = gradient_x_input(decoder, IDS, token_logit_fn(-1, 7))
    e = decoder.embed_tokens(IDS).detach().requires_grad_(True)
    hook = decoder.embed_tokens.register_forward_hook(lambda m, a, out: e)
    decoder(IDS).logits[0, -1, 7].backward()
    hook.remove()
    assert torch.allclose(scores, (e.grad * e).sum(-1)[0], atol=1e-6)


def test_integrated_gradients_on_an_encoder_with_a_custom_target():
    torch.manual_seed(0)
    enc = EncoderLM(ModelConfig(**{**COMMON, "arch": "encoder", "norm": "layernorm", "norm_position": "post",
                                   "position": "learned", "gated_ffn": False, "activation": "gelu",
                                   "type_vocab_size": 2})).eval()
    res = integrated_gradients(enc, IDS, lambda out: out.pooled[:, 0], baseline="zeros", steps=32)
    assert abs(res.delta) / abs(res.f_input - res.f_baseline) < 0.01
    with pytest.raises(ValueError, match="rule"):
        integrated_gradients(enc, IDS, lambda out: out.pooled[:, 0], rule="simpson")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from lmkit.hub import save_pretrained
    from lmkit.tokenizers.bpe import BPETokenizer

    d = tmp_path_factory.mktemp("inspect")
    tok = BPETokenizer.train(["the cat sat on the mat. the dog ate the bone.\n" * 20], 280)
    torch.manual_seed(0)
    save_pretrained(DecoderLM(ModelConfig(**{**COMMON, "vocab_size": tok.vocab_size, "model_type": "llama"})), d,
                    tokenizer=tok)
    return d


def test_cli_attention_lens_saliency(checkpoint, tmp_path):
    def run(*args):
        return CliRunner().invoke(cli, ["inspect", *args, str(checkpoint), "--prompt", "the cat sat on"])

    r = run("attention", "-o", str(tmp_path / "a.json"), "--layer", "1")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "a.json").read_text())
    n = len(rep["tokens"])
    assert len(rep["attentions"]) == 1 and len(rep["attentions"][0]) == 4 and len(rep["rollout"]) == n
    r = run("lens", "-o", str(tmp_path / "l.json"), "--top-k", "2")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "l.json").read_text())
    assert len(rep["per_layer"]) == 3 and len(rep["per_layer"][0]["top"][0]) == 2
    r = run("saliency", "-o", str(tmp_path / "s.json"), "--steps", "16")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "s.json").read_text())
    assert len(rep["scores"]) == n and abs(rep["completeness_gap"]) < 0.01 * abs(rep["f_input"] - rep["f_baseline"])
    r = run("attention", "--head", "9")
    assert r.exit_code != 0 and "--head 9 is out of range" in r.output


def test_cli_pngs(checkpoint, tmp_path):
    pytest.importorskip("matplotlib")
    for cmd in ("lens", "saliency"):
        out = tmp_path / f"{cmd}.png"
        r = CliRunner().invoke(cli, ["inspect", cmd, str(checkpoint), "--prompt", "the dog", "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert out.read_bytes()[:4] == b"\x89PNG"
