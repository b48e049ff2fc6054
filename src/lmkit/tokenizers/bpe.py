"""Byte-level BPE (byte-pair encoding), as in GPT-2, GPT-4 (tiktoken), Llama-3 and Qwen2.

Text is normalised (optional), split into pre-tokens by a regex (see ``pretokenize``),
each pre-token is turned into its UTF-8 bytes, and learned merges are applied inside it.
Every byte is a token, so there is no unknown token and ``decode(encode(s)) == s``.

Training (``BPETokenizer.train``)
    Pre-tokens are counted with a ``Counter`` while the corpus streams by (files are
    read in ~1 MB blocks of lines, never held whole). Each distinct word becomes a list
    of byte ids. Pair counts are kept in ``pair -> count`` with ``pair -> {word index}``
    and updated *incrementally*: a merge touches only the words that contain the
    merged pair. The best pair comes from a max-heap with lazy invalidation: a popped
    entry whose count is stale is pushed back with its current count. This is sound
    because merging ``(a, b) -> z`` only ever *lowers* the counts of existing pairs;
    the pairs whose counts grow all contain the new ``z`` and are pushed fresh. (When
    two merge paths spell one string, e.g. ``ab+c`` and ``a+bc``, the existing id is
    reused, as Hugging Face does; the grown pairs are then re-pushed too.)

    Tie-breaking (deterministic): the pair with the highest count wins; among equal
    counts, the pair with the smallest ``(left id, right id)``. Ids 0..255 are the
    bytes in byte order, then merges in the order they were learned, so results do not
    depend on corpus order, hash seeds or dict iteration. Training stops early if no
    pair reaches ``min_frequency``. Special tokens get the ids after the last merge.

Encoding
    Each pre-token is looked up in a size-capped word cache (a ``dict`` whose
    ``__missing__`` runs BPE), so the hot loop is ``findall`` + a C-level ``map`` over
    the cache. A cache miss runs the classic loop: find the adjacent pair with the
    lowest merge rank (leftmost on ties), merge it, repeat. Long words (over 64 bytes)
    use a heap over a linked list instead (same result, O(n log n)). This is exactly the
    rule of Hugging Face ``tokenizers`` and of tiktoken (whose rank of a pair is the
    rank of the concatenated token).

Vocabulary extension (词表扩增)
    ``extend`` continues training on domain text from the current merges (old ids keep
    their meaning, new ids follow); ``add_tokens`` adds whole strings as tokens;
    ``bpe_vocab_merge.expand_bpe`` trains a separate domain BPE and appends its pieces.

Files: lmkit's JSON (``save``/``load``), Hugging Face ``tokenizer.json``
(``save_hf_json``/``from_hf_json``; ``load`` reads both) and tiktoken rank files
(``from_tiktoken``).
"""

from __future__ import annotations

import heapq
import json
import os
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict
from itertools import chain
from typing import Iterable, Sequence

import regex

from lmkit.atomic import atomic_write_text
from lmkit.errors import TokenizerError
from lmkit.tokenizers.added_tokens import (AddedToken, AddedTokenSplitter, added_tokens_from_hf, added_tokens_to_hf,
                                           allowed_names)
from lmkit.tokenizers.base import Tokenizer
from lmkit.tokenizers.bpe_merge import apply_merges
from lmkit.tokenizers.bytes_level import bytes_to_token_str, token_str_to_bytes
from lmkit.tokenizers.json_files import (check_format, corrupt_file_errors, hf_json_errors, is_hf_tokenizer_json,
                                         read_json, write_json)
from lmkit.tokenizers.post_processors import PostProcessor
from lmkit.tokenizers.pretokenize import PreTokenizer, byte_level_from_hf, byte_level_to_hf
from lmkit.tokenizers.text_files import iter_text
from lmkit.tokenizers.word_cache import CachesWords

FORMAT = "lmkit.bpe"
FORMAT_VERSION = 1
NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")


