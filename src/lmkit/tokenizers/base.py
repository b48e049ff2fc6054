"""The interface every lmkit tokenizer implements.

Ids are ints in ``[0, vocab_size)``. Special tokens (``<|endoftext|>``, ``[CLS]`` …) are
ordinary vocabulary entries that ``encode`` recognises verbatim only when asked to
(``allowed_special``), so user text can never smuggle in a control token.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Iterable, Sequence

from lmkit.errors import TokenizerError


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses: one file per algorithm (bpe.py, unigram.py, ...)."""

    #: special token text -> id
    special_tokens: dict[str, int]

    @abstractmethod
    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        """Token ids for `text`. ``allowed_special="all"`` lets special tokens through."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids`; invalid byte sequences are replaced, never raised."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def id_to_token(self, idx: int) -> str: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write lmkit's own JSON format (atomically)."""

    def encode_batch(self, texts: Sequence[str], num_workers: int = 0, **kw) -> list[list[int]]:
        """Encode many texts; ``num_workers > 1`` spreads them over processes."""
        if num_workers <= 1 or len(texts) < 2:
            return [self.encode(t, **kw) for t in texts]
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        with ProcessPoolExecutor(num_workers) as pool:
            chunk = max(1, len(texts) // (num_workers * 4))
            return list(pool.map(partial(_encode_one, self, **kw), texts, chunksize=chunk))

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def __len__(self) -> int:
        return self.vocab_size


class ListVocabTokenizer(Tokenizer):
    """A tokenizer whose vocabulary is a list of token strings in id order: subclasses set
    ``self._vocab`` (id -> token), ``self._ids`` (token -> id) and ``self._specials``
    (special token -> id); the lookups of the interface come from here."""

    _vocab: list[str]
    _ids: dict[str, int]
    _specials: dict[str, int]

    @property
    def special_tokens(self) -> dict[str, int]:  # type: ignore[override]
        return dict(self._specials)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def id_to_token(self, idx: int) -> str:
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(self._vocab):
            raise TokenizerError(f"token id {idx!r} is not in this vocabulary (size {len(self._vocab)})")
        return self._vocab[idx]

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)


def _encode_one(tok: Tokenizer, text: str, **kw) -> list[int]:
    return tok.encode(text, **kw)
