"""lmkit.corpus: the notes ship with the package, mixing interleaves by paragraph and cuts at the
limit, and write_corpora is a cache that fills in only what is missing."""

from __future__ import annotations

import pytest

from lmkit import corpus


def test_notes_ship_with_the_package():
    files = sorted(corpus.notes_dir().glob("*.txt"))
    assert len(files) == 5
    text = corpus.chinese_text()
    assert len(text.encode("utf-8")) > 300_000 and "大模型" in text
    assert text.startswith(files[0].read_text(encoding="utf-8"))


def test_missing_notes_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus, "notes_dir", lambda: tmp_path)
    with pytest.raises(corpus.LmkitError, match="package data"):
        corpus.chinese_text()


def test_mixed_interleaves_paragraphs_round_robin_and_cuts():
    en, code, zh = "e1\n\ne2\n\ne3", "c1", "z1\n\nz2"
    assert corpus.mixed_text(en, code, zh) == "e1\n\nc1\n\nz1\n\ne2\n\nz2\n\ne3"
    assert corpus.mixed_text(en, code, zh, limit=9) == "e1\n\nc1\n\nz"


def test_write_corpora_builds_once_and_fills_gaps(monkeypatch, tmp_path):
    calls = []

    def builder(name, text):
        return lambda: calls.append(name) or text

    monkeypatch.setattr(corpus, "english_text", builder("en", "a\n\nb"))
    monkeypatch.setattr(corpus, "code_text", builder("code", "x = 1"))
    monkeypatch.setattr(corpus, "chinese_text", builder("zh", "中文"))
    out = corpus.write_corpora(tmp_path / "c")
    assert sorted(p.name for p in out.iterdir()) == sorted(corpus.CORPUS_FILES)  # no temporary files left
    assert (out / "mixed.txt").read_text(encoding="utf-8") == "a\n\nx = 1\n\n中文\n\nb"
    assert calls == ["en", "code", "zh"]
    corpus.write_corpora(out)
    assert calls == ["en", "code", "zh"]  # all cached
    (out / "mixed.txt").unlink()
    (out / "zh.txt").unlink()
    corpus.write_corpora(out)
    assert calls == ["en", "code", "zh", "zh"]  # mixed is rebuilt from the cached en and code
    assert (out / "mixed.txt").read_text(encoding="utf-8") == "a\n\nx = 1\n\n中文\n\nb"
