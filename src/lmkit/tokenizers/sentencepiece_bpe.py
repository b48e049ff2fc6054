"""SentencePiece-style BPE from a ``tokenizer.json``: merges over characters, not bytes.

Llama 2, Mistral, Phi-3 and Gemma ship their SentencePiece BPE model converted to a Hugging
Face ``tokenizer.json``. Unlike byte-level BPE (``bpe.py``) the vocabulary holds Unicode
strings, spaces are written ``▁``, and a character that is not in the vocabulary becomes

* its UTF-8 bytes as ``<0x..>`` tokens with ``byte_fallback`` (when all of them exist),
* else the ``unk_token`` (consecutive unknowns fused into one with ``fuse_unk``),
* else nothing (it is dropped, as ``tokenizers`` drops it).

The pipeline is the one of ``tokenizers``: added tokens are split out (``added_tokens``),
each stretch between them is normalized (``hf_normalizers``: Llama 2's
``Prepend("▁") + Replace(" ", "▁")``), pre-tokenized (``metaspace``, or kept whole when
there is no pre-tokenizer), and every word is merged (``bpe_merge``; with ``ignore_merges``
a word that is itself in the vocabulary is one token). ``decode`` runs the file's decoder
chain (``hf_decoders``), and ``add_special_tokens=True`` its post-processor (BOS).

``save``/``load`` write and read the ``tokenizer.json`` form itself.
"""

from __future__ import annotations

import json
import os
from itertools import chain
from typing import Iterable, Sequence

from lmkit.atomic import atomic_write_text
from lmkit.errors import TokenizerError
from lmkit.tokenizers.added_tokens import (AddedToken, AddedTokenSplitter, added_tokens_from_hf, added_tokens_to_hf,
                                           allowed_names)
from lmkit.tokenizers.base import ListVocabTokenizer
from lmkit.tokenizers.bpe_merge import apply_merges
from lmkit.tokenizers.hf_decoders import TokenDecoder
from lmkit.tokenizers.hf_normalizers import TextNormalizer
from lmkit.tokenizers.json_files import hf_json_errors, read_json
from lmkit.tokenizers.metaspace import Metaspace
from lmkit.tokenizers.post_processors import PostProcessor
from lmkit.tokenizers.word_cache import CachesWords


