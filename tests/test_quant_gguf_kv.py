"""GGUF import into int4 kernel layers (`load_pretrained("x.gguf", quantized=True)`), `.gguf`
paths in the CLI, the int8 KV cache and `--dtype` on quantized checkpoints (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM

gguf = pytest.importorskip("gguf")

from lmkit.hub import load_pretrained  # noqa: E402
from lmkit.hub.gguf import export_gguf  # noqa: E402
from lmkit.quant.linear import Int4OffsetLinear  # noqa: E402

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 5


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    """One tiny Llama (K-quants need rows of 256) exported as Q4_0 and Q4_K_M (Q4_K + Q6_K + F32 mix)."""
    from lmkit.tokenizers.bpe import BPETokenizer

    tok = BPETokenizer.train(TEXT, vocab_size=280)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=288, d_model=256, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=256, max_seq_len=64,
                      model_type="llama", norm_eps=1e-6)
    m = DecoderLM(cfg).eval()
    d = tmp_path_factory.mktemp("gguf_q")
    for kind in ("q4_0", "q4_k_m"):
        export_gguf(m, d / f"{kind}.gguf", tok, kind)
    return d


@pytest.mark.parametrize("kind", ["q4_0", "q4_k_m"])
def test_gguf_int4_layers_hold_the_files_values(gguf_files, kind):
    """Q4_0 / Q4_K Linears become Int4OffsetLinear with exactly the float path's weights; other
    types stay float; logits equal the dequantized model's within bf16 rounding."""
    from lmkit.hub.gguf_import import read_gguf

    path = gguf_files / f"{kind}.gguf"
    ref = load_pretrained(path)
    q = load_pretrained(path, quantized=True)
    types = {t.name: t.type.name for t in read_gguf(path).tensors.values()}
    ref_mods = dict(ref.named_modules())
    n_int4 = 0
    for name, mod in q.named_modules():
        if isinstance(mod, Int4OffsetLinear):
            n_int4 += 1
            assert torch.equal(mod.dequantize_weight(), ref_mods[name].weight)
            assert mod.weight_bytes() * 8 / (mod.in_features * mod.out_features) == 4 + 64 / 32  # codes + fp32 pair
    want = sum(t in ("Q4_0", "Q4_K") for n, t in types.items() if n.startswith("blk.") and n.endswith(".weight")
               and "norm" not in n)
    assert n_int4 == want > 0
    if kind == "q4_k_m":
        assert type(q.layers[0].self_attn.v_proj) is torch.nn.Linear  # Q6_K stays float
    ids = torch.randint(0, 280, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(ids).logits, q(ids).logits
    assert ((a - b).norm() / a.norm()).item() < 1e-2  # bf16 activations and scales in the kernel
    with torch.no_grad():  # the fused decode step runs the mixed Q4_K / float layer too
        from lmkit.infer import GenerationConfig, generate

        cfg = GenerationConfig(max_new_tokens=4)
        assert len(generate(q, [ids[0].tolist()], cfg).sequences[0]) == 4


def test_lmkit_generate_runs_a_gguf_file(gguf_files):
    """`lmkit generate x.gguf --keep-quantized` (tokenizer from the file) in a subprocess: the greedy
    tokens of the quantized model loaded in process."""
    from lmkit.hub.gguf_tokenizer import load_gguf_tokenizer
    from lmkit.infer import GenerationConfig, generate

    path = gguf_files / "q4_0.gguf"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "src"))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "lmkit", "generate", str(path), "-p", "the quick",
                          "--max-new-tokens", "4", "--json", "--keep-quantized"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    tok = load_gguf_tokenizer(path)
    want = generate(load_pretrained(path, quantized=True), [tok.encode("the quick")],
                    GenerationConfig(max_new_tokens=4)).sequences[0]
    assert got["tokens"] == want and got["finish_reason"] == "length"


def test_keep_quantized_needs_a_gguf(tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli

    (tmp_path / "config.json").write_text("{}")
    r = CliRunner().invoke(cli, ["generate", str(tmp_path), "-p", "x", "--keep-quantized"])
    assert r.exit_code != 0 and "--keep-quantized applies to a .gguf" in r.output
