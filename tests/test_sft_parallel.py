"""`lmkit sft --parallel`: the same parallel: section as a pretrain config, on the command line.
`torchrun --nproc-per-node 2 -m lmkit sft ... --parallel tp=2` trains with tensor parallelism and
gives the same losses and weights as one process (slow: two torchrun workers); the option's
spellings (KEY=VALUE list, or a config file's parallel: section) are checked in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmkit.errors import ConfigError
from lmkit.train.config import ParallelConfig, parse_parallel


def test_parallel_option_reads_key_values_and_config_files(tmp_path):
    assert parse_parallel("tp=2") == ParallelConfig(tp=2)
    assert parse_parallel("dp=2, tp=2, fsdp=true") == ParallelConfig(dp=2, tp=2, fsdp=True)
    assert parse_parallel("pp=2,pp_schedule=gpipe") == ParallelConfig(pp=2, pp_schedule="gpipe")
    pretrain = tmp_path / "pretrain.yaml"
    pretrain.write_text("train:\n  max_steps: 10\n  parallel: {pp: 2, dp: 2}\n", encoding="utf-8")
    assert parse_parallel(str(pretrain)) == ParallelConfig(pp=2, dp=2)
    (tmp_path / "p.json").write_text(json.dumps({"parallel": {"tp": 4}}), encoding="utf-8")
    assert parse_parallel(str(tmp_path / "p.json")) == ParallelConfig(tp=4)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_parallel("tp2")
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_parallel("tensor=2")
    (tmp_path / "none.yaml").write_text("train: {lr: 1.0e-3}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no parallel"):
        parse_parallel(str(tmp_path / "none.yaml"))


def _base(d: Path) -> Path:
    from lmkit.data.sft import toy_sft_rows
    from lmkit.hub import save_pretrained
    from lmkit.peft.finetune import toy_task

    task = toy_task(seed=0, n_train=8, n_eval=4, pretrain_steps=5, d_model=32)
    assert task.base.config.vocab_size % 2 == 0  # tp=2 splits the vocabulary
    save_pretrained(task.base, d)
    task.tokenizer.save_hf_json(d / "tokenizer.json")
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in toy_sft_rows(48, 0)) + "\n", encoding="utf-8")
    (d / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in toy_sft_rows(8, 1)) + "\n", encoding="utf-8")
    return d


def _sft(base: Path, out: Path, *launcher: str, extra: tuple[str, ...] = ()) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [*launcher, "-m", "lmkit", "sft", str(base), str(base / "data.jsonl"), "-o", str(out), "--steps", "8",
           "--lr", "2e-3", "--seq-len", "64", "--batch-size", "4", "--eval-data", str(base / "eval.jsonl"),
           "--device", "cpu", *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (out / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


@pytest.mark.slow
def test_torchrun_sft_with_tp2_equals_one_process(tmp_path):
    from lmkit.hub import load_pretrained

    base = _base(tmp_path / "base")
    single = _sft(base, tmp_path / "single", sys.executable)
    tp = _sft(base, tmp_path / "tp", sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", "2", extra=("--parallel", "tp=2"))
    assert len(single) == len(tp) == 8
    assert max(abs(a - b) for a, b in zip(single, tp)) < 1e-5
    reports = [json.loads((tmp_path / d / "finetune_report.json").read_text()) for d in ("single", "tp")]
    assert abs(reports[0]["eval_loss"] - reports[1]["eval_loss"]) < 1e-5
    a, b = load_pretrained(tmp_path / "single").state_dict(), load_pretrained(tmp_path / "tp").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
