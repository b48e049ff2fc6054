"""Substitution-aware adversarial training: PGD inside the convex hull of each word's substitutes.

An L2 ball around the embeddings (train/adversarial.py) is the wrong threat model for a word
substitution attack: the substitute's embedding can lie far outside any small ball, and most of
the ball is no word at all. Measured in bench/bench_adversarial.py, embedding PGD training buys
nothing against greedy substitution. This method trains on the threat model itself (ASCC, Dong
et al. 2021): every position t whose word w has substitutes S(w) gets the embedding

  ê_t = Σ_j p_tj · E[c_j],   c = (w, S(w)),   p_t = softmax(z_t) over the valid c_j,

a point of the convex hull of the word and its substitutes. Every discrete substitution (any
subset of positions swapped to any of their substitutes) is a vertex of that product of hulls,
so a model that is right everywhere in the hulls is right under every substitution. Training:

  z ← 0 (the hull's centre); K steps z_t ← z_t + α · ∂L/∂z_t / ‖∂L/∂z_t‖₂ (no parameter
  gradients); loss = L(e) + L(ê(z_K)), the second one backpropagated into the parameters,
  the substitutes' embeddings included.

Cost: K + 2 forward/backward passes per micro-batch (the K ascent passes need no parameter
gradients). `positions` < 1 moves only that share of the eligible positions (a random choice
per step), nearer a budgeted attacker that changes a few words. The substitution sets are
token ids, the same ones the attack uses (a dictionary, or embedding / co-occurrence
neighbours); words without substitutes, padding and `protected` ids stay as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.module_tree import token_embedding


def substitution_table(candidates: Mapping[int, Sequence[int]] | torch.Tensor, vocab_size: int,
                       protected: Sequence[int] = ()) -> torch.Tensor:
    """[V, 1 + k] long: column 0 the word itself, then its substitutes, −1 where there are none.
    `candidates` is {id: [ids]} or a [V', k] tensor (e.g. eval/adversarial_attack.py's
    `embedding_neighbours`); ids ≥ vocab_size and `protected` ids are dropped on both sides."""
    protected = set(int(p) for p in protected)
    if isinstance(candidates, torch.Tensor):
        rows = {i: candidates[i].tolist() for i in range(min(candidates.shape[0], vocab_size))}
    else:
        rows = {int(k): [int(c) for c in v] for k, v in candidates.items()}
    keep = {i: [c for c in dict.fromkeys(cs) if 0 <= c < vocab_size and c != i and c not in protected]
            for i, cs in rows.items() if 0 <= i < vocab_size and i not in protected}
    width = max((len(v) for v in keep.values()), default=0)
    table = torch.full((vocab_size, 1 + width), -1, dtype=torch.long)
    table[:, 0] = torch.arange(vocab_size)
    for i, cs in keep.items():
        if cs:
            table[i, 1:1 + len(cs)] = torch.tensor(cs)
    return table


class SubstitutionAdversary:
    """One micro-batch of convex-hull (substitution-aware) adversarial training; same calling
    convention as train/adversarial.py's EmbeddingAdversary. Returns (clean loss, hull loss)."""

    def __init__(self, model: nn.Module, candidates: Mapping[int, Sequence[int]] | torch.Tensor,
                 alpha: float = 1.0, steps: int = 3, positions: float = 1.0, protected: Sequence[int] = ()) -> None:
        self.table = token_embedding(model)
        if not isinstance(self.table, nn.Embedding) or type(self.table).forward is not nn.Embedding.forward:
            raise ConfigError("substitution adversarial training needs a plain nn.Embedding token table")
        if not 0.0 < positions <= 1.0:
            raise ConfigError(f"substitution adversarial training: positions={positions} must be in (0, 1]")
        self.sets = substitution_table(candidates, self.table.num_embeddings, protected).to(self.table.weight.device)
        if self.sets.shape[1] < 2:
            raise ConfigError("substitution adversarial training: no word has a substitute")
        self.alpha, self.steps, self.positions = alpha, steps, positions
        self.z: torch.Tensor | None = None  # [B, T, 1 + k] hull logits of the current micro-batch
        self.mask: torch.Tensor | None = None
        self._eligible: torch.Tensor | None = None

    def _hook(self, module, args, out):
        ids = args[0]
        sets = self.sets[ids]  # [B, T, 1 + k]
        valid = sets >= 0
        if self._eligible is None:
            eligible = valid[..., 1:].any(-1)
            if self.mask is not None:
                eligible = eligible & self.mask.bool()
            if self.positions < 1.0:
                eligible = eligible & (torch.rand(eligible.shape, device=eligible.device) < self.positions)
            self._eligible = eligible
        if self.z is None:
            self.z = torch.zeros(sets.shape, device=out.device, dtype=torch.float32, requires_grad=True)
        p = self.z.masked_fill(~valid, float("-inf")).softmax(-1)
        hull = (p[..., None] * F.embedding(sets.clamp(min=0), module.weight).float()).sum(-2)
        return torch.where(self._eligible[..., None], hull.to(out.dtype), out)

    @contextlib.contextmanager
    def _active(self, z: torch.Tensor | None):
        self.z = z
        handle = self.table.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def step(self, loss_fn: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None],
             weight: float = 1.0, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.mask, self._eligible = mask, None
        clean = loss_fn()
        backward(clean * weight)
        z = None
        for _ in range(self.steps):  # ascent on the hull weights only
            with self._active(z):
                loss = loss_fn()
                z = self.z
                (g,) = torch.autograd.grad(loss, z)
            g = g / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            z = (z.detach() + self.alpha * g).requires_grad_(True)
        with self._active(z.detach() if z is not None else None):
            adv = loss_fn()
            backward(adv * weight)
        return clean.detach(), adv.detach()
