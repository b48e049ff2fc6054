"""WordPiece (BERT): BasicTokenizer + greedy longest-match-first subwords.

Each word from :class:`~lmkit.tokenizers.basic_tokenizer.BasicTokenizer` is cut greedily:
the longest vocabulary entry that starts the word, then the longest ``##``-prefixed entry
that continues it, and so on. If some position has no match, or the word is longer than
``max_input_chars_per_word`` (100) characters, the whole word becomes ``[UNK]``. Results
are cached per word.

Matches Hugging Face ``BertTokenizerFast`` id for id. ``encode`` returns the ids of the
text only; ``encode_plus`` adds ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with
``token_type_ids`` (0 for A, 1 for B), optional truncation (longest first) and attention
mask. ``decode`` joins ``##`` pieces to the previous token and removes the space before
punctuation (Hugging Face's WordPiece decoder with ``cleanup``).

Files: ``vocab.txt`` (one token per line, id = line number), Hugging Face
``tokenizer.json`` with a WordPiece model, a model directory (``from_pretrained_dir``), and
lmkit's JSON (``save``/``load``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from lmkit.atomic import atomic_write_text
from lmkit.errors import TokenizerError
from lmkit.tokenizers.base import ListVocabTokenizer
from lmkit.tokenizers.basic_tokenizer import BasicTokenizer
from lmkit.tokenizers.json_files import (check_format, corrupt_file_errors, hf_json_errors, is_hf_tokenizer_json,
                                         parse_json, read_file_bytes, write_json)
from lmkit.tokenizers.special_tokens import encode_with_specials
from lmkit.tokenizers.word_cache import CachesWords

FORMAT = "lmkit.wordpiece"
FORMAT_VERSION = 1
SPECIAL_NAMES = ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token")
_DEFAULT_SPECIALS = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                     "pad_token": "[PAD]", "mask_token": "[MASK]"}


class WordPieceTokenizer(CachesWords, ListVocabTokenizer):
    """BERT WordPiece tokenizer over a vocabulary given in id order."""

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        do_lower_case: bool = True,
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        clean_text: bool = True,
        unk_token: str = "[UNK]",
        cls_token: str | None = "[CLS]",
        sep_token: str | None = "[SEP]",
        pad_token: str | None = "[PAD]",
        mask_token: str | None = "[MASK]",
        continuing_subword_prefix: str = "##",
        max_input_chars_per_word: int = 100,
        cleanup: bool = True,
        cache_size: int = 1 << 18,
    ) -> None:
        self._vocab = [str(t) for t in vocab]
        if not self._vocab:
            raise TokenizerError("a WordPiece vocabulary cannot be empty")
        self._ids: dict[str, int] = {}
        for i, tok in enumerate(self._vocab):
            self._ids[tok] = i  # a duplicated entry keeps its last id, like Hugging Face
        if unk_token not in self._ids:
            raise TokenizerError(f"the unknown token {unk_token!r} is not in the vocabulary")
        if max_input_chars_per_word < 1:
            raise TokenizerError(f"max_input_chars_per_word must be >= 1, got {max_input_chars_per_word}")
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        self.unk_id = self._ids[unk_token]
        self.prefix = continuing_subword_prefix
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.cleanup = bool(cleanup)
        self.cache_size = int(cache_size)
        names = [t for t in (unk_token, cls_token, sep_token, pad_token, mask_token) if t]
        for name in names:
            if name not in self._ids:
                raise TokenizerError(f"special token {name!r} is not in the vocabulary")
        self._specials = {t: self._ids[t] for t in names}
        self.basic = BasicTokenizer(do_lower_case, tokenize_chinese_chars, strip_accents, clean_text)
        self._maxlen = max(len(t) for t in self._ids)
        self._reset_caches()  # word -> ids (``_segment_word`` on a miss); special-token splitters

    # ---- special-token ids ----------------------------------------------------------------
    def _optional_id(self, token: str | None) -> int | None:
        return self._ids.get(token) if token else None

    @property
    def cls_token_id(self) -> int | None:
        return self._optional_id(self.cls_token)

    @property
    def sep_token_id(self) -> int | None:
        return self._optional_id(self.sep_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._optional_id(self.pad_token)

    @property
    def mask_token_id(self) -> int | None:
        return self._optional_id(self.mask_token)

    # ---- encoding ----------------------------------------------------------------------
    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first segmentation of one word (cache miss)."""
        n = len(word)
        if n > self.max_input_chars_per_word:
            return (self.unk_id,)
        ids, vocab, prefix, maxlen = [], self._ids, self.prefix, self._maxlen
        start = 0
        while start < n:
            end = min(n, start + maxlen)
            while start < end:
                sub = word[start:end] if start == 0 else prefix + word[start:end]
                hit = vocab.get(sub)
                if hit is not None:
                    ids.append(hit)
                    break
                end -= 1
            else:
                return (self.unk_id,)
            start = end
        return tuple(ids)

    _segment_word = _wordpiece  # what the word cache runs on a miss

    def tokenize(self, text: str) -> list[str]:
        """Token strings of `text` (no [CLS]/[SEP])."""
        return [self._vocab[i] for i in self.encode(text)]

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none",
               add_special_tokens: bool = False) -> list[int]:
        """Ids of `text`. ``allowed_special`` lets ``[CLS]``, ``[MASK]``… written in the text
        through as their ids (Hugging Face always does that); ``add_special_tokens`` wraps
        the result in ``[CLS] … [SEP]``."""
        ids = encode_with_specials(text, allowed_special, self._specials, self._splitters, self._encode_plain)
        if add_special_tokens:
            ids = self._wrap(ids, None)[0]
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        cache = self._cache
        return [i for w in self.basic.split(self.basic.normalize(text)) for i in cache[w]]

    def _wrap(self, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
        cls, sep = self.cls_token_id, self.sep_token_id
        if cls is None or sep is None:
            raise TokenizerError("this vocabulary has no [CLS]/[SEP] tokens to add")
        ids = [cls, *a, sep]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, sep]
            types += [1] * (len(b) + 1)
        return ids, types

    def encode_plus(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        add_special_tokens: bool = True,
        allowed_special: str | Iterable[str] = "all",
        max_length: int | None = None,
        truncation: str = "longest_first",
    ) -> dict[str, list[int]]:
        """BERT model inputs: ``input_ids``, ``token_type_ids``, ``attention_mask``.

        A pair is ``[CLS] A [SEP] B [SEP]`` with type 0 for the first part and 1 for the
        second. With ``max_length`` the pieces are cut to fit (``longest_first``: remove
        from the longer of A and B one token at a time; ``only_first``/``only_second``).
        """
        a = self.encode(text, allowed_special)
        b = self.encode(text_pair, allowed_special) if text_pair is not None else None
        if max_length is not None:
            extra = (3 if b is not None else 2) if add_special_tokens else 0
            a, b = _truncate(a, b, max_length - extra, truncation)
        if add_special_tokens:
            ids, types = self._wrap(a, b)
        else:
            ids = a + (b or [])
            types = [0] * len(a) + [1] * len(b or [])
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids)}

    # ---- decoding ----------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Join tokens with spaces, glue ``##`` pieces on, and (``cleanup``) drop the space
        before ``. ? ! ,`` and contractions -- Hugging Face's WordPiece decoder."""
        specials = set(self._specials.values()) if skip_special_tokens else ()
        out: list[str] = []
        prefix, n = self.prefix, len(self._vocab)
        for idx in ids:
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < n:
                raise TokenizerError(f"token id {idx!r} is not in this vocabulary (size {n})")
            if idx in specials:
                continue
            tok = self._vocab[idx]
            if out:
                tok = tok[len(prefix):] if prefix and tok.startswith(prefix) else " " + tok
            if self.cleanup:
                tok = _cleanup(tok)
            out.append(tok)
        return "".join(out)

    # ---- files -------------------------------------------------------------------------
    def _options(self) -> dict:
        b = self.basic
        return {
            "do_lower_case": b.do_lower_case,
            "tokenize_chinese_chars": b.tokenize_chinese_chars,
            "strip_accents": b.strip_accents,
            "clean_text": b.clean_text,
            "unk_token": self.unk_token,
            "cls_token": self.cls_token,
            "sep_token": self.sep_token,
            "pad_token": self.pad_token,
            "mask_token": self.mask_token,
            "continuing_subword_prefix": self.prefix,
            "max_input_chars_per_word": self.max_input_chars_per_word,
            "cleanup": self.cleanup,
        }

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, **self._options(), "vocab": list(self._vocab)}

    def save(self, path: str | os.PathLike) -> None:
        """Write lmkit's JSON format atomically (``save_vocab`` writes ``vocab.txt``)."""
        write_json(path, self.to_dict())

    def save_vocab(self, path: str | os.PathLike) -> None:
        """Write ``vocab.txt`` (one token per line)."""
        atomic_write_text(path, "".join(t + "\n" for t in self._vocab))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "WordPieceTokenizer":
        check_format(data, source, FORMAT, FORMAT_VERSION, "WordPiece")
        with corrupt_file_errors(source):
            opts = {k: data[k] for k in ("do_lower_case", "tokenize_chinese_chars", "strip_accents", "clean_text",
                                         *SPECIAL_NAMES, "continuing_subword_prefix",
                                         "max_input_chars_per_word", "cleanup") if k in data}
            vocab = data["vocab"]
            if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
                raise ValueError("vocab must be a list of strings")
            return cls(vocab, **opts)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordPieceTokenizer":
        """lmkit's JSON, a Hugging Face ``tokenizer.json``, a ``vocab.txt`` or a model directory."""
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained_dir(path)
        raw = _read_text(path)
        if raw.lstrip().startswith("{"):
            data = parse_json(raw, path)
            if is_hf_tokenizer_json(data):
                return cls.from_hf_dict(data, source=str(path))
            return cls.from_dict(data, source=str(path))
        return cls.from_vocab_file(path)

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, **options) -> "WordPieceTokenizer":
        """A ``vocab.txt`` (one token per line, id = line number); `options` as the constructor."""
        text = _read_text(Path(path))
        vocab = [line.rstrip("\r\n").rstrip() for line in text.splitlines()]
        if not vocab:
            raise TokenizerError(f"{path}: the vocabulary file is empty")
        try:
            return cls(vocab, **options)
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from exc

    @classmethod
    def from_pretrained_dir(cls, directory: str | os.PathLike) -> "WordPieceTokenizer":
        """A Hugging Face model directory: ``tokenizer.json`` if present, else ``vocab.txt``
        with the options of ``tokenizer_config.json``."""
        d = Path(directory)
        if (d / "tokenizer.json").is_file():
            return cls.from_tokenizer_json(d / "tokenizer.json")
        if not (d / "vocab.txt").is_file():
            raise TokenizerError(f"{d}: neither tokenizer.json nor vocab.txt found")
        opts: dict = {}
        if (d / "tokenizer_config.json").is_file():
            cfg = parse_json(_read_text(d / "tokenizer_config.json"), d / "tokenizer_config.json")
            if isinstance(cfg, dict):
                for key in ("do_lower_case", "tokenize_chinese_chars", "strip_accents", *SPECIAL_NAMES):
                    if isinstance(cfg.get(key), (bool, str)) or (key == "strip_accents" and key in cfg):
                        opts[key] = cfg[key]
        return cls.from_vocab_file(d / "vocab.txt", **opts)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> "WordPieceTokenizer":
        """A Hugging Face ``tokenizer.json`` whose model is WordPiece."""
        path = Path(path)
        return cls.from_hf_dict(parse_json(_read_text(path), path), source=str(path))

    @classmethod
    def from_hf_dict(cls, data: dict, source: str = "<tokenizer.json>") -> "WordPieceTokenizer":
        """A ``tokenizer.json`` dict: ``BertNormalizer`` (or none / Lowercase), ``BertPreTokenizer``,
        ``WordPiece`` model, ``TemplateProcessing``/``BertProcessing`` post-processor."""
        with hf_json_errors(source):
            return _from_hf_dict(cls, data)

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.basic.do_lower_case}, "
                f"special_tokens={sorted(self._specials)})")


