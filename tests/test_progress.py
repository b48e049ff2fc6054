"""`lmkit.progress`: a bar on a terminal, a few lines in a log file, JSON with --log-json, nothing when quiet."""

import io
import json

import pytest

from lmkit.errors import ConfigError
from lmkit.progress import Progress, resolve_mode


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_stream(monkeypatch):
    monkeypatch.delenv("LMKIT_PROGRESS", raising=False)
    assert resolve_mode(None, io.StringIO()) == "lines"
    assert resolve_mode(True, _Tty()) == "bar"
    assert resolve_mode(False, _Tty()) == "off"
    assert resolve_mode("json", _Tty()) == "json"
    monkeypatch.setenv("LMKIT_PROGRESS", "off")
    assert resolve_mode(True, _Tty()) == "off"
    assert resolve_mode("lines", _Tty()) == "lines"  # an explicit choice wins over the variable
    with pytest.raises(ConfigError, match="progress"):
        resolve_mode("loud")


def test_lines_are_sparse_in_a_log_file():
    out = io.StringIO()
    with Progress(total=10_000, desc="train", unit="step", progress="lines", stream=out, every_seconds=1e9) as bar:
        for i in range(10_000):
            bar.set_postfix(loss=1.0 / (i + 1))
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 21 and "\r" not in out.getvalue()
    assert lines[-1].startswith("train: 10000/10000 step (100%)") and "loss=" in lines[-1]


def test_unknown_total_reports_by_time_only():
    out = io.StringIO()
    bar = Progress(desc="counting", progress="lines", stream=out, every_seconds=1e9)
    for _ in range(1000):
        bar.update(5)
    bar.close()
    assert out.getvalue().splitlines() == ["counting: 5000 it in 0 s"]


def test_json_lines_and_quiet():
    out = io.StringIO()
    for _ in Progress(total=40, desc="ppo", progress="json", stream=out, every_percent=25).track(range(40)):
        pass
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["percent"] for r in records] == [25.0, 50.0, 75.0, 100.0]
    assert all(r["event"] == "progress" and r["desc"] == "ppo" for r in records)
    quiet = io.StringIO()
    for _ in Progress(total=40, progress="off", stream=quiet).track(range(40)):
        pass
    assert quiet.getvalue() == ""


def test_trainer_in_a_log_file_writes_few_lines(tmp_path, capsys):
    import torch

    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.train.config import TrainConfig
    from lmkit.train.trainer import Trainer

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16))
    data = [{"input_ids": ids, "labels": ids.clone()} for ids in (torch.randint(0, 32, (2, 8)) for _ in range(4))]
    cfg = TrainConfig(max_steps=200, lr=1e-3, out_dir=str(tmp_path), progress="lines", log_every=50)
    Trainer(model, cfg, data).train()
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if line.startswith("train:")]
    assert 1 <= len(progress) <= 21, err[-2000:]
    with pytest.raises(ConfigError, match="progress"):
        TrainConfig(progress="loud")


def test_quiet_and_log_json_flags_choose_the_progress_mode(monkeypatch):
    """--quiet / --log-json on a long command set the mode every loop inside it resolves to."""
    import os

    import click
    from click.testing import CliRunner

    from lmkit.cli_grammar import progress_flags
    from lmkit.progress import ENV_VAR, resolve_mode

    @click.command()
    @progress_flags
    def job() -> None:
        click.echo(resolve_mode(None))

    for flag, mode in (("--quiet", "off"), ("--log-json", "json")):
        monkeypatch.delenv(ENV_VAR, raising=False)
        result = CliRunner().invoke(job, [flag])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == mode
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert os.environ.get(ENV_VAR) is None
