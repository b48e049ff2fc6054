"""`lmkit prune` and `lmkit distill` end to end through the real command line: a saved model
directory and token shards in, a Hugging Face-format directory out (read back with
transformers as the oracle that it is a valid checkpoint), and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lmkit.compress import find_targets, is_nm_sparse, sparsity_report
from lmkit.hub.pretrained import load_pretrained, save_pretrained
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset
from lmkit.tokenizers import BPETokenizer


def lmkit(*args, ok: bool = True):
    """Run the real `lmkit` click group in-process (a subprocess costs seconds of imports)."""
    from click.testing import CliRunner

    from lmkit.cli import cli

    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, (r.output, r.exception)
    return r


def test_prune_through_the_installed_entry_point(setup, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lmkit", "prune", str(setup / "model"), "-o", str(tmp_path / "p"),
                        "--method", "2:4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert is_nm_sparse(load_pretrained(tmp_path / "p").layers[0].mlp.down_proj.weight)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, corpus_dir):
    from lmkit.data.shards import ShardConfig, prepare_shards

    d = tmp_path_factory.mktemp("cli")
    (d / "c.txt").write_text((corpus_dir / "en.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    tok = BPETokenizer.train([d / "c.txt"], vocab_size=300, special_tokens=["<|endoftext|>"])
    prepare_shards([d / "c.txt"], tok, d / "shards", ShardConfig(split_by="paragraph", val_fraction=0.1),
                   progress=False)
    torch.manual_seed(0)
    m = DecoderLM(preset("llama-tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                         n_kv_heads=2, d_ff=64, max_seq_len=128))
    save_pretrained(m, d / "model")
    tok.save_hf_json(d / "model" / "tokenizer.json")
    return d


@pytest.mark.parametrize("method,sparsity", [("magnitude", 0.6), ("global", 0.5), ("2:4", 0.5)])
def test_prune_writes_a_sparse_checkpoint_transformers_can_load(setup, tmp_path, method, sparsity):
    out = tmp_path / "pruned"
    r = lmkit("prune", setup / "model", "-o", out, "--sparsity", sparsity, "--method", method)
    assert "whole model" in r.stdout and (out / "tokenizer.json").is_file()
    m = load_pretrained(out)
    assert sparsity_report(m)["sparsity"] == pytest.approx(sparsity, abs=2e-3)
    if method == "2:4":
        assert all(is_nm_sparse(l.weight) for l in find_targets(m).values())
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    q = hf.model.layers[0].self_attn.q_proj.weight
    assert float((q == 0).float().mean()) == pytest.approx(sparsity, abs=0.05)
    x = torch.randint(0, m.config.vocab_size, (1, 10))
    torch.testing.assert_close(hf(x).logits, m(x).logits, rtol=1e-4, atol=1e-4)


def test_prune_with_finetuning_on_shards(setup, tmp_path):
    out = tmp_path / "ft"
    r = lmkit("prune", setup / "model", "-o", out, "--sparsity", 0.5, "--finetune-steps", 3, "--n-prunes", 2,
              "--prune-every", 2, "--data", setup / "shards", "--seq-len", 32, "--batch-size", 4, "--lr", 1e-3)
    assert "held-out perplexity: dense" in r.stdout
    assert not (out / "run").exists()  # the training run lives in a temporary directory
    assert sparsity_report(load_pretrained(out))["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_distill_trains_a_smaller_student(setup, tmp_path):
    out = tmp_path / "student"
    r = lmkit("distill", setup / "model", setup / "shards", "--student-preset", "llama-tiny",
              "--student-override", "d_model=16", "--student-override", "n_layers=1", "--student-override", "d_ff=32",
              "--student-override", "n_heads=2", "--student-override", "n_kv_heads=1", "-o", out, "--steps", 3, "--seq-len", 32, "--batch-size", 4,
              "--run-dir", tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert "student held-out perplexity" in r.stdout and "deprecated" not in r.stderr
    student = load_pretrained(out)
    teacher = load_pretrained(setup / "model")
    assert student.config.vocab_size == teacher.config.vocab_size and student.config.d_model == 16
    assert (out / "tokenizer.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 1


def test_cli_errors_are_clear(setup, tmp_path):
    r = lmkit("prune", setup / "model", "-o", tmp_path / "x", "--method", "3:3", ok=False)
    assert r.exit_code == 1 and "N:M" in r.stderr and isinstance(r.exception, SystemExit)
    r = lmkit("prune", setup / "model", "-o", tmp_path / "x", "--finetune-steps", 5, ok=False)
    assert r.exit_code == 2 and "--data" in r.stderr
    r = lmkit("prune", setup / "model", "-o", tmp_path / "x", "--targets", "c_attn", ok=False)
    assert r.exit_code == 1 and "no module" in r.stderr
    r = lmkit("distill", "--teacher", setup / "model", "--student-preset", "llama-tiny", "--student-override",
              "vocab_size=100", "--data", setup / "shards", "-o", tmp_path / "s", ok=False)
    assert r.exit_code == 1 and "vocabulary mismatch" in r.stderr  # the old --teacher/--data spellings still work
    assert "--teacher TEACHER_DIR is deprecated" in r.stderr and "--data DATA is deprecated" in r.stderr
    r = lmkit("distill", setup / "model", "--student-preset", "llama-tiny", "-o", tmp_path / "s", ok=False)
    assert r.exit_code == 2 and "missing argument DATA" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "s" / "config.json").exists()


def test_prune_neurons_writes_a_smaller_model(setup, tmp_path):
    out = tmp_path / "narrow"
    r = lmkit("prune", setup / "model", "-o", out, "--sparsity", 0.5, "--method", "neurons")
    assert "FFN width 32" in r.stdout
    small = load_pretrained(out)
    assert small.config.d_ff == 32
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 32
