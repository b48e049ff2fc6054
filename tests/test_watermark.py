"""The green-list watermark against `transformers`' WatermarkLogitsProcessor / WatermarkDetector
(same keys and seeds -> the same processed scores, generated tokens, z-scores and p-values),
and the invisible zero-width watermark (embed / extract / survives copy-paste)."""

from __future__ import annotations

import json

import pytest
import torch

from lmkit.data.safety.invisible_watermark import embed, extract, strip
from lmkit.errors import ConfigError
from lmkit.hub import load_pretrained
from lmkit.infer import GenerationConfig, generate
from lmkit.infer.watermark import WatermarkConfig, WatermarkLogitsProcessor
from lmkit.infer.watermark_detect import WatermarkDetector

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import WatermarkLogitsProcessor as HFProcessor  # noqa: E402

V = 97
SETTINGS = [
    dict(seeding_scheme="lefthash", context_width=1, gamma=0.25, delta=2.0),
    dict(seeding_scheme="lefthash", context_width=3, gamma=0.5, delta=1.0, hashing_key=7),
    dict(seeding_scheme="selfhash", context_width=1, gamma=0.25, delta=2.5),
    dict(seeding_scheme="selfhash", context_width=4, gamma=0.3, delta=1.5, hashing_key=123457),
]


class _HFModelConfig:
    bos_token_id, is_encoder_decoder, vocab_size = 1, False, V


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    path = tmp_path_factory.mktemp("wm-llama")
    hf.save_pretrained(path)
    return hf, load_pretrained(path)


@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_processed_scores_equal_transformers(settings):
    cfg = WatermarkConfig(**settings)
    g = torch.Generator().manual_seed(1)
    ids, scores = torch.randint(0, V, (3, 6), generator=g), torch.randn(3, V, generator=g)
    ours = WatermarkLogitsProcessor(cfg)(ids, scores)
    theirs = HFProcessor(V, "cpu", **cfg.to_hf())(ids, scores)
    assert torch.equal(ours, theirs)
    assert (ours - scores).count_nonzero() > 0


@pytest.mark.parametrize("settings", SETTINGS[::2], ids=str)
def test_watermarked_generation_equals_transformers_and_is_detected(pair, settings):
    hf, ours = pair
    cfg = WatermarkConfig(**settings)
    prompt = [5, 6, 7, 8]
    out = generate(ours, [prompt], max_new_tokens=40, min_new_tokens=40, watermark=cfg).sequences[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=40, min_new_tokens=40, do_sample=False,
                          watermarking_config=transformers.WatermarkingConfig(**cfg.to_hf()), pad_token_id=0)
    assert out == ref[0, len(prompt):].tolist()
    # the detector: our z-scores and p-values equal HF's, on watermarked and plain text
    plain = generate(ours, [prompt], max_new_tokens=40, min_new_tokens=40).sequences[0]
    hf_det = transformers.WatermarkDetector(_HFModelConfig(), "cpu", cfg.to_hf())
    det = WatermarkDetector(cfg, V, bos_token_id=1)
    for seq in (out, plain):
        theirs = hf_det(torch.tensor([seq]), return_dict=True)
        mine = det.score(seq)
        assert mine.num_green_tokens == theirs.num_green_tokens[0]
        assert mine.z_score == pytest.approx(float(theirs.z_score[0]), abs=1e-12)
        assert mine.p_value == pytest.approx(float(theirs.p_value[0]), rel=1e-9, abs=1e-300)
    assert det.score(out).z_score > det.score(plain).z_score


@pytest.mark.parametrize("settings", SETTINGS, ids=str)
@pytest.mark.parametrize("ignore_repeated", [False, True])
def test_detector_equals_transformers_on_random_ids(settings, ignore_repeated):
    cfg = WatermarkConfig(**settings)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 20, (2, 50), generator=g)  # a small range: many repeated n-grams
    ids[:, 0] = 1  # BOS, stripped by both
    theirs = transformers.WatermarkDetector(_HFModelConfig(), "cpu", cfg.to_hf(),
                                            ignore_repeated_ngrams=ignore_repeated)(ids, return_dict=True)
    mine = WatermarkDetector(cfg, V, bos_token_id=1, ignore_repeated_ngrams=ignore_repeated)(ids)
    assert [m.num_tokens_scored for m in mine] == theirs.num_tokens_scored.tolist()
    assert [m.z_score for m in mine] == pytest.approx(theirs.z_score.tolist(), abs=1e-12)
    assert [m.p_value for m in mine] == pytest.approx(theirs.p_value.tolist(), rel=1e-9)


def test_config_validation_and_hf_names():
    assert WatermarkConfig.coerce({"greenlist_ratio": 0.4, "bias": 1.0}) == WatermarkConfig(gamma=0.4, delta=1.0)
    assert GenerationConfig(watermark={"delta": 3}).watermark.delta == 3.0
    with pytest.raises(ConfigError, match="seeding_scheme"):
        WatermarkConfig(seeding_scheme="righthash")
    with pytest.raises(ConfigError, match="gamma"):
        WatermarkConfig(gamma=1.0)
    with pytest.raises(ConfigError, match="unknown watermark option"):
        WatermarkConfig.coerce({"strength": 2})
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        WatermarkDetector(WatermarkConfig(), V).score([5])


def test_cli_generate_watermark_then_detect(tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli

    path = _model_dir(tmp_path)
    common = ["--watermark-key", "42", "--watermark-delta", "4"]
    res = CliRunner().invoke(cli, ["generate", str(path), "--prompt", "the", "--max-new-tokens", "60",
                                   "--temperature", "1", "--seed", "0", "--json", "--watermark", *common])
    assert res.exit_code == 0, res.output
    text = json.loads(res.output)["text"]
    marked = CliRunner().invoke(cli, ["watermark", "detect", str(path), "--text", text, *common])
    wrong_key = CliRunner().invoke(cli, ["watermark", "detect", str(path), "--text", text, "--watermark-key", "43"])
    assert marked.exit_code == 0, marked.output
    assert json.loads(marked.output)["z_score"] > json.loads(wrong_key.output)["z_score"] + 2


def _model_dir(tmp_path):
    """A tiny random Llama with a byte-level BPE tokenizer, saved as a checkpoint."""
    from lmkit.hub import save_pretrained
    from test_serve_util import build_tokenizer, tiny_decoder

    tok = build_tokenizer()
    model = tiny_decoder(vocab=tok.vocab_size)
    save_pretrained(model, tmp_path / "m", tokenizer=tok)
    return tmp_path / "m"


def test_invisible_watermark_round_trip_and_copy_paste():
    text = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。 " * 6
    marked = embed(text, "lmkit:model-7 req#42", every=10)
    assert strip(marked) == text and marked != text
    assert len(extract(marked)) >= 5 and set(extract(marked)) == {"lmkit:model-7 req#42"}
    # an excerpt (copy-paste of a middle part) still carries a whole copy; the clipboard keeps it
    excerpt = marked[len(marked) // 3: 2 * len(marked) // 3]
    assert extract(excerpt) and set(extract(excerpt)) == {"lmkit:model-7 req#42"}
    assert extract(marked.encode("utf-8").decode("utf-8")) == extract(marked)
    # a damaged copy is rejected, not misread; stripping removes every copy
    damaged = marked.replace("\u200b", "\u200c", 1)
    assert len(extract(damaged)) == len(extract(marked)) - 1
    assert extract(strip(marked)) == []