def normalizer_from_hf(obj: dict | None) -> str | None:
    """``None`` or one Unicode normal form (NFC/NFD/NFKC/NFKD); anything else is refused."""
    if obj is None:
        return None
    if obj.get("type") == "Sequence":
        forms = [normalizer_from_hf(n) for n in obj.get("normalizers", [])]
        forms = [f for f in forms if f is not None]
        if len(forms) > 1:
            raise TokenizerError(f"normalizer sequence {forms} is not supported (at most one normal form)")
        return forms[0] if forms else None
    if obj.get("type") in NORMALIZERS:
        return obj["type"]
    raise TokenizerError(f"normalizer {obj.get('type')!r} is not supported for byte-level BPE")


def normalizer_to_hf(form: str | None) -> dict | None:
    """One Unicode normal form (or None) as a Hugging Face ``normalizer`` object."""
    return None if form is None else {"type": form}


class BPETokenizer(CachesWords, Tokenizer):
    """Byte-level BPE tokenizer. Build it with :meth:`train`, :meth:`load`,
    :meth:`from_hf_json` or :meth:`from_tiktoken`.

    ``tokens`` maps id -> bytes of every BPE token (all 256 single bytes should be
    there). ``merges`` lists ``(left id, right id)`` in rank order; the merged token is
    the one whose bytes are the concatenation. ``merges=None`` means tiktoken-style
    ranks: the ids are the ranks and any two tokens whose concatenation is a token may
    merge (rank = that token's id). ``ignore_merges`` returns a pre-token that is itself
    a token as that single token without running BPE (tiktoken, Llama-3).
    """

    def __init__(
        self,
        tokens: dict[int, bytes],
        merges: Sequence[tuple[int, int]] | None,
        *,
        pre_tokenizer: PreTokenizer | None = None,
        normalizer: str | None = None,
        added_tokens: Iterable[AddedToken] = (),
        ignore_merges: bool = False,
        post_processor: dict | None = None,
        cache_size: int = 1 << 18,
    ) -> None:
        if normalizer is not None and normalizer not in NORMALIZERS:
            raise TokenizerError(f"normalizer must be one of {NORMALIZERS} or None, got {normalizer!r}")
        self.pre_tokenizer = pre_tokenizer if pre_tokenizer is not None else PreTokenizer.from_pattern("gpt2")
        self.normalizer = normalizer
        self.ignore_merges = bool(ignore_merges)
        self.post_processor = PostProcessor(post_processor)
        self.cache_size = int(cache_size)
        self._tokens: dict[int, bytes] = {int(i): bytes(b) for i, b in tokens.items()}
        self._ids: dict[bytes, int] = {}
        for i, b in self._tokens.items():
            if b in self._ids:
                raise TokenizerError(f"token {b!r} appears twice in the vocabulary (ids {self._ids[b]} and {i})")
            self._ids[b] = i
        self._merge_list: list[tuple[int, int]] | None = None if merges is None else [(int(a), int(b)) for a, b in merges]
        self._added: list[AddedToken] = []
        for tok in added_tokens:
            self._add_token(tok)
        self._build()

    # ---- construction ------------------------------------------------------------------
    def _add_token(self, tok: AddedToken) -> None:
        if not tok.content:
            raise TokenizerError("an added/special token cannot be empty")
        if any(t.content == tok.content for t in self._added):
            raise TokenizerError(f"added token {tok.content!r} is listed twice")
        other = self._tokens.get(tok.id)
        if other is not None and other != tok.content.encode("utf-8"):
            raise TokenizerError(
                f"added token {tok.content!r} has id {tok.id}, which already is BPE token {other!r}"
            )
        self._added.append(tok)

    def _build(self) -> None:
        """Derive the lookup tables used by encode/decode from tokens, merges, added tokens."""
        tokens, ids = self._tokens, self._ids
        self._byte_ids: list[int | None] = [ids.get(bytes([b])) for b in range(256)]
        self._identity_bytes = self._byte_ids == list(range(256))
        self._complete_bytes = None not in self._byte_ids
        ranks: dict[tuple[int, int], int] = {}
        merged: dict[int, int] = {}
        if self._merge_list is not None:
            for rank, (a, b) in enumerate(self._merge_list):
                if a not in tokens or b not in tokens:
                    raise TokenizerError(f"merge #{rank} ({a}, {b}) uses an id that is not in the vocabulary")
                z = ids.get(tokens[a] + tokens[b])
                if z is None:
                    raise TokenizerError(
                        f"merge #{rank} {tokens[a]!r} + {tokens[b]!r}: the merged token is not in the vocabulary"
                    )
                if (a, b) not in ranks:  # a duplicated merge keeps its first (lowest) rank
                    ranks[(a, b)] = rank
                    merged[rank] = z
        else:  # tiktoken ranks: every split of a token into two tokens is a merge
            for z, data in tokens.items():
                for k in range(1, len(data)):
                    a, b = ids.get(data[:k]), ids.get(data[k:])
                    if a is not None and b is not None:
                        ranks[(a, b)] = z
                        merged[z] = z
        self._ranks = ranks
        self._merged = merged
        self._added_by_content = {t.content: t for t in self._added}
        self._special_names = frozenset(t.content for t in self._added if t.special)
        all_ids = list(chain(tokens, (t.id for t in self._added if t.id not in tokens)))
        if len(set(all_ids)) != len(all_ids):
            raise TokenizerError("two added tokens share one id")
        size = max(all_ids, default=-1) + 1
        if all_ids and (min(all_ids) < 0 or size > 2 * len(all_ids) + 1024):
            raise TokenizerError(
                f"token ids must be non-negative and nearly contiguous (got {len(all_ids)} ids from "
                f"{min(all_ids)} to {size - 1})"
            )
        table: list[bytes | None] = [None] * size
        for i, b in tokens.items():
            table[i] = b
        for t in self._added:
            table[t.id] = t.content.encode("utf-8")
        self._decode_table = table
        self._reset_caches()  # pre-token -> ids (``_segment_word`` on a miss); splitters

    # ---- the Tokenizer interface -------------------------------------------------------
    @property
    def special_tokens(self) -> dict[str, int]:  # type: ignore[override]
        return {t.content: t.id for t in self._added if t.special}

    @property
    def added_tokens(self) -> list[AddedToken]:
        return list(self._added)

    @property
    def vocab_size(self) -> int:
        return len(self._decode_table)

    @property
    def pattern(self) -> str | None:
        """The split regex (source) of the pre-tokenizer."""
        return self.pre_tokenizer.pattern

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merges as byte pairs in rank order (derived from the ranks for tiktoken files)."""
        return [(self._tokens[a], self._tokens[b]) for a, b in self.merge_ids()]

    def merge_ids(self) -> list[tuple[int, int]]:
        if self._merge_list is not None:
            return list(self._merge_list)
        order = sorted(self._ranks.items(), key=lambda kv: (kv[1], kv[0]))
        return [pair for pair, _ in order]

    def token_bytes(self, idx: int) -> bytes:
        """The bytes token `idx` stands for (special tokens: their UTF-8 text)."""
        try:
            data = self._decode_table[idx] if idx >= 0 else None
        except (IndexError, TypeError):
            data = None
        if data is None:
            raise TokenizerError(f"token id {idx!r} is not in this vocabulary (size {self.vocab_size})")
        return data

    def id_to_token(self, idx: int) -> str:
        """Token text as in vocab files: byte-level characters (``Ġthe``); added tokens verbatim."""
        for t in self._added:
            if t.id == idx:
                return t.content
        return bytes_to_token_str(self.token_bytes(idx))

    def token_to_id(self, token: str) -> int | None:
        if token in self._added_by_content:
            return self._added_by_content[token].id
        try:
            return self._ids.get(token_str_to_bytes(token))
        except KeyError:
            return None

    def get_vocab(self) -> dict[str, int]:
        """token text -> id for every token, added tokens included."""
        vocab = {bytes_to_token_str(b): i for i, b in self._tokens.items()}
        vocab.update({t.content: t.id for t in self._added})
        return vocab

    # ---- encoding ----------------------------------------------------------------------
    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """BPE on one pre-token (called on a cache miss)."""
        data = word.encode("utf-8")
        if self.ignore_merges:
            whole = self._ids.get(data)
            if whole is not None:
                return (whole,)
        if self._identity_bytes:
            ids = list(data)
        else:
            ids = [self._byte_ids[b] for b in data]
            if not self._complete_bytes:  # a byte without a token is dropped, as in HF
                ids = [i for i in ids if i is not None]
        return apply_merges(ids, self._ranks, self._merged)

    _segment_word = _bpe_word  # what the word cache runs on a miss

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids for `text` with no special-token handling at all."""
        if self.normalizer is not None:
            text = unicodedata.normalize(self.normalizer, text)
        return self._encode_normalized(text)

    def _encode_normalized(self, text: str) -> list[int]:
        try:
            return list(chain.from_iterable(map(self._cache.__getitem__, self.pre_tokenizer(text))))
        except UnicodeEncodeError:  # lone surrogates: encode them as U+FFFD, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return list(chain.from_iterable(map(self._cache.__getitem__, self.pre_tokenizer(text))))

    def encode(
        self, text: str, allowed_special: str | Iterable[str] = "none", add_special_tokens: bool = False
    ) -> list[int]:
        """Token ids for `text`.

        Special tokens are plain text unless named in `allowed_special` ("all", "none",
        one name, or a collection of names); non-special added tokens always match, as
        ``tokenizers`` matches them (see ``added_tokens``). ``add_special_tokens=True``
        wraps the ids in the post-processor's template (e.g. a BOS in front).
        """
        splitter = self._splitter(self._allowed(allowed_special))
        if splitter is None or splitter.finds_nothing(text):
            out = self.encode_ordinary(text)
        else:
            out = []
            for piece, idx, _ in splitter.split(text):
                if idx is not None:
                    out.append(idx)
                else:
                    out += self._encode_normalized(piece)
        return self.post_processor.apply(out) if add_special_tokens else out

    def _allowed(self, allowed_special: str | Iterable[str]) -> frozenset:
        return allowed_names(allowed_special, self._special_names)

    def _splitter(self, allowed: frozenset) -> AddedTokenSplitter | None:
        """The added-token splitter for the tokens that are active (cached per `allowed` set)."""
        if allowed in self._splitters:
            return self._splitters[allowed]
        active = [t for t in self._added if not t.special or t.content in allowed]
        form = self.normalizer
        splitter = None
        if active:
            splitter = AddedTokenSplitter(active, None if form is None else lambda s: unicodedata.normalize(form, s))
        self._splitters[allowed] = splitter
        return splitter

    def encode_batch(self, texts: Sequence[str], num_workers: int = 0, **kw) -> list[list[int]]:
        """Encode many texts; ``num_workers > 1`` uses processes that each receive the
        tokenizer once (not once per text)."""
        if num_workers <= 1 or len(texts) < 2:
            return [self.encode(t, **kw) for t in texts]
        from concurrent.futures import ProcessPoolExecutor

        chunk = max(1, len(texts) // (num_workers * 8))
        with ProcessPoolExecutor(num_workers, initializer=_init_worker, initargs=(self, kw)) as pool:
            return list(pool.map(_encode_in_worker, texts, chunksize=chunk))

    # ---- decoding ----------------------------------------------------------------------
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of `ids` (useful for streaming: cut only at UTF-8 boundaries)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join(map(self._decode_table.__getitem__, ids))
        except (IndexError, TypeError):
            bad = next((i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size
                        or self._decode_table[i] is None), None)
            raise TokenizerError(
                f"cannot decode token id {bad!r}: not in this vocabulary (size {self.vocab_size})"
            ) from None

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        if skip_special_tokens:
            specials = {t.id for t in self._added if t.special}
            ids = [i for i in (ids.tolist() if hasattr(ids, "tolist") else ids) if i not in specials]
        return self.decode_bytes(ids).decode("utf-8", "replace")

    # ---- training ----------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
        vocab_size: int,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = (),
        pattern: str | None = "gpt2",
        *,
        add_prefix_space: bool = False,
        normalizer: str | None = None,
        show_progress: bool = False,
    ) -> "BPETokenizer":
        """Learn a byte-level BPE vocabulary of `vocab_size` tokens (bytes + merges + specials).

        `texts_or_files`: ``str`` items are text, ``pathlib.Path`` (any ``os.PathLike``)
        items are UTF-8 files read in streaming fashion. `pattern`: ``"gpt2"``,
        ``"cl100k"``, a regex source, or ``None`` (no split). Pairs seen fewer than
        `min_frequency` times are never merged.
        """
        special_tokens = list(special_tokens)
        if len(set(special_tokens)) != len(special_tokens):
            raise TokenizerError(f"special_tokens has duplicates: {special_tokens}")
        if isinstance(vocab_size, bool) or not hasattr(vocab_size, "__index__") or vocab_size < 256 + len(special_tokens):
            raise TokenizerError(
                f"vocab_size={vocab_size!r} is too small (or not an integer): a byte-level BPE needs 256 "
                f"byte tokens + {len(special_tokens)} special token(s) = {256 + len(special_tokens)} at least"
            )
        if min_frequency < 1:
            raise TokenizerError(f"min_frequency must be >= 1, got {min_frequency}")
        pre = PreTokenizer.from_pattern(pattern, add_prefix_space)
        tmp = cls({b: bytes([b]) for b in range(256)}, [], pre_tokenizer=pre, normalizer=normalizer)
        counts = count_pretokens(texts_or_files, tmp, special_tokens, show_progress)
        if not counts:
            raise TokenizerError("cannot train BPE on an empty corpus: no text was found in the input")
        n_new = int(vocab_size) - 256 - len(special_tokens)
        tokens, merges = learn_merges(counts, n_new, min_frequency, show_progress)
        added = [AddedToken(s, len(tokens) + k) for k, s in enumerate(special_tokens)]
        return cls(tokens, merges, pre_tokenizer=pre, normalizer=normalizer, added_tokens=added)

    def extend(
        self,
        texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
        n_new_tokens: int,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> "BPETokenizer":
        """Vocabulary extension (词表扩增): continue BPE training on domain text.

        Words of the new corpus are first split with the existing merges, then up to
        `n_new_tokens` further merges are learned. Every existing id keeps its meaning
        (an existing model only needs new embedding rows); new tokens get ids from
        ``vocab_size`` upward and rank after all old merges. Returns a new tokenizer.
        """
        if self._merge_list is None:
            raise TokenizerError("extend() needs a merge list; this tokenizer uses tiktoken-style ranks only")
        if n_new_tokens < 0:
            raise TokenizerError(f"n_new_tokens must be >= 0, got {n_new_tokens}")
        specials = [t.content for t in self._added]
        counts = count_pretokens(texts_or_files, self, specials, show_progress)
        if not counts:
            raise TokenizerError("cannot extend BPE on an empty corpus: no text was found in the input")
        words, freqs = [], []
        for word, f in counts.items():
            ids = self._bpe_word(word)
            if len(ids) > 1:
                words.append(list(ids))
                freqs.append(f)
        tokens = dict(self._tokens)
        namer = TokenNamer(tokens, self.vocab_size)
        new = merge_words(words, freqs, n_new_tokens, min_frequency, show_progress, namer)
        return BPETokenizer(tokens, self._merge_list + new, pre_tokenizer=self.pre_tokenizer,
                            normalizer=self.normalizer, added_tokens=self._added,
                            ignore_merges=self.ignore_merges, post_processor=self.post_processor.to_hf(),
                            cache_size=self.cache_size)

    def add_tokens(self, contents: Iterable[str], special: bool = False) -> list[int]:
        """Add whole strings as tokens (matched verbatim, ids from ``vocab_size`` up).

        Existing contents keep their ids. Returns the ids of `contents`, in order.
        """
        out: list[int] = []
        known = {t.content: t.id for t in self._added}
        next_id = self.vocab_size
        for content in contents:
            if content not in known:
                self._add_token(AddedToken(content, next_id, special=special))
                known[content] = next_id
                next_id += 1
            out.append(known[content])
        self._build()
        return out

    # ---- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """lmkit's own JSON form: byte-level token strings, merges as id pairs."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "normalizer": self.normalizer,
            "pre_tokenizer": self.pre_tokenizer.to_list(),
            "ignore_merges": self.ignore_merges,
            "merge_mode": "merges" if self._merge_list is not None else "ranks",
            "vocab": {bytes_to_token_str(b): i for i, b in sorted(self._tokens.items())},
            "merges": [list(p) for p in self._merge_list] if self._merge_list is not None else None,
            "added_tokens": [asdict(t) for t in self._added],
            "post_processor": self.post_processor.to_hf(),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write lmkit's JSON format atomically (``save_hf_json`` writes ``tokenizer.json``)."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "BPETokenizer":
        check_format(data, source, FORMAT, FORMAT_VERSION, "BPE")
        with corrupt_file_errors(source):
            tokens = {int(i): token_str_to_bytes(s) for s, i in data["vocab"].items()}
            mode = data.get("merge_mode", "merges")
            if mode not in ("merges", "ranks"):
                raise ValueError(f"merge_mode {mode!r}")
            merges = [(int(a), int(b)) for a, b in data["merges"]] if mode == "merges" else None
            added = [AddedToken(**t) for t in data.get("added_tokens", [])]
            return cls(
                tokens,
                merges,
                pre_tokenizer=PreTokenizer(data.get("pre_tokenizer", [])),
                normalizer=data.get("normalizer"),
                added_tokens=added,
                ignore_merges=bool(data.get("ignore_merges", False)),
                post_processor=data.get("post_processor"),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Load lmkit's JSON format or a Hugging Face ``tokenizer.json`` (BPE model)."""
        data = read_json(path)
        if is_hf_tokenizer_json(data):
            return cls.from_hf_dict(data, source=str(path))
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_hf_json(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Load a Hugging Face ``tokenizer.json`` whose model is BPE."""
        return cls.from_hf_dict(read_json(path), source=str(path))

    def save_hf_json(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face ``tokenizer.json`` that ``tokenizers.Tokenizer.from_file`` loads."""
        atomic_write_text(path, json.dumps(self.to_hf_dict(), ensure_ascii=False, indent=2) + "\n")

    @classmethod
    def from_hf_dict(cls, data: dict, source: str = "<tokenizer.json>") -> "BPETokenizer":
        """A parsed Hugging Face ``tokenizer.json`` whose model is byte-level BPE."""
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict):
            raise TokenizerError(f"{source}: corrupt tokenizer.json (no \"model\" object)")
        if (model.get("type") or ("BPE" if "merges" in model else None)) != "BPE":
            raise TokenizerError(f"{source}: the tokenizer.json model is not BPE")
        with hf_json_errors(source):
            return cls._from_hf_model(data, model)

    @classmethod
    def _from_hf_model(cls, data: dict, model: dict) -> "BPETokenizer":
        for field in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(field):
                raise TokenizerError(f"BPE {field}={model[field]!r} is not supported (byte-level BPE has none)")
        if model.get("byte_fallback"):
            raise TokenizerError("BPE with byte_fallback is SentencePiece-style, not byte-level BPE")
        decoder = data.get("decoder")
        if decoder is not None and decoder.get("type") != "ByteLevel":
            raise TokenizerError(f"decoder {decoder.get('type')!r} is not supported (expected ByteLevel)")
        added = added_tokens_from_hf(data)
        added_ids = {t.content: t.id for t in added}
        tokens: dict[int, bytes] = {}
        str_to_id: dict[str, int] = {}
        for text, idx in model["vocab"].items():
            idx = int(idx)
            try:
                tokens[idx] = token_str_to_bytes(text)
            except KeyError:
                if added_ids.get(text) == idx:
                    continue  # an added token that lives in the model vocab too: handled as added
                raise TokenizerError(f"vocab entry {text!r} is not a byte-level token (characters outside the byte alphabet)") from None
            str_to_id[text] = idx
        merges = []
        for k, m in enumerate(model.get("merges") or []):
            a, b = m.split(" ") if isinstance(m, str) else m
            if a not in str_to_id or b not in str_to_id:
                raise TokenizerError(f"merge #{k} {a!r} {b!r} uses a token that is not in the vocab")
            merges.append((str_to_id[a], str_to_id[b]))
        return cls(
            tokens,
            merges,
            pre_tokenizer=byte_level_from_hf(data.get("pre_tokenizer")),
            normalizer=normalizer_from_hf(data.get("normalizer")),
            added_tokens=added,
            ignore_merges=bool(model.get("ignore_merges", False)),
            post_processor=data.get("post_processor"),
        )

    def to_hf_dict(self) -> dict:
        """This tokenizer as a Hugging Face ``tokenizer.json`` dict (byte-level BPE model)."""
        vocab = {bytes_to_token_str(self.token_bytes(i)): i for i in sorted(self._tokens)}
        merges = [[bytes_to_token_str(a), bytes_to_token_str(b)] for a, b in self.merges]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added_tokens_to_hf(self.added_tokens),
            "normalizer": normalizer_to_hf(self.normalizer),
            "pre_tokenizer": byte_level_to_hf(self.pre_tokenizer),
            "post_processor": self.post_processor.to_hf(),
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": self.ignore_merges,
                "vocab": vocab,
                "merges": merges,
            },
        }

    @classmethod
    def from_tiktoken(
        cls,
        ranks: str | os.PathLike | dict[bytes, int],
        pattern: str = "cl100k",
        special_tokens: dict[str, int] | None = None,
    ) -> "BPETokenizer":
        """A tokenizer from a tiktoken rank file (``base64-token rank`` per line) or dict."""
        from lmkit.tokenizers.tiktoken_ranks import load_tiktoken_ranks

        if not isinstance(ranks, dict):
            ranks = load_tiktoken_ranks(ranks)
        tokens = {r: b for b, r in ranks.items()}
        added = [AddedToken(s, i) for s, i in (special_tokens or {}).items()]
        return cls(tokens, None, pre_tokenizer=PreTokenizer.from_pattern(pattern), added_tokens=added,
                   ignore_merges=True)

    def __repr__(self) -> str:
        from lmkit.tokenizers.pretokenize import pattern_name

        pat = pattern_name(self.pattern) or ("custom" if self.pattern else None)
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._ranks)}, pattern={pat}, "
                f"special_tokens={sorted(self.special_tokens)})")


