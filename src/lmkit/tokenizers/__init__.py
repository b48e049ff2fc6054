"""Tokenizers: byte-level BPE, Unigram, WordPiece, whitespace/char, Chinese segmentation,
chat templates."""

from lmkit.tokenizers.base import Tokenizer

__all__ = ["Tokenizer"]
