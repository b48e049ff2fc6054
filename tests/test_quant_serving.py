"""A checkpoint written by `lmkit quantize` runs where a plain one does: load_pretrained, generate, serve."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from lmkit.hub import load_pretrained, save_pretrained
from lmkit.infer import generate
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.quant.linear import Int8DynamicLinear, Int8Linear
from lmkit.serve.chat_model import LocalChatModel
from lmkit.tokenizers.bpe import BPETokenizer


def quantize_tiny_checkpoint(tmp_path, method: str):
    """A tiny Llama saved with its tokenizer, then `lmkit quantize --method METHOD` run on it: (tok, src, out)."""
    tok = BPETokenizer.train(["the cat sat on the mat and the dog sat on the log " * 20], vocab_size=300,
                             special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    cfg = ModelConfig(arch="decoder", model_type="llama", vocab_size=tok.vocab_size, d_model=32, n_layers=2,
                      n_heads=4, d_ff=64, max_seq_len=128, norm="rmsnorm", activation="silu", gated_ffn=True,
                      position="rope", tie_embeddings=False)
    torch.manual_seed(0)
    src, out = tmp_path / "fp32", tmp_path / method
    save_pretrained(DecoderLM(cfg).eval(), src)
    tok.save_hf_json(src / "tokenizer.json")
    r = subprocess.run([sys.executable, "-m", "lmkit", "quantize", str(src), "-o", str(out), "--method", method],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return tok, src, out


def test_quantized_checkpoint_loads_generates_and_chats(tmp_path):
    tok, src, out = quantize_tiny_checkpoint(tmp_path, "int8")
    assert (out / "tokenizer.json").exists() and not (out / "config.json").exists()

    model = load_pretrained(out)
    assert isinstance(model.layers[0].self_attn.q_proj, Int8Linear)
    fp32 = load_pretrained(src)
    prompt = [tok.encode("the cat sat")]
    ours = generate(model, prompt, max_new_tokens=8, eos_token_id=[])
    assert len(ours.sequences[0]) == 8
    with torch.no_grad():  # int8 weight-only stays close to fp32 on the same input
        a = model(torch.tensor(prompt)).logits
        b = fp32(torch.tensor(prompt)).logits
    assert (a - b).abs().max() < 0.05 * b.abs().max()

    r = subprocess.run([sys.executable, "-m", "lmkit", "generate", str(out), "-p", "the cat", "--max-new-tokens", "5",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["tokens"]) == 5
    reply = LocalChatModel.from_dir(out).chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.usage["completion_tokens"] <= 4


def test_cli_quantize_w8a8_then_generate(tmp_path):
    """`lmkit quantize --method w8a8` writes a checkpoint that loads into Int8DynamicLinear layers, and
    `lmkit generate` on it prints the tokens the loaded model generates in process."""
    tok, _, out = quantize_tiny_checkpoint(tmp_path, "w8a8")
    model = load_pretrained(out)
    assert type(model.layers[0].mlp.down_proj) is Int8DynamicLinear
    r = subprocess.run([sys.executable, "-m", "lmkit", "generate", str(out), "-p", "the cat", "--max-new-tokens", "6",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    want = generate(model, [tok.encode("the cat")], max_new_tokens=6, do_sample=False, eos_token_id=[]).sequences[0]
    assert json.loads(r.stdout)["tokens"] == want
