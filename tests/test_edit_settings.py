"""The benchmark's tuned ROME/MEMIT settings (lmkit.edit.edit_settings) and `lmkit edit --method memit` using them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edit_tiny import tiny_model, world_and_tokenizer
from lmkit.edit.edit_settings import BENCH_SETTINGS, EditSettings
from lmkit.edit.facts import paragraphs_of
from lmkit.errors import ConfigError


def test_settings_build_the_benchmarks_configs():
    memit = BENCH_SETTINGS.memit_config([0, 1], 100)
    assert memit.layers == [0, 1] and memit.cov_weight == 400.0  # λ = 4 × edits
    assert (memit.target.clamp_norm, memit.target.weight_decay, memit.target.stop_nll) == (6.0, 0.5, 0.02)
    rome = BENCH_SETTINGS.rome_config(2)
    assert rome.layer == 2 and (rome.target.clamp_norm, rome.target.stop_nll) == (2.0, 0.02)
    assert BENCH_SETTINGS.keep_max_cosine == 0.5
    assert EditSettings(cov_weight_per_edit=1.0).memit_config([0], 7).cov_weight == 7.0
    assert memit.split_keys and not EditSettings(memit_keys="mean").memit_config([0], 1).split_keys
    assert memit.reach_nll == 0.693 and EditSettings(memit_reach_nll=None).memit_config([0], 1).reach_nll is None
    with pytest.raises(ConfigError, match="memit_keys"):
        EditSettings(memit_keys="each")


def test_paragraphs_of_runs_statements_together():
    out = paragraphs_of(["A b.", "C d.", "E f."], 4, per_paragraph=2, seed=1)
    assert len(out) == 4 and all(len(p.split(". ")) == 2 for p in out)
    assert paragraphs_of(["A b."], 2) == ["A b.", "A b."] and paragraphs_of([], 3) == []


def test_cli_memit_with_the_tuned_settings(tmp_path):
    from lmkit.cli import cli
    from lmkit.edit.facts import write_records
    from lmkit.hub import save_pretrained

    _, records, tok = world_and_tokenizer()
    save_pretrained(tiny_model(), tmp_path / "model", tokenizer=tok)
    write_records(records, tmp_path / "facts.jsonl")
    args = ["edit", str(tmp_path / "model"), "--method", "memit", "--facts", str(tmp_path / "facts.jsonl"),
            "--n-edits", "2", "--generic-paragraphs", "10", "--clamp", "3", "--stop-nll", "0.3",
            "--cov-weight-per-edit", "10"]
    for keys in ("split", "mean"):
        res = CliRunner().invoke(cli, args + ["--memit-keys", keys])
        assert res.exit_code == 0, res.output
        report = json.loads(next(l for l in res.output.splitlines() if l.startswith("{")))
        assert report["method"] == "memit" and report["edits"] == 2 and "MEMIT layers" in res.output
    res = CliRunner().invoke(cli, args + ["--memit-reach-nll", "inf"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, args + ["--memit-keys", "each"])
    assert res.exit_code == 2 and "--memit-keys" in res.output
    res = CliRunner().invoke(cli, args + ["--memit-reach-nll", "-1"])
    assert res.exit_code == 2 and "--memit-reach-nll" in res.output


def test_cli_rome_sequence_takes_the_keep_options(tmp_path):
    from lmkit.cli import cli
    from lmkit.edit.facts import write_records
    from lmkit.hub import save_pretrained

    _, records, tok = world_and_tokenizer()
    save_pretrained(tiny_model(), tmp_path / "model", tokenizer=tok)
    write_records(records, tmp_path / "facts.jsonl")
    args = ["edit", str(tmp_path / "model"), "--method", "rome", "--facts", str(tmp_path / "facts.jsonl"),
            "--n-edits", "2", "--layer", "0", "--generic-paragraphs", "10", "--stop-nll", "0.3"]
    res = CliRunner().invoke(cli, args + ["--keep-weight", "10", "--keep-max-cosine", "0.5"])
    assert res.exit_code == 0, res.output
    report = json.loads(next(l for l in res.output.splitlines() if l.startswith("{")))
    assert report["method"] == "rome" and report["edits"] == 2
    res = CliRunner().invoke(cli, args + ["--keep-max-cosine", "1.5"])
    assert res.exit_code == 2 and "--keep-max-cosine" in res.output
