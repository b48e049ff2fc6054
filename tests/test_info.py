"""`lmkit info` and `lmkit convert` on real checkpoint directories."""

import subprocess
import sys

import torch

from lmkit.hub import load_pretrained, save_pretrained
from lmkit.models.build import build_model
from lmkit.models.presets import preset
from lmkit.models.summary import count_by_component, weight_memory


def run(*args):
    return subprocess.run([sys.executable, "-m", "lmkit", *args], capture_output=True, text=True, timeout=120)


def test_info_counts_and_memory(tmp_path):
    model = build_model(preset("llama-tiny", vocab_size=300, n_layers=2))
    save_pretrained(model, tmp_path / "m")
    out = run("info", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert f"({total:,})" in out.stdout
    counts = count_by_component(model)
    assert set(counts) >= {"embeddings", "attention", "ffn", "norms"} and sum(counts.values()) == total
    mem = weight_memory(model)
    assert mem.bytes_at("fp32") == 4 * total
    assert mem.bytes_at("nf4") < mem.bytes_at("int8") < mem.bytes_at("bf16") < mem.bytes_at("fp32")
    for prec in ("fp32", "bf16", "int8", "nf4"):
        assert prec in out.stdout


def test_convert_casts_and_shards(tmp_path):
    model = build_model(preset("gpt2-tiny", vocab_size=300, n_layers=2))
    save_pretrained(model, tmp_path / "src")
    out = run("convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", "bf16", "--max-shard-size", "200KB")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "dst" / "model.safetensors.index.json").exists()
    back = load_pretrained(tmp_path / "dst")
    assert next(back.parameters()).dtype == torch.bfloat16
    x = torch.randint(0, 300, (1, 8))
    torch.testing.assert_close(back.float()(x).logits, model(x).logits, atol=0.05, rtol=0.05)
    bad = run("convert", str(tmp_path / "src"), str(tmp_path / "x"), "--max-shard-size", "lots")
    assert bad.returncode != 0 and "cannot read size" in bad.stderr


def test_info_on_a_non_checkpoint(tmp_path):
    out = run("info", str(tmp_path))
    assert out.returncode != 0 and "config.json" in out.stderr


def test_info_reports_vocabulary_padding(tmp_path):
    """A checkpoint whose embedding has more rows than its tokenizer (as Qwen's) says so."""
    from lmkit.tokenizers.bpe import BPETokenizer

    tok = BPETokenizer.train(["the quick brown fox jumps over the lazy dog " * 20], vocab_size=300,
                             special_tokens=["<|endoftext|>"])
    for rows, expect in ((len(tok) + 64, f"{len(tok):,} ids for {len(tok) + 64:,} embedding rows: 64 padding rows"),
                         (len(tok), "(no padding)")):
        d = tmp_path / str(rows)
        save_pretrained(build_model(preset("llama-tiny", vocab_size=rows, n_layers=2)), d)
        tok.save_hf_json(d / "tokenizer.json")
        out = run("info", str(d))
        assert out.returncode == 0, out.stderr
        assert expect in out.stdout
    save_pretrained(build_model(preset("llama-tiny", vocab_size=300, n_layers=2)), tmp_path / "bare")
    assert "tokenizer" not in run("info", str(tmp_path / "bare")).stdout  # no tokenizer file: no line
