"""Token saliency: how much each input token's embedding moves one output of the model.

gradient × input   a_i = <e_i, ∂f/∂e_i>  — one backward pass; a first-order estimate.
integrated grads   a_i = <e_i - b_i, ∫_0^1 ∂f/∂e(b + α(e - b)) dα>  (Sundararajan et al. 2017),
                   the integral by a Riemann sum (left/right/middle) or the trapezoid rule over
                   `steps` intervals. Completeness: Σ_i a_i = f(e) - f(b), up to the
                   quadrature error, which `IGResult.delta` reports.

e is the output of the token-embedding table (`embed_tokens`); position embeddings, Gemma's
embedding scale etc. are applied after it, so they are part of f. The embeddings are swapped
in with a forward hook on that table: the model needs no `inputs_embeds` argument.
Baseline b: "pad" (default: every position holds the embedding of `pad_id`, default the
config's pad_token_id or 0), "zeros", or a tensor [T, d]. Zeros is the textbook choice but
is a bad one for RMSNorm models without absolute positions (Llama): the residual stream of
α·e is scale-free for every α > 0 and exactly 0 at α = 0, so f jumps at the baseline and no
quadrature can reach completeness (measured: 10 % gap at 32 steps, vs 0.03 % from "pad").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmkit.models.module_tree import token_embedding

Target = Callable[[object], torch.Tensor]  # model output -> [B] scalars


def token_logit_fn(position: int = -1, token_id: int | None = None) -> Target:
    """The logit of `token_id` (default: the model's top token on the real input) at `position`.

    The default token is fixed on the first call (the real input comes first), so every
    interpolation step differentiates the same logit."""
    chosen: list[int] = [] if token_id is None else [token_id]

    def target(out) -> torch.Tensor:
        logits = out.logits[:, position].float()
        if not chosen:
            chosen.append(int(logits[0].argmax()))
        return logits[:, chosen[0]]

    target.chosen = chosen  # type: ignore[attr-defined]
    return target


def _forward_with_embeddings(model, input_ids, embeds, target, attention_mask, **kwargs) -> torch.Tensor:
    """target(model(input_ids)) with the token embeddings replaced by `embeds` [B, T, d]."""
    hook = token_embedding(model).register_forward_hook(lambda m, args, out: embeds.to(out.dtype))
    try:
        mask = None if attention_mask is None else attention_mask.expand(embeds.shape[0], -1)
        out = model(input_ids.expand(embeds.shape[0], -1), attention_mask=mask, **kwargs)
    finally:
        hook.remove()
    values = target(out)
    if values.shape != (embeds.shape[0],):
        raise ValueError(f"the saliency target must give one scalar per row, got shape {tuple(values.shape)}")
    return values


def _prepare(model, input_ids):
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise ValueError(f"saliency explains one sequence; got a batch of {input_ids.shape[0]}")
    with torch.no_grad():
        embeds = token_embedding(model)(input_ids)[0].float()  # [T, d]
    return input_ids, embeds


def gradient_x_input(
    model: nn.Module, input_ids: torch.Tensor, target: Target | None = None,
    attention_mask: torch.Tensor | None = None, **kwargs,
) -> torch.Tensor:
    """Per-token gradient × input [T] for one sequence (dropout off, parameters untouched)."""
    input_ids, embeds = _prepare(model, input_ids)
    target = target or token_logit_fn()
    was_training = model.training
    model.eval()
    try:
        e = embeds[None].clone().requires_grad_(True)
        value = _forward_with_embeddings(model, input_ids, e, target, attention_mask, **kwargs)
        (grad,) = torch.autograd.grad(value.sum(), e)
    finally:
        model.train(was_training)
    return (grad[0] * embeds).sum(-1)


@dataclass
class IGResult:
    attributions: torch.Tensor  # [T] per token (summed over the embedding dimensions)
    per_dim: torch.Tensor  # [T, d]
    f_input: float
    f_baseline: float

    @property
    def delta(self) -> float:
        """Completeness gap: Σ attributions − (f(input) − f(baseline))."""
        return float(self.attributions.sum()) - (self.f_input - self.f_baseline)


RULES = ("trapezoid", "left", "right", "middle")


def _alphas_and_weights(steps: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    if rule == "trapezoid":
        alphas = torch.linspace(0.0, 1.0, steps + 1)
        w = torch.full((steps + 1,), 1.0 / steps)
        w[0] = w[-1] = 0.5 / steps
        return alphas, w
    grid = torch.arange(steps, dtype=torch.float32)
    offset = {"left": 0.0, "right": 1.0, "middle": 0.5}[rule]
    return (grid + offset) / steps, torch.full((steps,), 1.0 / steps)


def integrated_gradients(
    model: nn.Module, input_ids: torch.Tensor, target: Target | None = None, *,
    baseline: str | torch.Tensor = "pad", pad_id: int | None = None, steps: int = 32, rule: str = "trapezoid",
    batch_size: int = 16, attention_mask: torch.Tensor | None = None, **kwargs,
) -> IGResult:
    """Integrated gradients of `target` (default: the top next-token logit at the last position)."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: choose from {RULES}")
    if steps < 1:
        raise ValueError(f"steps={steps}: must be >= 1")
    input_ids, embeds = _prepare(model, input_ids)
    if isinstance(baseline, torch.Tensor):
        base = baseline.float().reshape(embeds.shape)
    elif baseline == "zeros":
        base = torch.zeros_like(embeds)
    elif baseline == "pad":
        if pad_id is None:
            pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
        with torch.no_grad():
            base = token_embedding(model)(torch.full_like(input_ids[0], pad_id)).float()
    else:
        raise ValueError(f"baseline={baseline!r}: choose 'zeros', 'pad' or pass a tensor [T, d]")
    target = target or token_logit_fn()
    alphas, weights = _alphas_and_weights(steps, rule)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # the real input first: a default target fixes its token there
            f_input, f_base = (float(_forward_with_embeddings(model, input_ids, e[None], target, attention_mask,
                                                              **kwargs)[0]) for e in (embeds, base))
        total = torch.zeros_like(embeds)
        for start in range(0, len(alphas), batch_size):
            a = alphas[start:start + batch_size, None, None]
            path = (base + a * (embeds - base)).requires_grad_(True)
            values = _forward_with_embeddings(model, input_ids, path, target, attention_mask, **kwargs)
            (grads,) = torch.autograd.grad(values.sum(), path)
            total += (grads * weights[start:start + batch_size, None, None]).sum(0)
    finally:
        model.train(was_training)
    per_dim = (embeds - base) * total
    return IGResult(per_dim.sum(-1), per_dim, f_input, f_base)
