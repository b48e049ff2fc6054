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
