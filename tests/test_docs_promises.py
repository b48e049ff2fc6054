"""What the docs promise about optional parts holds: alignment runs say in one line when they
skip curves.png for want of matplotlib (docs/alignment.md, README's extras)."""

from __future__ import annotations

import builtins

from lmkit.align.commands import _plot


def test_alignment_curves_without_matplotlib_print_one_note(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: no_matplotlib(name))
    _plot([{"step": 1, "loss": 1.0}], ["loss"], str(tmp_path), "dpo")
    err = capsys.readouterr().err
    assert not (tmp_path / "curves.png").exists()
    assert len(err.strip().splitlines()) == 1 and "lmkit[plot]" in err and "metrics.jsonl" in err


def test_alignment_curves_with_matplotlib_are_written(tmp_path, capsys):
    import pytest

    pytest.importorskip("matplotlib")
    _plot([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], ["loss"], str(tmp_path), "dpo")
    assert (tmp_path / "curves.png").exists() and capsys.readouterr().err == ""
