"""Cleaning filters, one rule family per file; `lmkit.data.clean` runs them in order.

* `normalize`          Unicode NFC/NFKC, line ends, control and zero-width characters
* `boilerplate`        cookie banners, share buttons, navigation and legal lines
* `language`           character n-gram language identification (en / zh / code, trained here)
* `gopher_quality`     Gopher's quality rules (datatrove's defaults)
* `gopher_repetition`  Gopher's duplicate line/paragraph/n-gram rules
* `c4`                 C4's line rules
* `pii`                e-mail, phone, IP and ID-number masking
* `presets`            named filter choices and thresholds per kind of corpus (web, docs)
* `words`              the word split every word-counting rule shares (Han characters are words)
"""

from lmkit.data.filters.base import DocumentFilter, Dropped, FilterError, FilterResult
from lmkit.data.filters.boilerplate import BoilerplateLines
from lmkit.data.filters.c4 import C4QualityFilter
from lmkit.data.filters.gopher_quality import GopherQualityFilter
from lmkit.data.filters.gopher_repetition import GopherRepetitionFilter
from lmkit.data.filters.language import LanguageFilter, LanguageIdentifier, default_identifier
from lmkit.data.filters.normalize import UnicodeNormalizer
from lmkit.data.filters.pii import PIIMasker
from lmkit.data.filters.presets import PRESETS, CleanPreset, get_preset, preset_filters

#: the names `lmkit data clean --filters` accepts, in the order they run by default
FILTERS = {
    "unicode": UnicodeNormalizer,
    "boilerplate": BoilerplateLines,
    "language": LanguageFilter,
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4": C4QualityFilter,
    "pii": PIIMasker,
}


def build_filters(names: list[str], options: dict[str, dict] | None = None) -> list[DocumentFilter]:
    """Filters by name, each built with its keyword `options` (e.g. {"language": {"keep": ["en"]}})."""
    options = options or {}
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise FilterError(f"unknown filters {unknown}: choose from {', '.join(FILTERS)}")
    return [FILTERS[n](**options.get(n, {})) for n in names]


__all__ = [
    "FILTERS",
    "PRESETS",
    "CleanPreset",
    "BoilerplateLines",
    "C4QualityFilter",
    "DocumentFilter",
    "Dropped",
    "FilterError",
    "FilterResult",
    "GopherQualityFilter",
    "GopherRepetitionFilter",
    "LanguageFilter",
    "LanguageIdentifier",
    "PIIMasker",
    "UnicodeNormalizer",
    "build_filters",
    "get_preset",
    "preset_filters",
    "default_identifier",
]
