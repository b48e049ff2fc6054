"""Tokenizers: byte-level BPE, SentencePiece-style BPE, Unigram, WordPiece, whitespace/char, Chinese segmentation,
chat templates."""

from lmkit.tokenizers.base import Tokenizer
from lmkit.tokenizers.bpe import AddedToken, BPETokenizer
from lmkit.tokenizers.loading import load_tokenizer
from lmkit.tokenizers.sentencepiece_bpe import SentencePieceBPETokenizer
from lmkit.tokenizers.chat_template import CHATML, LLAMA3, ChatTemplate, get_template
from lmkit.tokenizers.simple import CharTokenizer, WhitespaceTokenizer
from lmkit.tokenizers.unigram import UnigramTokenizer
from lmkit.tokenizers.wordpiece import WordPieceTokenizer

__all__ = ["Tokenizer", "AddedToken", "BPETokenizer", "CHATML", "LLAMA3", "ChatTemplate", "get_template"]
__all__ += ["SentencePieceBPETokenizer", "load_tokenizer", "UnigramTokenizer", "WordPieceTokenizer"]
__all__ += ["WhitespaceTokenizer", "CharTokenizer"]