class SentencePieceBPETokenizer(CachesWords, ListVocabTokenizer):
    """Character-level BPE with byte fallback; build it with :meth:`from_hf_dict` / :meth:`load`.

    `vocab` maps token string -> id (ids contiguous together with the added tokens),
    `merges` lists ``(left, right)`` token strings in rank order.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        unk_token: str | None = None,
        byte_fallback: bool = False,
        fuse_unk: bool = False,
        ignore_merges: bool = False,
        normalizer: dict | None = None,
        pre_tokenizer: Metaspace | None = None,
        decoder: dict | None = None,
        post_processor: dict | None = None,
        added_tokens: Iterable[AddedToken] = (),
        cache_size: int = 1 << 16,
    ) -> None:
        self.unk_token = unk_token
        self.byte_fallback = bool(byte_fallback)
        self.fuse_unk = bool(fuse_unk)
        self.ignore_merges = bool(ignore_merges)
        self.normalizer = TextNormalizer(normalizer)
        self.pre_tokenizer = pre_tokenizer
        self.decoder = TokenDecoder(decoder)
        self.post_processor = PostProcessor(post_processor)
        self.cache_size = int(cache_size)
        self._model_ids: dict[str, int] = {str(t): int(i) for t, i in vocab.items()}
        self._added = list(added_tokens)
        self._merge_pairs = [(str(a), str(b)) for a, b in merges]
        self._build()

    def _build(self) -> None:
        ids = self._model_ids
        size = max(chain(ids.values(), (t.id for t in self._added)), default=-1) + 1
        vocab: list[str | None] = [None] * size
        for t, i in ids.items():
            if not 0 <= i < size or vocab[i] is not None:
                raise TokenizerError(f"vocab id {i} of {t!r} is negative or used twice")
            vocab[i] = t
        for t in self._added:
            if vocab[t.id] is not None and vocab[t.id] != t.content:
                raise TokenizerError(f"added token {t.content!r} has id {t.id}, which already is {vocab[t.id]!r}")
            vocab[t.id] = t.content
        holes = [i for i, t in enumerate(vocab) if t is None]
        if holes:
            raise TokenizerError(f"token ids must be contiguous: no token has id {holes[0]} ({len(holes)} missing)")
        self._vocab = vocab  # type: ignore[assignment]
        self._ids = {t: i for i, t in enumerate(vocab)}
        self._ids.update({t.content: t.id for t in self._added})
        self._specials = {t.content: t.id for t in self._added if t.special}
        # decoding reads a normalized added token as its normalized form (tokenizers >= 0.22)
        self._decode_strings = list(vocab)
        for t in self._added:
            if t.normalized and self.normalizer:
                self._decode_strings[t.id] = self.normalizer(t.content)
        self._byte_ids = [ids.get(f"<0x{b:02X}>") for b in range(256)]
        self._unk_id = ids.get(self.unk_token) if self.unk_token is not None else None
        ranks: dict[tuple[int, int], int] = {}
        merged: dict[int, int] = {}
        for rank, (a, b) in enumerate(self._merge_pairs):
            if a not in ids or b not in ids or a + b not in ids:
                raise TokenizerError(f"merge #{rank} {a!r} + {b!r} uses or makes a token that is not in the vocab")
            ranks[(ids[a], ids[b])] = rank  # a repeated pair keeps its last rank, as in tokenizers
            merged[rank] = ids[a + b]
        self._ranks, self._merged = ranks, merged
        self._reset_caches()

    def add_tokens(self, contents: Iterable[str], special: bool = False) -> list[int]:
        """Add whole strings as tokens matched verbatim (ids from ``vocab_size`` up; a string
        already in the vocabulary keeps its id, as in ``tokenizers``). Returns their ids."""
        known = {t.content: t.id for t in self._added}
        next_id = self.vocab_size
        out: list[int] = []
        for content in contents:
            if not content:
                raise TokenizerError("an added/special token cannot be empty")
            if content not in known:
                idx = self._model_ids.get(content)
                if idx is None:
                    idx, next_id = next_id, next_id + 1
                self._added.append(AddedToken(content, idx, special=special))
                known[content] = idx
            out.append(known[content])
        self._build()
        return out

    # ---- encoding ----------------------------------------------------------------------
    def _segment_word(self, word: str) -> tuple[int, ...]:
        """Characters -> ids (byte fallback, unknowns), then merges (on a cache miss)."""
        ids_of = self._model_ids
        if self.ignore_merges and word in ids_of:
            return (ids_of[word],)
        out: list[int] = []
        unk_pending = False  # an unk not yet emitted (a following unknown may fuse into it)
        for ch in word:
            i = ids_of.get(ch)
            if i is not None:
                if unk_pending:
                    out.append(self._unk())
                    unk_pending = False
                out.append(i)
                continue
            if self.byte_fallback:
                byte_ids = [self._byte_ids[b] for b in ch.encode("utf-8", "surrogatepass")]
                if None not in byte_ids:
                    out += byte_ids  # type: ignore[arg-type]  (before a pending unk, as tokenizers does)
                    continue
            if self.unk_token is not None:
                if unk_pending and not self.fuse_unk:
                    out.append(self._unk())
                unk_pending = True
        if unk_pending:
            out.append(self._unk())
        return apply_merges(out, self._ranks, self._merged)

    def _unk(self) -> int:
        if self._unk_id is None:
            raise TokenizerError(f"unk_token {self.unk_token!r} is not in the vocabulary")
        return self._unk_id

    def _words(self, piece: str, at_start: bool) -> list[str]:
        if self.pre_tokenizer is None:
            return [piece]
        return self.pre_tokenizer.words(piece, at_start)

    def encode(
        self, text: str, allowed_special: str | Iterable[str] = "none", add_special_tokens: bool = False
    ) -> list[int]:
        """Token ids for `text`, equal to ``tokenizers``' ids.

        Special tokens are plain text unless named in `allowed_special` ("all", "none", one
        name or a collection); non-special added tokens always match.
        ``add_special_tokens=True`` applies the post-processor (e.g. ``<s>`` in front).
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects str, got {type(text).__name__}")
        out: list[int] = []
        cache = self._cache
        for piece, idx, at_start in self._splitter(self._allowed(allowed_special)).split(text):
            if idx is not None:
                out.append(idx)
            else:
                for word in self._words(piece, at_start):
                    out += cache[word]
        return self.post_processor.apply(out) if add_special_tokens else out

    def _allowed(self, allowed_special: str | Iterable[str]) -> frozenset:
        return allowed_names(allowed_special, frozenset(self._specials))

    def _splitter(self, allowed: frozenset) -> AddedTokenSplitter:
        if allowed not in self._splitters:
            active = [t for t in self._added if not t.special or t.content in allowed]
            self._splitters[allowed] = AddedTokenSplitter(active, self.normalizer if self.normalizer else None)
        return self._splitters[allowed]

    # ---- decoding ----------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` through the file's decoder chain (``<0x..>`` runs become their bytes)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        specials = set(self._specials.values()) if skip_special_tokens else ()
        for i in ids:
            self.id_to_token(i)  # raises on an id outside the vocabulary
        return self.decoder([self._decode_strings[i] for i in ids if i not in specials])

    # ---- files -------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, data: dict, source: str = "<tokenizer.json>") -> "SentencePieceBPETokenizer":
        """A parsed ``tokenizer.json`` whose model is a character-level (SentencePiece-style) BPE."""
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict):
            raise TokenizerError(f"{source}: corrupt tokenizer.json (no \"model\" object)")
        with hf_json_errors(source):
            for field in ("continuing_subword_prefix", "end_of_word_suffix"):
                if model.get(field):
                    raise TokenizerError(f"BPE {field}={model[field]!r} is not supported")
            if model.get("dropout"):
                raise TokenizerError(f"BPE dropout={model['dropout']!r} is not supported (encoding would be random)")
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
            return cls(
                model["vocab"],
                merges,  # type: ignore[arg-type]
                unk_token=model.get("unk_token"),
                byte_fallback=bool(model.get("byte_fallback", False)),
                fuse_unk=bool(model.get("fuse_unk", False)),
                ignore_merges=bool(model.get("ignore_merges", False)),
                normalizer=data.get("normalizer"),
                pre_tokenizer=_pre_tokenizer_from_hf(data.get("pre_tokenizer")),
                decoder=data.get("decoder"),
                post_processor=data.get("post_processor"),
                added_tokens=added_tokens_from_hf(data),
            )

    def to_hf_dict(self) -> dict:
        """This tokenizer as a ``tokenizer.json`` dict that ``tokenizers`` loads."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added_tokens_to_hf(self._added),
            "normalizer": self.normalizer.to_hf(),
            "pre_tokenizer": self.pre_tokenizer.to_hf() if self.pre_tokenizer is not None else None,
            "post_processor": self.post_processor.to_hf(),
            "decoder": self.decoder.to_hf(),
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": self.unk_token,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": self.fuse_unk,
                "byte_fallback": self.byte_fallback,
                "ignore_merges": self.ignore_merges,
                "vocab": dict(sorted(self._model_ids.items(), key=lambda kv: kv[1])),
                "merges": [list(p) for p in self._merge_pairs],
            },
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``tokenizer.json`` form (atomically); :meth:`load` and ``load_tokenizer`` read it."""
        atomic_write_text(path, json.dumps(self.to_hf_dict(), ensure_ascii=False, indent=2) + "\n")

    save_hf_json = save

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SentencePieceBPETokenizer":
        return cls.from_hf_dict(read_json(path), source=str(path))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (f"SentencePieceBPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merge_pairs)}, "
                f"byte_fallback={self.byte_fallback}, special_tokens={sorted(self._specials)})")


def _pre_tokenizer_from_hf(obj: dict | None) -> Metaspace | None:
    """``None`` or a Metaspace (possibly the only step of a Sequence); others are refused."""
    if obj is None:
        return None
    parts = obj.get("pretokenizers", []) if obj.get("type") == "Sequence" else [obj]
    if len(parts) == 1 and parts[0].get("type") == "Metaspace":
        return Metaspace.from_hf(parts[0])
    if not parts:
        return None
    raise TokenizerError(
        f"pre-tokenizer {[p.get('type') for p in parts]} is not supported for SentencePiece-style BPE "
        "(supported: none, Metaspace)"
    )
