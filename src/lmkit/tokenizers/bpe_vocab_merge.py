"""Vocabulary expansion (词表扩增) by merging a domain tokenizer into an existing byte-level BPE.

The recipe of Chinese-LLaMA: train a BPE on the domain text alone (here with the base
tokenizer's pre-tokenizer and normaliser, so its pieces are pieces the base would also
see), then walk the domain tokenizer's merges in rank order and append, after every merge
of the base, those whose piece is not yet a token, until `n_new_tokens` were added.

Why appending keeps old texts intact. BPE applies the lowest-ranked merge present in a
word; appended merges rank after every old merge, so they fire only once no old merge
applies, and they only ever create new ids, which no old merge can use. So for *any* text,
the expanded tokenizer's ids are the base tokenizer's ids with some runs of adjacent
tokens fused into new tokens: expanding every new id back into its old-token leaves
(`old_token_leaves`) gives exactly the base encoding. Old ids keep their bytes; a text in
which no appended merge fires (e.g. ASCII text when only non-ASCII pieces were kept)
encodes to the very same ids. Both are property-tested.

Reachability. A domain merge is kept only if the *expanded* tokenizer splits its piece
into exactly the two halves it merges; a piece the base's own merges would split another
way could never be produced by one appended merge, so it is skipped (counted in
``skipped``). `BPETokenizer.extend` is the other recipe: it continues BPE training on the
domain text from the base's merges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

from lmkit.errors import TokenizerError
from lmkit.tokenizers.bpe import BPETokenizer, count_pretokens, learn_merges
from lmkit.tokenizers.bpe_merge import apply_merges


def non_ascii(piece: bytes) -> bool:
    """Keep-filter: only pieces with a non-ASCII byte, so ASCII text keeps its exact ids."""
    return any(b >= 0x80 for b in piece)


@dataclass
class VocabExpansion:
    """The expanded tokenizer and what was added: ``leaves[new_id]`` are the old ids whose
    concatenation is the new token (the embedding of a new row starts as their mean)."""

    tokenizer: BPETokenizer
    base_vocab_size: int
    new_ids: list[int] = field(default_factory=list)
    leaves: dict[int, list[int]] = field(default_factory=dict)
    skipped: int = 0  # domain pieces that one appended merge could not produce

    def new_pieces(self) -> list[str]:
        """The added tokens as text (invalid UTF-8 shown with U+FFFD)."""
        return [self.tokenizer.token_bytes(i).decode("utf-8", "replace") for i in self.new_ids]


def train_domain_bpe(base: BPETokenizer, texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
                     vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """A byte-level BPE trained on the domain text only, with `base`'s pre-tokenizer and normaliser."""
    if vocab_size <= 256:
        raise TokenizerError(f"the domain tokenizer needs vocab_size > 256 (the bytes), got {vocab_size}")
    specials = [t.content for t in base.added_tokens]
    counts = count_pretokens(texts_or_files, base, specials)
    if not counts:
        raise TokenizerError("cannot train a domain tokenizer on an empty corpus: no text was found")
    tokens, merges = learn_merges(counts, vocab_size - 256, min_frequency)
    return BPETokenizer(tokens, merges, pre_tokenizer=base.pre_tokenizer, normalizer=base.normalizer)


def merge_vocabularies(base: BPETokenizer, domain: BPETokenizer, n_new_tokens: int,
                       keep: Callable[[bytes], bool] | None = None) -> VocabExpansion:
    """Append up to `n_new_tokens` of `domain`'s pieces (its merge order) to `base`, new ids
    from ``base.vocab_size`` up. `keep(piece_bytes)` may veto pieces (see `non_ascii`)."""
    if base._merge_list is None:
        raise TokenizerError("merging vocabularies needs a merge list; this tokenizer uses tiktoken-style ranks only")
    if n_new_tokens < 0:
        raise TokenizerError(f"n_new_tokens must be >= 0, got {n_new_tokens}")
    tokens = dict(base._tokens)
    by_bytes = {b: i for i, b in tokens.items()}
    ranks = dict(base._ranks)
    merged = dict(base._merged)
    merge_list = list(base._merge_list)
    byte_ids = base._byte_ids
    next_id = base.vocab_size
    out = VocabExpansion(base, base.vocab_size)
    for a, b in domain.merge_ids():
        if len(out.new_ids) >= n_new_tokens:
            break
        piece = domain.token_bytes(a) + domain.token_bytes(b)
        if piece in by_bytes or (keep is not None and not keep(piece)):
            continue
        ids = [byte_ids[x] for x in piece]
        if None in ids:
            out.skipped += 1
            continue
        parts = apply_merges(ids, ranks, merged)
        if len(parts) != 2:
            out.skipped += 1
            continue
        left, right = parts
        z = next_id
        next_id += 1
        tokens[z] = piece
        by_bytes[piece] = z
        ranks[(left, right)] = len(merge_list)
        merged[len(merge_list)] = z
        merge_list.append((left, right))
        out.new_ids.append(z)
        out.leaves[z] = out.leaves.get(left, [left]) + out.leaves.get(right, [right])
    out.tokenizer = BPETokenizer(tokens, merge_list, pre_tokenizer=base.pre_tokenizer, normalizer=base.normalizer,
                                 added_tokens=base.added_tokens, ignore_merges=base.ignore_merges,
                                 post_processor=base.post_processor.to_hf(), cache_size=base.cache_size)
    return out


def expand_bpe(base: BPETokenizer, texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
               n_new_tokens: int, domain_vocab_size: int | None = None, min_frequency: int = 2,
               keep: Callable[[bytes], bool] | None = None) -> VocabExpansion:
    """Train a domain BPE on `texts_or_files` and merge `n_new_tokens` of its pieces into `base`.
    The domain tokenizer learns ``2 * n_new_tokens`` pieces by default (some are already in
    `base` or are skipped)."""
    size = domain_vocab_size or 256 + 2 * max(n_new_tokens, 1)
    domain = train_domain_bpe(base, texts_or_files, size, min_frequency)
    return merge_vocabularies(base, domain, n_new_tokens, keep)


def old_token_leaves(expansion: VocabExpansion, ids: Iterable[int]) -> list[int]:
    """`ids` with every new id replaced by its old-token leaves (= the base tokenizer's ids)."""
    out: list[int] = []
    for i in ids:
        out.extend(expansion.leaves.get(i, (i,)))
    return out
