"""Attacks on a text classifier, to measure robustness (and what adversarial training buys).

embedding PGD      white-box: K steps of L2 gradient ascent on a perturbation of the token
                   embeddings, ‖r‖₂ ≤ ε per example (train/adversarial.py's `embedding_pgd`).
                   An upper bound on what a continuous attacker can do; no real text exists
                   for most perturbed points.
word substitution  discrete and greedy (in the spirit of Alzantot et al. 2018 / TextFooler,
                   without their language-model filters): rank positions by gradient × input
                   saliency; at each, in order, try every candidate word at once (one batch)
                   and keep the one that most lowers the true class's probability; stop when
                   the prediction flips or `max_changes` words were changed. Candidates come
                   from a dictionary {id: [ids]} (e.g. data/synonyms.py mapped to ids) or the k
                   nearest neighbours of each word in an embedding table (cosine).

Both work on any model called as ``model(input_ids, attention_mask=...)`` that returns
``logits`` [B, C] (e.g. peft/probing.py's SequenceClassifier on an EncoderLM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.train.adversarial import EmbeddingPerturbation, embedding_pgd


def _logits(model, input_ids, attention_mask) -> torch.Tensor:
    return model(input_ids, attention_mask=attention_mask).logits.float()


@dataclass
class AttackResult:
    clean_correct: torch.Tensor  # [B] bool
    attacked_correct: torch.Tensor  # [B] bool
    changes: torch.Tensor | None = None  # [B] words changed (substitution attack)
    adversarial_ids: torch.Tensor | None = None

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def attacked_accuracy(self) -> float:
        return float(self.attacked_correct.float().mean())


def pgd_attack(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
               attention_mask: torch.Tensor | None = None, epsilon: float = 1.0, alpha: float | None = None,
               steps: int = 10, relative: bool = False) -> AttackResult:
    """Embedding-space PGD (L2 ball ε, step α = 2.5 ε / steps by default); no parameter changes.

    relative: ε (and α) are fractions of each example's own embedding norm ‖e‖₂ (real tokens
    only). An absolute ε can be escaped by a model that grows its embeddings before a
    normalisation layer, which adversarial training tends to do; a relative ε cannot."""
    was_training = model.training
    model.eval()
    perturb = EmbeddingPerturbation(model)
    perturb.mask = attention_mask
    alpha = 2.5 * epsilon / steps if alpha is None else alpha
    try:
        with torch.no_grad():
            clean = _logits(model, input_ids, attention_mask).argmax(-1) == labels
            if relative:
                from lmkit.models.module_tree import token_embedding

                e = token_embedding(model)(input_ids).float()
                if attention_mask is not None:
                    e = e * attention_mask[..., None]
                scale = e.flatten(1).norm(dim=1).view(-1, 1, 1)
                epsilon, alpha = epsilon * scale, alpha * scale

        def loss_fn():
            return F.cross_entropy(_logits(model, input_ids, attention_mask), labels, reduction="none")

        r = embedding_pgd(loss_fn, perturb, epsilon, alpha, steps)
        with torch.no_grad(), perturb.active(r):
            attacked = _logits(model, input_ids, attention_mask).argmax(-1) == labels
    finally:
        model.train(was_training)
    return AttackResult(clean, attacked & clean)


def embedding_neighbours(weight: torch.Tensor, k: int = 8, exclude: Sequence[int] = ()) -> torch.Tensor:
    """[V, k] ids of each row's k nearest rows by cosine similarity (itself and `exclude` left out)."""
    w = F.normalize(weight.detach().float(), dim=-1)
    sim = w @ w.T
    sim.fill_diagonal_(-2.0)
    if exclude:
        sim[:, list(exclude)] = -2.0
    return sim.topk(k, dim=-1).indices


def _candidates_of(candidates, token: int) -> list[int]:
    if isinstance(candidates, torch.Tensor):
        return candidates[token].tolist() if token < candidates.shape[0] else []
    return list(candidates.get(token, ()))


def word_substitution_attack(
    model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
    candidates: Mapping[int, Sequence[int]] | torch.Tensor, attention_mask: torch.Tensor | None = None, max_changes: int = 2, protected: Sequence[int] = (),
) -> AttackResult:
    """Greedy word substitution, one example at a time; at most `max_changes` words per example."""
    from lmkit.models.module_tree import token_embedding

    was_training = model.training
    model.eval()
    table = token_embedding(model)
    protected = set(protected)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    adv_ids, attacked, changes = input_ids.clone(), [], []
    try:
        with torch.no_grad():
            clean = _logits(model, input_ids, mask).argmax(-1) == labels
        for b in range(input_ids.shape[0]):
            ids, m, y = input_ids[b:b + 1].clone(), mask[b:b + 1], labels[b:b + 1]
            if not clean[b]:
                attacked.append(False), changes.append(0)
                continue
            order = _saliency_order(model, table, ids, m, y)
            n_changed, correct = 0, True
            for pos in order:
                token = int(ids[0, pos])
                if not m[0, pos] or token in protected:
                    continue
                cands = [c for c in _candidates_of(candidates, token) if c not in protected]
                if not cands:
                    continue
                trial = ids.repeat(len(cands) + 1, 1)
                trial[1:, pos] = torch.tensor(cands)
                with torch.no_grad():
                    probs = _logits(model, trial, m.expand(len(trial), -1)).softmax(-1)
                best = int(probs[:, y[0]].argmin())
                if best == 0:  # no candidate lowers the true class: leave this word
                    continue
                ids, n_changed = trial[best:best + 1], n_changed + 1
                if int(probs[best].argmax()) != int(y[0]):
                    correct = False
                    break
                if n_changed >= max_changes:
                    break
            adv_ids[b] = ids[0]
            attacked.append(correct), changes.append(n_changed)
    finally:
        model.train(was_training)
    return AttackResult(clean, torch.tensor(attacked), torch.tensor(changes), adv_ids)


def _saliency_order(model, table, ids, mask, y) -> list[int]:
    """Positions by |gradient × input| of the true-class loss, most salient first."""
    perturb = EmbeddingPerturbation(model)
    with perturb.active() as p:
        loss = F.cross_entropy(_logits(model, ids, mask), y)
        (g,) = torch.autograd.grad(loss, p.delta)
    with torch.no_grad():
        score = (g[0] * table(ids)[0]).sum(-1).abs()
    return score.argsort(descending=True).tolist()
