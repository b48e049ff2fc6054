"""GGUF export: read back with gguf's reader (names, shapes, metadata, dequantized tensors vs
the source after un-permuting Q/K), loaded by transformers' GGUF loader (an independent
un-permute and tokenizer) with identical logits, the CLI, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lmkit.errors import CheckpointError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset
from lmkit.tokenizers.bpe import BPETokenizer

gguf = pytest.importorskip("gguf")

from lmkit.hub.gguf import export_gguf, permute, unpermute  # noqa: E402

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello there", "lmkit exports gguf files"] * 10


@pytest.fixture(scope="module")
def tok():
    t = BPETokenizer.train(TEXT, vocab_size=300)
    t.add_tokens(["<|endoftext|>"], special=True)
    return t


def tiny(vocab=320, tie=False):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=64,
                      model_type="llama", tie_embeddings=tie, rope_theta=5000.0, norm_eps=1e-6)
    m = DecoderLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms so their export is checked too
        for n, p in m.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("ftype", ["f32", "f16", "q8_0"])
def test_read_back(tmp_path, tok, ftype):
    m = tiny()
    path = tmp_path / "m.gguf"
    export_gguf(m, path, tok, ftype)
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in r.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2)
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    }
    assert set(tensors) == expected
    assert list(tensors["token_embd.weight"].shape) == [64, 320]  # GGUF lists ne0 (the row length) first
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [96, 64]
    assert list(tensors["output_norm.weight"].shape) == [64]
    meta = {
        "general.architecture": "llama", "llama.context_length": 64, "llama.embedding_length": 64,
        "llama.block_count": 2, "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 5000.0, "llama.rope.dimension_count": 16,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
    }
    for k, v in meta.items():
        assert field(r, k) == v, k
    assert abs(field(r, "llama.attention.layer_norm_rms_epsilon") - 1e-6) < 1e-12
    assert field(r, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[ftype]
    toks = field(r, "tokenizer.ggml.tokens")
    assert len(toks) == 320 and toks[: tok.vocab_size] == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    types = field(r, "tokenizer.ggml.token_type")
    eot = tok.token_to_id("<|endoftext|>")
    assert types[eot] == 3 and types[0] == 1 and types[319] == 5
    assert field(r, "tokenizer.ggml.eos_token_id") == eot
    merges = field(r, "tokenizer.ggml.merges")
    assert len(merges) == len(tok.merge_ids()) and all(len(x.split(" ")) == 2 for x in merges)

    cfg = m.config
    sd = m.state_dict()
    for name, src in [("token_embd.weight", sd["embed_tokens.weight"]), ("output.weight", sd["lm_head.weight"]),
                      ("output_norm.weight", sd["norm.weight"]),
                      ("blk.1.attn_q.weight", sd["layers.1.self_attn.q_proj.weight"]),
                      ("blk.0.attn_k.weight", sd["layers.0.self_attn.k_proj.weight"]),
                      ("blk.0.ffn_down.weight", sd["layers.0.mlp.down_proj.weight"]),
                      ("blk.1.attn_norm.weight", sd["layers.1.attn_norm.weight"])]:
        t = tensors[name]
        deq = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        deq = deq.reshape(src.shape)
        if "attn_q" in name:
            deq = unpermute(deq, cfg.n_heads, cfg.n_heads)
        elif "attn_k" in name:
            deq = unpermute(deq, cfg.n_heads, cfg.n_kv_heads)
        if src.dim() == 1 or ftype == "f32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            torch.testing.assert_close(deq, src, atol=0, rtol=0)
        elif ftype == "f16":
            torch.testing.assert_close(deq, src.half().float(), atol=0, rtol=0)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            # per 32-block: |x - deq| <= d/2 (+ the fp16 rounding of d times 127)
            blocks = src.reshape(-1, 32)
            d = blocks.abs().amax(1, keepdim=True) / 127
            assert torch.all((deq.reshape(-1, 32) - blocks).abs() <= d * 0.5 + d * 127 * 2**-11 + 1e-8)


def test_permute_inverse_and_gqa():
    w = torch.randn(32, 8)
    assert torch.equal(unpermute(permute(w, 4), 4), w)
    assert torch.equal(unpermute(permute(w, 8, 2), 8, 2), w)
    assert not torch.equal(permute(w, 4), w)


@pytest.mark.parametrize("ftype,tol", [("f32", 1e-5), ("q8_0", 0.05)])
def test_transformers_gguf_loader_gives_same_logits(tmp_path, tok, ftype, tol):
    """transformers reads GGUF with its own tensor map and its own reverse Q/K permutation."""
    pytest.importorskip("transformers")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    m = tiny(tie=True)
    export_gguf(m, tmp_path / "m.gguf", tok, ftype)
    cfg = AutoConfig.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert cfg.num_key_value_heads == 2 and cfg.rope_parameters["rope_theta"] == 5000.0
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    sd = load_gguf_checkpoint(str(tmp_path / "m.gguf"), return_tensors=True, model_to_load=hf)["tensors"]
    missing, unexpected = hf.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in sd.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert (hf(ids).logits - m(ids).logits).abs().max() < tol
    hft = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    for text in ["the lazy fox says hello", "gguf: 123 files!"]:
        assert hft(text, add_special_tokens=False)["input_ids"] == tok.encode(text)


def test_bad_input(tmp_path, tok):
    gpt2 = DecoderLM(preset("gpt2-tiny", vocab_size=300, d_model=64, n_layers=1, n_heads=4, d_ff=96))
    with pytest.raises(CheckpointError, match="cannot export"):
        export_gguf(gpt2, tmp_path / "g.gguf", tok)
    assert not (tmp_path / "g.gguf").exists()
    from lmkit.models.config import ModelConfig

    for change, match in (({"partial_rotary_factor": 0.5}, "partial rotary"), ({"parallel_residual": True}, "parallel"),
                          ({"rope_scaling": "yarn", "rope_scaling_factor": 2.0}, "yarn")):
        with pytest.raises(CheckpointError, match=match):
            export_gguf(DecoderLM(ModelConfig(**{**tiny().config.to_dict(), **change})), tmp_path / "r.gguf", tok)
    from lmkit.quant.quantize_model import quantize_model

    with pytest.raises(CheckpointError, match="floating-point model"):
        export_gguf(quantize_model(tiny(), "int8"), tmp_path / "q.gguf", tok)
    with pytest.raises(ValueError, match="q4_k"):
        export_gguf(tiny(), tmp_path / "x.gguf", tok, "q4_k")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_export_and_quantize(tmp_path, tok):
    from lmkit.cli import cli
    from lmkit.hub import save_pretrained
    from lmkit.quant.checkpoint import load_quantized

    m = tiny(vocab=tok.vocab_size, tie=True)
    save_pretrained(m, tmp_path / "model")
    tok.save_hf_json(tmp_path / "model" / "tokenizer.json")
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "gguf", str(tmp_path / "model"), "-o", str(tmp_path / "m.gguf"),
                              "--type", "q8_0"])
    assert res.exit_code == 0, res.output
    assert "(5 F32, 15 Q8_0)" in res.output  # 7 matrices a layer + token_embd (the tied output is not stored)
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert "output.weight" not in {t.name for t in r.tensors}  # tied: llama.cpp reuses token_embd
    assert field(r, "general.name") == "model"

    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(TEXT) * 4, encoding="utf-8")
    ids = torch.tensor([tok.encode("the quick brown fox")])
    for method, extra in [("nf4", []), ("gptq", ["--calib", str(calib), "--calib-seq-len", "16",
                                                  "--group-size", "32"])]:
        out = tmp_path / f"q-{method}"
        res = runner.invoke(cli, ["quantize", str(tmp_path / "model"), "-o", str(out), "--method", method, *extra])
        assert res.exit_code == 0, res.output
        assert "smaller" in res.output and (out / "tokenizer.json").exists()
        q = load_quantized(out)
        assert (q(ids).logits - m(ids).logits).norm() / m(ids).logits.norm() < 0.2
    res = runner.invoke(cli, ["quantize", str(tmp_path / "model"), "-o", str(tmp_path / "z"), "--method", "gptq"])
    assert res.exit_code != 0 and "--calib" in res.output
    res = runner.invoke(cli, ["quantize", str(tmp_path / "model"), "-o", str(tmp_path / "z"), "--method", "nf4",
                              "--block-size", "100"])
    assert res.exit_code != 0 and "does not divide" in res.output


def test_qkv_bias_is_permuted_like_the_weights(tmp_path, tok):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=320, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=64,
                      model_type="qwen2", qkv_bias=True)
    m = DecoderLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    export_gguf(m, tmp_path / "q.gguf", tok, "f32")
    r = gguf.GGUFReader(str(tmp_path / "q.gguf"))
    t = {x.name: torch.from_numpy(np.array(x.data)) for x in r.tensors}
    sd = m.state_dict()
    torch.testing.assert_close(unpermute(t["blk.0.attn_q.bias"], 4, 4), sd["layers.0.self_attn.q_proj.bias"])
    torch.testing.assert_close(unpermute(t["blk.0.attn_k.bias"], 4, 2), sd["layers.0.self_attn.k_proj.bias"])
    torch.testing.assert_close(t["blk.0.attn_v.bias"], sd["layers.0.self_attn.v_proj.bias"])
    from lmkit.hub import load_pretrained  # and back: q/k/v biases without an o bias read as qwen2

    back = load_pretrained(tmp_path / "q.gguf")
    assert back.config.model_type == "qwen2" and back.config.qkv_bias and not back.config.o_bias
    ids = torch.randint(0, 300, (1, 7))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, m(ids).logits)
    # the permutation is what turns rotate-half RoPE into llama.cpp's adjacent-pair RoPE:
    # q·k scores computed both ways agree
    from lmkit.models.positional import RotaryEmbedding, apply_rope

    rope = RotaryEmbedding(cfg)
    pos = torch.arange(6)[None]
    cos, sin = rope(pos, torch.float32)
    x = torch.randn(1, 6, 64)
    q = (x @ sd["layers.0.self_attn.q_proj.weight"].T).view(1, 6, 4, 16).transpose(1, 2)
    qp = (x @ permute(sd["layers.0.self_attn.q_proj.weight"], 4, 4).T).view(1, 6, 4, 16).transpose(1, 2)
    ours = apply_rope(q, cos, sin)
    theta = pos[0, :, None].float() * rope.inv_freq[None, :]  # [6, 8]
    c, s = torch.cos(theta)[None, None], torch.sin(theta)[None, None]
    a, b = qp[..., 0::2], qp[..., 1::2]  # llama.cpp "normal" rope: rotate adjacent pairs
    pairs = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    # the head dims are only reordered, so every within-head q·q' score is the same
    torch.testing.assert_close(pairs @ pairs.transpose(-1, -2), ours @ ours.transpose(-1, -2), atol=1e-4, rtol=1e-4)


# ---- Q4_0 / Q4_K_M export and GGUF import ------------------------------------------------------
# K-quants need rows of whole 256-value super-blocks: d_model 256, d_ff 512
MIX = {"attn_q": "Q4_K", "attn_k": "Q6_K", "attn_v": "Q5_0", "attn_output": "Q4_0", "ffn_gate": "Q8_0",
       "ffn_up": "BF16", "ffn_down": "F16", "token_embd": "Q6_K", "output": "F32"}
KINDS = ["f32", "f16", "q8_0", "q4_0", "q4_k_m", "mixed"]


def kmodel():
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=320, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=512, max_seq_len=64,
                      model_type="llama", rope_theta=5000.0, norm_eps=1e-6)
    m = DecoderLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def mixed_type(name, shape, ftype, n_layers, tied):
    """Every tensor type lmkit reads, in one file."""
    return "F32" if len(shape) == 1 else MIX[name.split(".")[-2]]


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    import lmkit.hub.gguf as gguf_export

    m = kmodel()
    d = tmp_path_factory.mktemp("gguf")
    info = {}
    for kind in KINDS:
        with pytest.MonkeyPatch.context() as mp:
            if kind == "mixed":
                mp.setattr(gguf_export, "tensor_type", mixed_type)
            info[kind] = export_gguf(m, d / f"{kind}.gguf", tok, "f32" if kind == "mixed" else kind)
    return m, d, info


def expected_model(m, kind):
    """`m` with every weight replaced by what the file of type `kind` holds (quantize -> dequantize)."""
    from lmkit.hub import gguf_quants
    from lmkit.hub.gguf import gguf_name, tensor_type

    out = DecoderLM(m.config).eval()
    out.load_state_dict(m.state_dict())
    with torch.no_grad():
        for name, p in out.named_parameters():
            g = gguf_name(name)
            t = (mixed_type if kind == "mixed" else tensor_type)(g, tuple(p.shape), kind, m.config.n_layers, False)
            raw = gguf_quants.quantize(p.numpy(), t)
            p.copy_(torch.from_numpy(gguf_quants.dequantize(raw, t)).reshape(p.shape))
    return out


def test_q4_mixes_follow_llama_quantize():
    from lmkit.hub.gguf import tensor_type

    def tt(name, shape=(256, 256), ftype="q4_k_m", n=32, tied=False):
        return tensor_type(name, shape, ftype, n, tied)

    more = [i for i in range(32) if tt(f"blk.{i}.ffn_down.weight") == "Q6_K"]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]  # llama.cpp's use_more_bits
    assert [i for i in range(32) if tt(f"blk.{i}.attn_v.weight") == "Q6_K"] == more
    assert {tt(f"blk.{i}.{n}.weight") for i in range(32) for n in ("attn_q", "attn_k", "attn_output", "ffn_up",
                                                                    "ffn_gate")} == {"Q4_K"}
    assert tt("output.weight") == "Q6_K" and tt("token_embd.weight") == "Q4_K"
    assert tt("token_embd.weight", tied=True) == "Q6_K"
    assert tt("blk.0.attn_q.weight", ftype="q4_0") == "Q4_0" and tt("output.weight", ftype="q4_0") == "Q6_K"
    assert tt("output.weight", ftype="q8_0") == "Q8_0" and tt("blk.0.attn_norm.weight", (256,)) == "F32"
    # rows that do not split into super-blocks fall back as llama.cpp does
    assert tt("blk.5.attn_q.weight", (64, 96)) == "Q5_0" and tt("blk.0.ffn_down.weight", (64, 96)) == "Q8_0"
    assert tt("blk.5.attn_q.weight", (64, 40)) == "F16" and tt("output.weight", (320, 64), "q4_0") == "Q8_0"


@pytest.mark.parametrize("kind", KINDS)
def test_import_round_trip(exported, tok, kind):
    """export -> load_pretrained("x.gguf"): exactly the weights the file holds (F32: the model itself),
    so the logits equal those of the model with its weights quantized and dequantized."""
    from lmkit.hub import load_pretrained
    from lmkit.hub.gguf_tokenizer import load_gguf_tokenizer

    m, d, info = exported
    r = gguf.GGUFReader(str(d / f"{kind}.gguf"))
    want = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "mixed": 0}[kind]
    assert field(r, "general.file_type") == want
    loaded = load_pretrained(d / f"{kind}.gguf")
    assert loaded.config.n_kv_heads == 2 and loaded.config.rope_theta == 5000.0 and not loaded.config.tie_embeddings
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, ref = loaded(ids).logits, m(ids).logits
        assert torch.equal(got, expected_model(m, kind)(ids).logits)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel <= {"f32": 0, "f16": 2e-3, "q8_0": 0.02, "q4_0": 0.3, "q4_k_m": 0.2, "mixed": 0.2}[kind], rel
    if kind == "f32":
        t2 = load_gguf_tokenizer(d / "f32.gguf")
        for text in ["the lazy fox says hello", "gguf: 123 files!<|endoftext|>"]:
            assert t2.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
        assert t2.special_tokens == tok.special_tokens


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_reads_the_same_logits(exported, kind):
    """Every tensor type lmkit reads (the mixed file has BF16 / Q5_0 / Q4_K / Q6_K / ...) gives the
    logits of transformers' own GGUF loader (its own dequantizer and Q/K un-permutation)."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from lmkit.hub import load_pretrained

    _, d, _ = exported
    hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=f"{kind}.gguf").eval()
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(d / f"{kind}.gguf")(ids).logits, hf(ids).logits,
                                   atol=2e-5, rtol=1e-4)