# ---- helpers -------------------------------------------------------------------------------
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _cleanup(tok: str) -> str:
    for a, b in _CLEANUP:
        if a in tok:
            tok = tok.replace(a, b)
    return tok


def _truncate(a: list[int], b: list[int] | None, room: int, strategy: str):
    if room < 0:
        raise TokenizerError("max_length is too small to hold the special tokens")
    if strategy not in ("longest_first", "only_first", "only_second"):
        raise TokenizerError(f"truncation must be longest_first, only_first or only_second, got {strategy!r}")
    a = list(a)
    b = list(b) if b is not None else None
    excess = len(a) + len(b or []) - room
    if excess <= 0:
        return a, b
    if strategy == "only_first" or b is None:
        if excess > len(a):
            raise TokenizerError("cannot truncate: the first sequence is too short")
        return a[: len(a) - excess], b
    if strategy == "only_second":
        if excess > len(b):
            raise TokenizerError("cannot truncate: the second sequence is too short")
        return a, b[: len(b) - excess]
    # Hugging Face's longest_first: the shorter keeps its length if the longer can absorb
    # the cut, else the shorter gets room // 2 and the longer the rest
    n1, n2 = len(a), len(b)
    swap = n1 > n2
    if swap:
        n1, n2 = n2, n1
    n2 = n1 if n1 > room else max(n1, room - n1)
    if n1 + n2 > room:
        n1 = room // 2
        n2 = n1 + room % 2
    if swap:
        n1, n2 = n2, n1
    return a[:n1], b[:n2]


