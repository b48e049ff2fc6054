"""Tokenizers: byte-level BPE, Unigram, WordPiece, whitespace/char, Chinese segmentation,
chat templates."""

from lmkit.tokenizers.base import Tokenizer
from lmkit.tokenizers.bpe import AddedToken, BPETokenizer

__all__ = ["Tokenizer", "AddedToken", "BPETokenizer"]
