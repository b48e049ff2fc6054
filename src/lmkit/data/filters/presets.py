"""Cleaning presets: which filters run, and at which thresholds, for a kind of corpus.

The rule definitions stay datatrove's (`gopher_quality`, `gopher_repetition`, `c4`); a preset
only chooses which rules run and where their thresholds sit. Gopher's thresholds were set on
web prose, and on prose mixed with code they misfire: the word split makes every bracket,
comma, operator and number of a code line a word, doctest blocks hold no stop words,
identifiers are long words, and API documentation repeats its signatures. On the quickstart
corpus (Python's documentation and docstrings) the `web` preset drops 71 % of the genuine
documents, `docs` about 1 %, and both drop every planted junk document (docs/data.md).

* ``web``  datatrove's defaults, for web prose; keeps English and Chinese. The default of
  ``lmkit data clean``.
* ``docs`` prose mixed with code (software documentation, docstrings, tutorials with
  examples); keeps English, Chinese and code. Changed from ``web``, each rule still on:

  ====================================  =================  ==================
  rule                                  web (datatrove)    docs
  ====================================  =================  ==================
  least non-symbol words                50                 20 (a docstring with an example)
  largest mean word length              10                 15 (identifiers: ``get_type_hints``)
  least share of words with a letter    0.8                0.25 (brackets, operators, numbers are words)
  least distinct stop words             2                  1 (a doctest block with one line of prose)
  duplicate lines / paragraphs          0.3 of them        0.5
  duplicate line / paragraph chars      0.2                0.4
  top 2-, 3-, 4-gram chars              0.20, 0.18, 0.16   0.40, 0.36, 0.32
  duplicated 5- ... 10-gram chars       0.15 ... 0.10      0.50 ... 0.40 (repeated signatures)
  ====================================  =================  ==================

  Keyword spam (70-90 % repeated n-grams, no stop words), symbol garbage (no letters),
  boilerplate pages and link lists still fail these looser rules by a wide margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lmkit.data.filters.base import DocumentFilter, FilterError

DEFAULT_FILTERS = ("unicode", "boilerplate", "language", "gopher_quality", "gopher_repetition", "pii")


@dataclass(frozen=True)
class CleanPreset:
    """A named choice of filters (in order) and of their keyword options."""

    name: str
    filters: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, CleanPreset] = {
    "web": CleanPreset("web", DEFAULT_FILTERS, {"language": {"keep": ["en", "zh"]}},
                       "web prose: datatrove's Gopher thresholds"),
    "docs": CleanPreset(
        "docs", DEFAULT_FILTERS,
        {"language": {"keep": ["en", "zh", "code"]},
         "gopher_quality": {"min_doc_words": 20, "max_avg_word_length": 15, "max_non_alpha_words_ratio": 0.25,
                            "min_stop_words": 1},
         "gopher_repetition": {"dup_line_frac": 0.5, "dup_para_frac": 0.5, "dup_line_char_frac": 0.4,
                               "dup_para_char_frac": 0.4, "top_n_grams": ((2, 0.40), (3, 0.36), (4, 0.32)),
                               "dup_n_grams": ((5, 0.50), (6, 0.48), (7, 0.46), (8, 0.44), (9, 0.42), (10, 0.40))}},
        "prose mixed with code: Gopher's rules loosened where code trips them"),
}


def get_preset(name: str) -> CleanPreset:
    """The preset called `name` (``web`` or ``docs``)."""
    if name not in PRESETS:
        raise FilterError(f"unknown cleaning preset {name!r}: choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_filters(name: str, filters: Sequence[str] | None = None,
                   overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[DocumentFilter]:
    """The filters of preset `name` (or the named `filters` with the preset's options), each
    built with the preset's options updated by `overrides` ({filter: {option: value}})."""
    from lmkit.data.filters import build_filters

    preset = get_preset(name)
    options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in preset.options.items()}
    for key, values in (overrides or {}).items():
        options.setdefault(key, {}).update(values)
    return build_filters(list(filters or preset.filters), options)


__all__ = ["DEFAULT_FILTERS", "PRESETS", "CleanPreset", "get_preset", "preset_filters"]
