"""Token constraints: which ids may come next, per row, for constrained (structured) decoding.

A `TokenConstraint` follows one generated sequence: the decode core asks it for the ids
allowed at the next step (`allowed_mask`), passes that mask to `select_tokens(allowed=...)`
(so processors and warpers only ever see allowed ids), and tells it the chosen token
(`advance`). That is all `generate` and the serving engine need to know; a JSON schema, a
regex or a grammar is compiled into such a constraint by `structured_output.py`.

A `ConstraintFactory` (a compiled grammar) makes a fresh constraint per row, bound to that
row's EOS ids: the grammar decides *when* the sequence may end, the row's EOS ids say *how*.

Vocabulary padding (output rows no tokenizer id maps to) stays masked: a mask is always
`vocab_size` long and covers only real ids.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from lmkit.errors import ConfigError


@runtime_checkable
class TokenConstraint(Protocol):
    """The state of one constrained sequence."""

    def allowed_mask(self, vocab_size: int) -> torch.Tensor:
        """bool [vocab_size]: True for the ids that may come next (at least one)."""

    def advance(self, token: int) -> None:
        """The sequence's next token (one the last mask allowed)."""

    @property
    def is_finished(self) -> bool:
        """Whether nothing but an end of sequence may follow."""


@runtime_checkable
class ConstraintFactory(Protocol):
    """Makes the constraint of one row (a compiled grammar)."""

    def constraint(self, eos_ids: Sequence[int]) -> TokenConstraint: ...


ConstraintArg = TokenConstraint | ConstraintFactory | Sequence["TokenConstraint | ConstraintFactory | None"] | None


def row_constraints(constraint: ConstraintArg, batch: int, eos_ids: Sequence[int]) -> list[TokenConstraint | None]:
    """`generate(constraint=...)` -> one constraint (or None) per row.

    A single constraint serves a batch of one; a factory makes one per row; a list gives
    each row its own (None: that row is free).
    """
    if constraint is None:
        return [None] * batch
    if isinstance(constraint, (list, tuple)):
        if len(constraint) != batch:
            raise ConfigError(f"constraint: got {len(constraint)} constraints for {batch} prompts")
        return [_one(c, eos_ids) for c in constraint]
    if isinstance(constraint, TokenConstraint) and not isinstance(constraint, ConstraintFactory) and batch > 1:
        raise ConfigError("one TokenConstraint follows one sequence: pass a list (one per prompt) or a factory "
                          "(a compiled grammar) for a batch")
    return [_one(constraint, eos_ids) for _ in range(batch)]


def _one(c, eos_ids: Sequence[int]) -> TokenConstraint | None:
    if c is None:
        return None
    if isinstance(c, ConstraintFactory):
        return c.constraint(eos_ids)
    if isinstance(c, TokenConstraint):
        return c
    raise ConfigError(f"constraint must be a TokenConstraint or a compiled grammar, got {type(c).__name__}")


def allowed_rows(constraints: Sequence[TokenConstraint | None], vocab_size: int,
                 device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The [B, vocab_size] allowed mask of a batch (free rows allow everything), or None when no row is constrained."""
    if all(c is None for c in constraints):
        return None
    out = torch.ones(len(constraints), vocab_size, dtype=torch.bool)
    for i, c in enumerate(constraints):
        if c is not None:
            out[i] = c.allowed_mask(vocab_size)
    return out.to(device)