# ---- training internals --------------------------------------------------------------------
def count_pretokens(
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer: BPETokenizer,
    special_tokens: Sequence[str] = (),
    show_progress: bool = False,
) -> Counter:
    """pre-token -> count over the whole input, streaming; special tokens are cut out."""
    counts: Counter = Counter()
    specials = sorted(special_tokens, key=len, reverse=True)
    cut = regex.compile("|".join(map(regex.escape, specials))) if specials else None
    pre, norm = tokenizer.pre_tokenizer, tokenizer.normalizer
    bar = None
    if show_progress:
        from lmkit.progress import Progress

        bar = Progress(desc="counting words", unit="char", progress=show_progress, unit_scale=True)
    for text, _ in iter_text(sources):
        for part in cut.split(text) if cut is not None else (text,):
            if norm is not None:
                part = unicodedata.normalize(norm, part)
            counts.update(pre(part))
        if bar is not None:
            bar.update(len(text))
    if bar is not None:
        bar.close()
    counts.pop("", None)
    return counts


def learn_merges(
    word_counts: dict[str, int], n_new_tokens: int, min_frequency: int = 2, show_progress: bool = False
) -> tuple[dict[int, bytes], list[tuple[int, int]]]:
    """Tokens (id -> bytes: 0..255 are the bytes, then new tokens in order) and the merge list.

    Incremental: pair counts and the pair -> words index change only where a merge
    applies; see the module docstring for the heap and the tie-breaking rule.
    """
    words: list[list[int]] = []
    freqs: list[int] = []
    for word, f in word_counts.items():
        data = word.encode("utf-8", "replace")
        if len(data) > 1:
            words.append(list(data))
            freqs.append(f)
    tokens = {b: bytes([b]) for b in range(256)}
    merges = merge_words(words, freqs, n_new_tokens, min_frequency, show_progress, TokenNamer(tokens, 256))
    return tokens, merges


