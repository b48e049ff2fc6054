"""Adversarial training on the input embeddings: FGM/FGSM, PGD and FreeLB.

Text is discrete, so the perturbation r is added to the output of the token-embedding table
(Miyato et al. 2017), never to the ids; a forward hook adds it, so no model needs an
`inputs_embeds` argument. With g = ∂L/∂e on the clean micro-batch:

  fgm     r = ε · g / ‖g‖₂ (per example)              loss = L(e) + L(e + r)
  fgsm    r = ε · sign(g)  (Goodfellow et al. 2015)    loss = L(e) + L(e + r)
  pgd     K ascent steps r ← Π_ε(r + α · g_r / ‖g_r‖₂) (Madry et al. 2018), starting from 0;
          loss = L(e) + L(e + r_K). Only the last step reaches the parameters.
  freelb  K steps from a small random r₀ (Zhu et al. 2020); every step's L(e + r_k) / K is
          backpropagated into the parameters ("free" accumulation), and r is moved by the
          same backward pass; no separate clean loss.

Π_ε projects each example's perturbation back onto the L2 ball of radius ε. Padding
positions (attention_mask 0) are never perturbed. The cost is one extra forward/backward
per step (fgm, fgsm), K + 1 (pgd) or K (freelb), against one for plain training.

`embedding_pgd` is the same ascent used as an attack (eval/adversarial_attack.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from lmkit.models.module_tree import token_embedding

METHODS = ("none", "fgm", "fgsm", "pgd", "freelb", "substitution")  # substitution: train/substitution_adversary.py
EMBEDDING_METHODS = ("fgm", "fgsm", "pgd", "freelb")


def l2_normalize(g: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖₂ per example (over every dimension but the first); 0 stays 0."""
    norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def project_l2(r: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """r scaled back onto the L2 ball of radius ε (a number, or one per example [B, 1, 1])."""
    norm = r.flatten(1).norm(dim=1).clamp(min=1e-12)
    if isinstance(epsilon, torch.Tensor):
        epsilon = epsilon.reshape(-1)
    scale = (epsilon / norm).clamp(max=1.0)
    return r * scale.view(-1, *([1] * (r.dim() - 1)))


class EmbeddingPerturbation:
    """Adds a perturbation to a model's token embeddings while active.

    `delta` is created on the first forward (zeros, requires_grad) when `track` is set, so the
    clean pass yields ∂L/∂e in ``delta.grad`` without changing the numerics (e + 0 = e)."""

    def __init__(self, model: nn.Module) -> None:
        self.table = token_embedding(model)
        self.delta: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None  # [B, T] 1 = real token
        self.init: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _hook(self, module, args, out):
        if self.delta is None:
            start = torch.zeros_like(out) if self.init is None else self.init(out.detach())
            self.delta = start.detach().requires_grad_(True)
        d = self.delta if self.mask is None else self.delta * self.mask[..., None].to(self.delta.dtype)
        return out + d.to(out.dtype)

    @contextlib.contextmanager
    def active(self, delta: torch.Tensor | None = None, init: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Within: every forward adds `delta`; when None, a fresh one with a gradient, made by
        init(embeddings) on the first forward (zeros without init)."""
        self.delta, self.init = delta, init
        handle = self.table.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()


class EmbeddingAdversary:
    """One micro-batch of adversarial training: runs the forward passes and backward passes
    for `method` and returns (clean loss, adversarial loss), both detached."""

    def __init__(self, model: nn.Module, method: str, epsilon: float = 1.0, alpha: float = 0.3,
                 steps: int = 3) -> None:
        if method not in EMBEDDING_METHODS:
            raise ValueError(f"adversarial method {method!r}: choose from {EMBEDDING_METHODS}")
        self.perturb = EmbeddingPerturbation(model)
        self.method, self.epsilon, self.alpha, self.steps = method, epsilon, alpha, steps

    def step(self, loss_fn: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None],
             weight: float = 1.0, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """loss_fn(): the micro-batch's loss (forward pass, under autocast if wanted);
        backward(loss): backpropagate (through a grad scaler if there is one);
        weight: the micro-batch's share of the step (gradient accumulation)."""
        self.perturb.mask = mask
        if self.method == "freelb":
            return self._freelb(loss_fn, backward, weight)
        with self.perturb.active() as p:
            clean = loss_fn()
            backward(clean * weight)
            delta = p.delta
        g = delta.grad.detach() if delta is not None and delta.grad is not None else None
        if g is None:  # nothing reached the embeddings (frozen, or no tokens)
            return clean.detach(), clean.detach()
        if self.method == "fgm":
            r = self.epsilon * l2_normalize(g)
        elif self.method == "fgsm":
            r = self.epsilon * g.sign()
        else:
            r = torch.zeros_like(g)
            for _ in range(self.steps - 1):  # ascent on r only; the parameters get the last step
                r = project_l2(r + self.alpha * l2_normalize(g), self.epsilon).detach().requires_grad_(True)
                with self.perturb.active(r):
                    (g,) = torch.autograd.grad(loss_fn(), r)
            r = project_l2(r.detach() + self.alpha * l2_normalize(g), self.epsilon)
        with self.perturb.active(r.detach()):
            adv = loss_fn()
            backward(adv * weight)
        return clean.detach(), adv.detach()

    def _freelb(self, loss_fn, backward, weight):
        eps, alpha = self.epsilon, self.alpha
        start = lambda e: project_l2(torch.empty_like(e).uniform_(-1.0, 1.0) * alpha, eps)  # noqa: E731
        r, losses = None, []
        for k in range(self.steps):
            with self.perturb.active(r, init=start) as p:
                loss = loss_fn()
                backward(loss * (weight / self.steps))
                r = p.delta
            losses.append(loss.detach())
            if r.grad is None:
                break
            if k < self.steps - 1:
                r = project_l2(r.detach() + alpha * l2_normalize(r.grad), eps).requires_grad_(True)
        return losses[0], torch.stack(losses).mean()


def embedding_pgd(loss_fn: Callable[[], torch.Tensor], perturb: EmbeddingPerturbation,
                  epsilon: float | torch.Tensor, alpha: float | torch.Tensor, steps: int) -> torch.Tensor:
    """The PGD attack: `steps` L2 ascent steps on the embedding perturbation (from 0, no
    parameter gradients); returns the final perturbation r, ‖r‖₂ ≤ ε per example.
    loss_fn must return one loss per example [B] (or their sum) to ascend; ε and α may be
    tensors [B, 1, 1] (one radius per example)."""
    r = None
    for _ in range(steps):
        with perturb.active(None if r is None else r.requires_grad_(True)) as p:
            loss = loss_fn().sum()
            delta = p.delta
            (g,) = torch.autograd.grad(loss, delta)
        r = project_l2(delta.detach() + alpha * l2_normalize(g), epsilon)
    return r
