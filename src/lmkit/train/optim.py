"""Optimizers written out: SGD, SGD with momentum, AdamW — and weight-decay parameter groups.

SGD            p <- p - lr * (g + wd * p)
Momentum       v <- mu * v + g;   p <- p - lr * v        (heavy ball, PyTorch's convention;
               Nesterov: p <- p - lr * (g + mu * v))      weight decay is added to g, "L2")
AdamW          m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
(Loshchilov &  m_hat = m / (1 - b1^t);   v_hat = v / (1 - b2^t)
 Hutter 2019)  p <- p - lr * wd * p - lr * m_hat / (sqrt(v_hat) + eps)

AdamW *decouples* weight decay from the gradient: with Adam + L2 the decay term would be
divided by sqrt(v_hat) and so shrink large-gradient weights less, which is not what decay
is meant to do. Adam keeps two fp32 moments per parameter (8 bytes) — the reason training
needs ~16 bytes/parameter before activations (see train/memory.py).

Which parameters decay: weight matrices only. Biases and norm gains (1-D tensors) are not
decayed — pulling a norm's gain towards 0 fights the normalisation and a bias has no
"complexity" to regularise. Embedding tables are excluded by default (their rows for rare
tokens are updated rarely, so decay would erode them between updates); `decay_embeddings`
includes them.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from lmkit.errors import ConfigError


def param_groups(
    model: nn.Module, weight_decay: float, decay_embeddings: bool = False
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group (empty groups dropped)."""
    embedding_params = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            embedding_params.add(id(module.weight))
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters de-duplicates tied weights
        if not p.requires_grad:
            continue
        is_embedding = id(p) in embedding_params
        if p.ndim < 2 or (is_embedding and not decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
    return groups


class SGD(torch.optim.Optimizer):
    """Plain SGD (momentum=0) or SGD with heavy-ball / Nesterov momentum."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if lr <= 0:
            raise ConfigError(f"SGD lr={lr!r}: must be > 0")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"SGD momentum={momentum!r}: must be in [0, 1)")
        if nesterov and momentum == 0:
            raise ConfigError("SGD nesterov=True needs momentum > 0")
        super().__init__(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                if mu:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:  # first step: v = g (as PyTorch, no (1 - dampening) factor)
                        buf = state["momentum_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(mu).add_(g)
                    g = g.add(buf, alpha=mu) if group["nesterov"] else buf
                p.add_(g, alpha=-lr)
        return loss


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay; moments kept in the parameter's dtype (fp32 master)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ConfigError(f"AdamW lr={lr!r}: must be > 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"AdamW betas={betas!r}: must be in [0, 1)")
        if eps <= 0:
            raise ConfigError(f"AdamW eps={eps!r}: must be > 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise ConfigError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if wd:
                    p.mul_(1.0 - lr * wd)
                m.lerp_(g, 1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                step_size = lr / (1.0 - b1**t)
                denom = (v.sqrt() / math.sqrt(1.0 - b2**t)).add_(eps)
                p.addcdiv_(m, denom, value=-step_size)
        return loss


def _fused_ok(groups: list[dict]) -> bool:
    """torch's fused AdamW kernel takes plain CPU/CUDA tensors (not DTensors, not meta)."""
    params = [p for g in groups for p in g["params"]]
    return all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params) and len(
        {p.device for p in params}
    ) == 1


def build_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    """The optimizer named by `config.optimizer` (a TrainConfig) over weight-decay groups.

    The training loop's hot path has no per-parameter Python loop: "adamw" is torch's fused
    AdamW kernel (one C++/CUDA kernel updates all of a tensor's m, v and p in one pass),
    or its multi-tensor (foreach) form where the fused kernel does not apply (DTensors under
    FSDP); "sgd"/"momentum" are torch's foreach SGD. They compute the same update as the
    written-out classes above (the tests check this), whose loops stay as the reference.
    """
    groups = param_groups(model, config.weight_decay, config.decay_embeddings)
    if config.optimizer == "adamw":
        kernel = {"fused": True} if _fused_ok(groups) else {"foreach": True}
        return torch.optim.AdamW(
            groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay, **kernel
        )
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    if config.optimizer == "momentum":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
            nesterov=config.nesterov, foreach=True,
        )
    raise ConfigError(f"unknown optimizer {config.optimizer!r}")