class TokenNamer:
    """Gives the token made by merging ``(a, b)`` its id: the existing id when those bytes
    already are a token (two merge paths can spell one string), else the next free id.
    ``tokens`` (id -> bytes) is updated in place."""

    def __init__(self, tokens: dict[int, bytes], next_id: int) -> None:
        self.tokens = tokens
        self.by_bytes = {b: i for i, b in tokens.items()}
        self.next_id = next_id

    def __call__(self, a: int, b: int) -> tuple[int, bool]:
        data = self.tokens[a] + self.tokens[b]
        z = self.by_bytes.get(data)
        if z is not None:
            return z, False
        z = self.next_id
        self.next_id += 1
        self.tokens[z] = data
        self.by_bytes[data] = z
        return z, True


def merge_words(
    words: list[list[int]],
    freqs: list[int],
    n_new_tokens: int,
    min_frequency: int,
    show_progress: bool,
    new_id: TokenNamer,
) -> list[tuple[int, int]]:
    """The core BPE loop on words already split into ids (modified in place): merges until
    `n_new_tokens` new tokens exist or no pair is seen `min_frequency` times.

    ``new_id(a, b) -> (id, is_new)`` names merged tokens. When it returns an existing id
    the counts of some old pairs may grow; those pairs are pushed again with their new
    counts, and a stale lower entry is simply re-pushed when popped, so the heap stays right.
    """
    counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, w in enumerate(words):
        f = freqs[wi]
        for p in zip(w, w[1:]):
            counts[p] += f
            where[p].add(wi)
    heap = [(-c, p) for p, c in counts.items() if c >= min_frequency]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    bar = None
    if show_progress:
        from lmkit.progress import Progress

        bar = Progress(total=n_new_tokens, desc="BPE merges", unit="token", progress=show_progress)
    heappop, heappush = heapq.heappop, heapq.heappush
    n_new = 0
    while n_new < n_new_tokens and heap:
        neg, pair = heappop(heap)
        c = counts.get(pair, 0)
        if c != -neg:  # stale entry: counts of old pairs only go down
            if c >= min_frequency:
                heappush(heap, (-c, pair))
            continue
        a, b = pair
        z, is_new = new_id(a, b)
        n_new += is_new
        merges.append(pair)
        new_pairs: set[tuple[int, int]] = set()
        for wi in where.pop(pair):
            w = words[wi]
            f = freqs[wi]
            i = 0
            while True:
                try:
                    i = w.index(a, i)
                except ValueError:
                    break
                if i + 1 < len(w) and w[i + 1] == b:
                    if i:
                        left = w[i - 1]
                        counts[(left, a)] -= f
                        p = (left, z)
                        counts[p] += f
                        where[p].add(wi)
                        new_pairs.add(p)
                    w[i] = z
                    del w[i + 1]
                    if i + 1 < len(w):
                        right = w[i + 1]
                        counts[(b, right)] -= f
                        p = (z, right)
                        counts[p] += f
                        where[p].add(wi)
                        new_pairs.add(p)
                i += 1
        del counts[pair]
        for p in new_pairs:
            c = counts[p]
            if c >= min_frequency:
                heappush(heap, (-c, p))
        if bar is not None and is_new:
            bar.update(1)
    if bar is not None:
        bar.close()
    return merges


# ---- helpers -------------------------------------------------------------------------------
_WORKER_STATE: dict = {}


def _init_worker(tok: BPETokenizer, kw: dict) -> None:
    _WORKER_STATE["tok"] = tok
    _WORKER_STATE["kw"] = kw


def _encode_in_worker(text: str) -> list[int]:
    return _WORKER_STATE["tok"].encode(text, **_WORKER_STATE["kw"])
