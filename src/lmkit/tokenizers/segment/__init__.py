"""Chinese word segmentation: dictionary (prefix trie), FMM/BMM/BiMM, max-probability, scoring."""

from __future__ import annotations

from lmkit.tokenizers.segment.dictionary import Dictionary, jieba_dictionary_path
from lmkit.tokenizers.segment.evaluate import SegmentationScore, evaluate
from lmkit.tokenizers.segment.max_match import (
    backward_max_match,
    bidirectional_max_match,
    bimm_key,
    forward_max_match,
)
from lmkit.tokenizers.segment.max_prob import MaxProbSegmenter
from lmkit.tokenizers.segment.trie import PrefixTrie

METHODS = ("fmm", "bmm", "bimm", "maxprob")


def segment(text: str, dictionary: Dictionary, method: str = "maxprob", max_len: int | None = None) -> list[str]:
    """Segment `text` with one of METHODS (`max_len` applies to the matching methods)."""
    if method == "fmm":
        return forward_max_match(text, dictionary, max_len)
    if method == "bmm":
        return backward_max_match(text, dictionary, max_len)
    if method == "bimm":
        return bidirectional_max_match(text, dictionary, max_len)
    if method == "maxprob":
        return MaxProbSegmenter(dictionary).lcut(text)
    raise ValueError(f"unknown segmentation method {method!r}; use one of {METHODS}")


__all__ = [
    "Dictionary", "MaxProbSegmenter", "PrefixTrie", "SegmentationScore", "METHODS", "backward_max_match",
    "bidirectional_max_match", "bimm_key", "evaluate", "forward_max_match", "jieba_dictionary_path", "segment",
]