def _read_text(path: Path) -> str:
    data = read_file_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _from_hf_dict(cls, data: dict) -> WordPieceTokenizer:
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError("corrupt tokenizer.json (no \"model\" object)")
    model = data["model"]
    if model.get("type") not in ("WordPiece", None) or "vocab" not in model:
        raise TokenizerError(f"model type {model.get('type')!r} is not WordPiece")
    vocab_map = model["vocab"]
    size = max(vocab_map.values()) + 1 if vocab_map else 0
    vocab: list[str | None] = [None] * size
    for tok, idx in vocab_map.items():
        vocab[int(idx)] = tok
    for t in data.get("added_tokens") or []:
        idx = int(t["id"])
        if idx >= len(vocab):
            vocab.extend([None] * (idx + 1 - len(vocab)))
        vocab[idx] = vocab[idx] or t["content"]
    if any(v is None for v in vocab):
        raise TokenizerError("the WordPiece vocabulary has gaps in its ids")
    opts: dict = {
        "unk_token": model.get("unk_token", "[UNK]"),
        "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
        "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
    }
    norm = data.get("normalizer")
    if norm is None:
        opts.update(do_lower_case=False, tokenize_chinese_chars=False, strip_accents=False, clean_text=False)
    elif norm.get("type") == "BertNormalizer":
        opts.update(do_lower_case=bool(norm.get("lowercase", True)),
                    tokenize_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
                    strip_accents=norm.get("strip_accents"), clean_text=bool(norm.get("clean_text", True)))
    else:
        raise TokenizerError(f"normalizer {norm.get('type')!r} is not supported for WordPiece")
    pre = data.get("pre_tokenizer")
    if pre is not None and pre.get("type") != "BertPreTokenizer":
        raise TokenizerError(f"pre-tokenizer {pre.get('type')!r} is not supported for WordPiece")
    names = {t: None for t in ("cls_token", "sep_token")}
    post = data.get("post_processor")
    if post is not None:
        if post.get("type") == "BertProcessing":
            names["sep_token"], names["cls_token"] = post["sep"][0], post["cls"][0]
        elif post.get("type") == "TemplateProcessing":
            single = [x["SpecialToken"]["id"] for x in post.get("single", []) if "SpecialToken" in x]
            if len(single) == 2:
                names["cls_token"], names["sep_token"] = single
    present = {tok for tok in vocab}
    for key in ("cls_token", "sep_token", "pad_token", "mask_token"):
        if names.get(key) is None:
            default = _DEFAULT_SPECIALS[key]
            names[key] = default if default in present else None
    opts.update(names)
    dec = data.get("decoder")
    if dec is not None and dec.get("type") == "WordPiece":
        opts["cleanup"] = bool(dec.get("cleanup", True))
    return cls(vocab, **opts)  # type: ignore[arg-type]
