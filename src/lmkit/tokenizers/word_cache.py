"""The per-word cache of the BPE, Unigram and WordPiece tokenizers.

Encoding splits text into words (pre-tokens) and looks each one up in a ``WordCache``: a
``dict`` whose ``__missing__`` runs the tokenizer's segmentation of one word, so the hot
loop stays a C-level ``map``/lookup and the algorithm only runs on a cache miss. The cache
(and the compiled special-token regexes kept next to it) is derived state: it is rebuilt,
never pickled, so worker processes receive a tokenizer without megabytes of cache.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable


class WordCache(dict):
    """word -> value of ``fn(word)``, computed on a miss. Capped: the oldest half goes when full."""

    __slots__ = ("_fn", "_cap")

    def __init__(self, fn: Callable[[str], object], cap: int) -> None:
        super().__init__()
        self._fn = fn
        self._cap = cap

    def __missing__(self, word: str):
        value = self._fn(word)
        if len(self) >= self._cap:
            for key in list(islice(self, len(self) // 2)):
                self.pop(key, None)
        self[word] = value
        return value


class CachesWords:
    """Mixin for a tokenizer with ``self._cache`` (a :class:`WordCache` over
    ``self._segment_word``, capped at ``self.cache_size``) and ``self._splitters``
    (special-token regexes by allowed set). ``_reset_caches`` builds both empty; pickling
    leaves both out and unpickling rebuilds them."""

    _TRANSIENT = ("_cache", "_splitters")
    cache_size: int

    def _segment_word(self, word: str):
        """The segmentation of one word, run on a cache miss (subclasses define it)."""
        raise NotImplementedError

    def _reset_caches(self) -> None:
        self._splitters = {}
        self._cache = WordCache(self._segment_word, self.cache_size)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_caches()