def test_quantized_linear_hook(exported):
    """The hook sees each Linear stored quantized, with blocks whose rows are in lmkit's order."""
    from lmkit.hub.gguf_import import load_gguf

    _, d, _ = exported
    seen = {}

    def hook(name, linear, t):
        seen[name] = t.type.name
        assert torch.equal(t.dequantize(), linear.weight.detach())
        codes, scales, offsets, group = t.integer_groups()
        rebuilt = codes.float().reshape(*codes.shape[:1], -1, group) * scales[..., None] + offsets[..., None]
        torch.testing.assert_close(rebuilt.reshape(codes.shape), linear.weight.detach(), rtol=1e-6, atol=1e-7)
        return torch.nn.Identity() if name == "layers.0.mlp.up_proj" else None

    m = load_gguf(d / "q4_k_m.gguf", linear_from_gguf=hook)
    assert seen["layers.0.self_attn.q_proj"] == "Q4_K" and seen["layers.1.mlp.down_proj"] == "Q6_K"
    assert seen["lm_head"] == "Q6_K" and len(seen) == 15  # 7 per layer + the output matrix
    assert isinstance(m.layers[0].mlp.up_proj, torch.nn.Identity)


def test_import_errors(tmp_path, exported):
    from lmkit.hub import load_pretrained
    from lmkit.hub.gguf_tokenizer import tokenizer_from_gguf_metadata

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        load_pretrained(bad)
    good = (exported[1] / "f16.gguf").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        load_pretrained(bad)
    from lmkit.errors import ConfigError

    def with_value(key: bytes, value: int) -> bytes:  # a uint32 metadata value: key, type tag, value
        at = good.index(key) + len(key) + 4
        return good[:at] + value.to_bytes(4, "little") + good[at + 4:]

    bad.write_bytes(with_value(b"llama.block_count", 10**6))  # would be a huge model: refused first
    with pytest.raises(ConfigError, match="block_count=1000000"):
        load_pretrained(bad)
    bad.write_bytes(with_value(b"llama.feed_forward_length", 640))
    with pytest.raises(CheckpointError, match="ffn_gate|mlp.gate_proj.weight: file"):
        load_pretrained(bad)
    from lmkit.errors import TokenizerError

    with pytest.raises(TokenizerError, match="'llama' is not supported"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(TokenizerError, match="pre-tokenizer 'qwen2'"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"})


def test_reads_qwen2_architecture_files(tmp_path, tok, monkeypatch):
    """A `qwen2` GGUF (what llama.cpp's converter writes for Qwen2: qwen2.* keys, q/k/v biases, Q/K rows
    not permuted since its graph rotates halves) loads with the logits of transformers' loader."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    import lmkit.hub.gguf as gguf_export
    from lmkit.hub import load_pretrained

    class Qwen2Writer(gguf.GGUFWriter):
        def __init__(self, path, arch, *args, **kwargs):
            super().__init__(path, "qwen2", *args, **kwargs)

    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=64,
                      model_type="qwen2", qkv_bias=True, rope_theta=10000.0)
    m = DecoderLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    monkeypatch.setattr(gguf, "GGUFWriter", Qwen2Writer)
    monkeypatch.setattr(gguf_export, "permute", lambda w, n_head, n_head_kv=None: w)
    export_gguf(m, tmp_path / "q.gguf", tok, "f32")
    monkeypatch.undo()
    assert field(gguf.GGUFReader(str(tmp_path / "q.gguf")), "general.architecture") == "qwen2"
    back = load_pretrained(tmp_path / "q.gguf")
    assert back.config.model_type == "qwen2"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf").eval()
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, m(ids).logits)
        torch.testing.assert_close(hf(ids).logits, m(ids).logits, atol=2e-5, rtol=1e-4)
