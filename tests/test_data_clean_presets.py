"""Cleaning presets (issue 19): `web` is datatrove's defaults, `docs` keeps prose mixed with
code that Gopher's web thresholds drop, and still drops the junk the bench plants."""

from __future__ import annotations

import pytest

from lmkit.data.filters import FilterError, GopherQualityFilter, GopherRepetitionFilter, get_preset, preset_filters

GOPHER = ["gopher_quality", "gopher_repetition"]

# a docstring as the standard library writes them: one line of prose, then a doctest block
DOCTEST_DOC = """Return the number of items in the queue that are ready to be processed.

>>> q = Queue(maxsize=3)
>>> q.put(1); q.put(2)
>>> q.qsize()
2
>>> [q.get() for _ in range(2)]
[1, 2]
>>> q.qsize(), q.empty(), q.full()
(0, True, False)
>>> divmod(17, 5), 17 // 5, 17 % 5
((3, 2), 3, 2)
"""

JUNK = {
    "keyword spam": " ".join(["cheap watches online"] * 40) + ".",
    "symbol garbage": "\n".join("#@$%^&*{}[]<>|~=+-_/\\0123456789"[i:] * 2 for i in range(8)),
    "lorem ipsum": ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
                    "labore et dolore magna aliqua. ") * 4,
    "link list": "\n".join(f"- http://example.com/page/{i}" for i in range(15)),
}


def verdict(filters, text: str) -> str:
    for f in filters:
        out = f.apply(text)
        if not isinstance(out, str):
            return out.reason
        text = out
    return "kept"


def test_web_is_datatroves_defaults():
    quality, repetition = preset_filters("web", GOPHER)
    assert quality.config() == GopherQualityFilter().config()
    assert repetition.config() == GopherRepetitionFilter().config()
    assert get_preset("web").options["language"]["keep"] == ["en", "zh"]


def test_docs_keeps_a_doctest_docstring_web_drops():
    assert verdict(preset_filters("web", GOPHER), DOCTEST_DOC).startswith("gopher_")
    assert verdict(preset_filters("docs", GOPHER), DOCTEST_DOC) == "kept"


@pytest.mark.parametrize("kind", sorted(JUNK))
def test_docs_still_drops_junk(kind):
    assert verdict(preset_filters("docs", GOPHER), JUNK[kind]) != "kept"


def test_overrides_and_unknown_preset():
    (quality,) = preset_filters("docs", ["gopher_quality"], {"gopher_quality": {"min_stop_words": 3}})
    assert quality.min_stop_words == 3 and quality.max_non_alpha_words_ratio == 0.25
    with pytest.raises(FilterError, match="unknown cleaning preset"):
        get_preset("forum")


def test_cli_preset(tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli as main

    raw = tmp_path / "raw.txt"
    raw.write_text(DOCTEST_DOC.replace("\n\n", "\n") + "\n" + JUNK["keyword spam"] + "\n")
    runner = CliRunner()
    for preset, kept in (("web", 0), ("docs", 1)):
        r = runner.invoke(main, ["data", "clean", str(raw), "-o", str(tmp_path / preset), "--preset", preset,
                                 "--filters", "unicode,gopher_quality,gopher_repetition", "--quiet"])
        assert r.exit_code == 0, r.output
        assert f"2 documents in, {kept} kept" in r.output
