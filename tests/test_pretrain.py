"""`lmkit pretrain` end to end: shards -> objective -> model -> HF checkpoint; bad configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.tokenizers import BPETokenizer
from lmkit.train.pretrain import PretrainConfig, resolve_model_config, run_pretrain, unigram_baseline_ppl

SPECIALS = ["<|endoftext|>", "<pad>", "</s>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
TINY = {"d_model": 48, "n_layers": 2, "n_heads": 4, "n_kv_heads": None, "d_ff": 96}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_dir):
    from lmkit.data.shards import ShardConfig, prepare_shards

    d = tmp_path_factory.mktemp("pretrain")
    text = (corpus_dir / "en.txt").read_text(encoding="utf-8")[:300_000]
    corpus = d / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    tok = BPETokenizer.train([corpus], vocab_size=512, special_tokens=SPECIALS)
    tok.save(d / "tok.json")
    prepare_shards([corpus], tok, d / "shards", ShardConfig(split_by="paragraph", val_fraction=0.1), progress=False)
    return d


def _config(d: Path, objective: str, model: str, steps: int, run: str = "", **kw) -> PretrainConfig:
    return PretrainConfig(
        data=str(d / "shards"), tokenizer=str(d / "tok.json"), objective=objective, model=model,
        model_overrides=dict(TINY), seq_len=64, batch_size=16,
        train={"max_steps": steps, "lr": 3e-3, "warmup_steps": 10, "out_dir": str(d / f"run-{objective}{run}"),
               "progress": False, "eval_steps": 0, "log_every": 50}, **kw,
    )


@pytest.mark.parametrize("objective,model,steps", [
    ("clm", "llama-tiny", 150), ("prefix", "gpt2-tiny", 150), ("mlm", "bert-tiny", 300), ("span", "t5-tiny", 300),
])
def test_each_objective_beats_the_unigram_baseline(prepared, objective, model, steps):
    """A few hundred steps on real text: held-out perplexity below a unigram model's.

    For clm/prefix the comparison is per token of the same validation stream. MLM and span
    corruption predict masked tokens given context, which is easier than the unigram's
    context-free guess of the same tokens — beating it shows the model uses the context.
    """
    pytest.importorskip("lmkit.models.encoder") if model == "bert-tiny" else None
    pytest.importorskip("lmkit.models.encoder_decoder") if model == "t5-tiny" else None
    result = run_pretrain(_config(prepared, objective, model, steps))
    baseline = unigram_baseline_ppl(str(prepared / "shards"), 512)
    assert result["eval_ppl"] < baseline, (objective, result, baseline)
    if objective == "clm":
        from lmkit.hub import load_pretrained

        model = load_pretrained(result["export_dir"])
        assert model.config.model_type == "llama"
        assert (Path(result["export_dir"]) / "tokenizer.json").exists()


def test_resume_continues_from_checkpoint(prepared):
    run_pretrain(_config(prepared, "clm", "llama-tiny", 20, run="-resume"))
    out_dir = Path(prepared / "run-clm-resume")
    assert (out_dir / "latest").exists()
    run_pretrain(_config(prepared, "clm", "llama-tiny", 30, run="-resume"), resume=True)
    steps = [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [20, 30]  # the second run started at step 21, not from scratch


def test_bad_pretrain_configs(prepared, tmp_path):
    with pytest.raises(ConfigError, match="objective"):
        PretrainConfig(data="x", tokenizer="y", objective="electra")
    with pytest.raises(ConfigError, match="unknown keys"):
        PretrainConfig.from_dict({"data": "x", "tokenizer": "y", "batchsize": 3})
    with pytest.raises(ConfigError, match="missing required keys"):
        PretrainConfig.from_dict({"data": "x"})
    with pytest.raises(ConfigError, match="TrainConfig"):
        PretrainConfig(data="x", tokenizer="y", train={"lr": -1})
    with pytest.raises(ConfigError, match="trains a encoder model"):
        resolve_model_config("llama-tiny", "mlm", 100, 64)
    with pytest.raises(ConfigError, match="longer than the model's 32 positions"):
        resolve_model_config("gpt2-tiny", "clm", 100, 64, {"max_seq_len": 32})
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_model_config("llama-huge", "clm", 100, 64)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PretrainConfig.load(bad)


def test_pretrain_cli_with_yaml(prepared, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"data: {prepared / 'shards'}\ntokenizer: {prepared / 'tok.json'}\nobjective: clm\nmodel: llama-tiny\n"
        f"model_overrides: {json.dumps(TINY)}\nseq_len: 32\nbatch_size: 4\n"
        f"train: {{max_steps: 3, out_dir: {tmp_path / 'run'}, progress: false}}\n",
        encoding="utf-8",
    )
    out = subprocess.run([sys.executable, "-m", "lmkit", "pretrain", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "perplexity" in out.stdout and (tmp_path / "run" / "hf" / "config.json").exists()
    cfg.write_text("data: x\ntokenizer: y\nobjectiv: clm\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "lmkit", "pretrain", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "unknown keys" in out.stderr and "Traceback" not in out.stderr
