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

from lmkit.hub import load_pretrained
from lmkit.hub.gguf import export_gguf
from lmkit.quant.linear import Int4OffsetLinear

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 5


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    """One tiny Llama (K-quants need rows of 256) exported as Q4_0 and Q4_K_M (Q4_K + Q6_K + F32 mix)."""
    from lmkit.tokenizers.bpe import BPETokenizer

    pytest.importorskip("gguf")
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


# ---- int8 KV cache ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=512,
                      model_type="llama")
    return DecoderLM(cfg).eval()


def test_int8_kv_cache_close_to_float_and_smaller(small_model):
    from lmkit.models.kv_cache import KVCache
    from lmkit.models.quantized_kv_cache import Int8KVCache

    ids = torch.randint(0, 128, (2, 400), generator=torch.Generator().manual_seed(0))
    out = {}
    with torch.no_grad():
        for cls in (KVCache, Int8KVCache):
            cache = cls.for_model(small_model, 2, 410)
            prefill = small_model(ids, kv_cache=cache).logits
            step = small_model(ids[:, :3], kv_cache=cache, position_ids=torch.arange(400, 403)[None].expand(2, 3)).logits
            out[cls.__name__] = (torch.cat([prefill, step], 1), cache.memory_bytes(), cache)
    ref, got = out["KVCache"][0], out["Int8KVCache"][0]
    assert ((got - ref).norm() / ref.norm()).item() < 2e-2
    assert out["Int8KVCache"][1] <= 0.5 * out["KVCache"][1]  # head_dim 16: (16 + 4) / 64 = 0.31
    cache = out["Int8KVCache"][2]
    assert cache.keys[0].dtype == torch.int8 and cache.seq_len == 403
    cache.select([1, 1, 0])  # beam search reorders rows: codes and scales together
    assert cache.keys[0].shape[0] == 3 and cache.key_scales[0].shape[0] == 3


def test_generate_with_int8_kv_cache(small_model):
    from lmkit.errors import ConfigError
    from lmkit.infer import GenerationConfig, generate

    prompt = [torch.randint(0, 128, (200,), generator=torch.Generator().manual_seed(1)).tolist()]
    ref = generate(small_model, prompt, GenerationConfig(max_new_tokens=8)).sequences[0]
    int8 = generate(small_model, prompt, GenerationConfig(max_new_tokens=8, kv_cache_dtype="int8")).sequences[0]
    assert len(int8) == 8 and int8[:4] == ref[:4]
    beams = generate(small_model, prompt, GenerationConfig(max_new_tokens=4, num_beams=2, kv_cache_dtype="int8"))
    assert len(beams.sequences[0]) == 4
    from lmkit.infer.speculative import speculative_generate  # truncates rejected drafts: lengths only

    spec = speculative_generate(small_model, small_model, prompt, GenerationConfig(max_new_tokens=8, kv_cache_dtype="int8"))
    assert spec.sequences[0] == int8
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        GenerationConfig(kv_cache_dtype="int4")
    with pytest.raises(ConfigError, match="int8"):
        GenerationConfig(kv_cache_dtype="int8", compile=True)


# ---- --dtype on a quantized checkpoint -----------------------------------------------------------
def test_dtype_applies_to_the_float_parts_of_a_quantized_checkpoint(small_model, tmp_path):
    import copy

    from lmkit.quant import quantize_model
    from lmkit.quant.checkpoint import save_quantized
    from lmkit.quant.linear import Int8Linear

    q = quantize_model(copy.deepcopy(small_model), "int8")
    save_quantized(q, tmp_path / "q")
    fp32, bf16 = load_pretrained(tmp_path / "q"), load_pretrained(tmp_path / "q", dtype="bf16")
    assert fp32.embed_tokens.weight.dtype == torch.float32 and bf16.embed_tokens.weight.dtype == torch.bfloat16
    assert bf16.layers[0].attn_norm.weight.dtype == torch.bfloat16
    lin = bf16.layers[0].self_attn.q_proj
    assert isinstance(lin, Int8Linear) and lin.weight_scale.dtype == torch.float32 and lin.weight_int8.dtype == torch.int8
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = fp32(ids).logits, bf16(ids).logits
    assert b.dtype == torch.bfloat16 and ((b.float() - a).norm() / a.norm()).item() < 3e-2
