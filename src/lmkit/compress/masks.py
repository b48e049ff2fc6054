"""Pruning masks: which Linear layers are pruned, the 0/1 mask each one keeps, and how the
mask survives training.

A pruned `nn.Linear` carries its mask as a buffer ``weight_mask`` (same shape as the weight,
1 = kept, 0 = pruned) and its weight holds exact zeros where the mask is 0. The buffer is
*non-persistent*: `state_dict()` and therefore checkpoints and `save_pretrained` contain only
the (zero-filled) weights, exactly the parameter names of the unpruned model, so a pruned
model loads anywhere a dense one does. `masks_from_zeros` rebuilds the masks from the zeros.

Why re-apply after every optimizer step: the gradient of a pruned weight is not zero (the
loss still depends on what that connection *would* contribute), so SGD/AdamW move it off
zero. `keep_masks(trainer)` registers a post-step hook on the optimizer that multiplies each
weight by its mask after every update, so a fine-tuned model keeps its sparsity pattern
(lmkit's Trainer has no callback API; torch's `Optimizer.register_step_post_hook` runs
after `optimizer.step()`, also when the step goes through a GradScaler).

Targets are named by lmkit's module names (Llama's): the attention projections
q_proj/k_proj/v_proj/o_proj and the FFN gate_proj/up_proj/down_proj (MoE experts included).
Embeddings, norms and lm_head are never pruned by default: the embedding/lm_head rows of
rare tokens are small but not unimportant, and norms are a handful of parameters.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from lmkit.errors import ConfigError

DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MASK = "weight_mask"


def find_targets(model: nn.Module, targets: Iterable[str] | None = None) -> dict[str, nn.Linear]:
    """{qualified name: Linear} for modules whose last name component is in `targets`."""
    if targets is None:
        names = DEFAULT_TARGETS
    elif isinstance(targets, str):  # "q_proj,v_proj"
        names = tuple(t.strip() for t in targets.split(",") if t.strip())
    else:
        names = tuple(targets)
    found: dict[str, nn.Linear] = {}
    for qual, module in model.named_modules():
        leaf = qual.rsplit(".", 1)[-1]
        if leaf not in names:
            continue
        if not isinstance(module, nn.Linear):
            raise ConfigError(
                f"cannot prune {qual}: it is a {type(module).__name__}, not an nn.Linear "
                "(prune before quantizing, or leave it out of the targets)"
            )
        found[qual] = module
    if not found:
        raise ConfigError(
            f"no module of {type(model).__name__} is named one of {list(names)}; "
            "pass targets= with the model's Linear names (e.g. q_proj,up_proj)"
        )
    return found


def set_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    """Attach (or replace) `linear`'s mask and zero the pruned weights."""
    w = linear.weight
    if mask.shape != w.shape:
        raise ConfigError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(w.shape)}")
    mask = mask.to(device=w.device, dtype=w.dtype)
    if hasattr(linear, MASK) and MASK in linear._buffers:
        linear._buffers[MASK] = mask
    else:
        linear.register_buffer(MASK, mask, persistent=False)
    with torch.no_grad():
        w.mul_(mask)


def current_mask(linear: nn.Linear) -> torch.Tensor | None:
    return linear._buffers.get(MASK)


def pruned_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if m._buffers.get(MASK) is not None}


@torch.no_grad()
def apply_masks(model: nn.Module) -> int:
    """Multiply every masked weight by its mask (after an optimizer step). Returns how many."""
    n = 0
    for m in model.modules():
        mask = m._buffers.get(MASK)
        if mask is not None:
            m.weight.mul_(mask)
            n += 1
    return n


class MaskHook:
    """Handle of `keep_masks`: `.remove()` stops re-applying the masks."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def remove(self) -> None:
        self._handle.remove()


def keep_masks(trainer_or_optimizer, model: nn.Module | None = None) -> MaskHook:
    """Re-apply `model`'s masks after every step of the optimizer.

    Pass a lmkit `Trainer` (its optimizer and raw_model are used) or a torch optimizer and
    the model.
    """
    optimizer = getattr(trainer_or_optimizer, "optimizer", trainer_or_optimizer)
    if model is None:
        model = getattr(trainer_or_optimizer, "raw_model", None)
    if model is None or not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError("keep_masks needs a Trainer, or an optimizer and the model")
    handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: apply_masks(model))
    return MaskHook(handle)


def remove_pruning(model: nn.Module) -> int:
    """Make the pruning permanent: zero the weights one last time and drop the masks.
    Afterwards the model is a plain model whose weights happen to contain zeros."""
    apply_masks(model)
    n = 0
    for m in model.modules():
        if m._buffers.get(MASK) is not None:
            del m._buffers[MASK]
            n += 1
    return n


def masks_from_zeros(model: nn.Module, targets: Iterable[str] | None = None) -> int:
    """Attach masks = (weight != 0) to the target Linears, e.g. after loading a pruned
    checkpoint to fine-tune it further. Returns the number of masked modules."""
    mods = find_targets(model, targets)
    for lin in mods.values():
        set_mask(lin, (lin.weight.detach() != 0).to(lin.weight.dtype))
    return len(mods)


def sparsity_report(model: nn.Module, targets: Iterable[str] | None = None) -> dict:
    """Zeros per target Linear and overall (counted in the weights themselves, so a pruned
    and saved-then-reloaded model reports the same as the live one).

    Returns {"layers": {name: {"zeros", "total", "sparsity", "masked"}}, "zeros", "total",
    "sparsity" (over the targets), "model_sparsity" (zeros over all distinct parameters)}.
    """
    layers = {}
    zeros = total = 0
    for name, lin in find_targets(model, targets).items():
        z = int((lin.weight == 0).sum())
        t = lin.weight.numel()
        layers[name] = {"zeros": z, "total": t, "sparsity": z / t, "masked": current_mask(lin) is not None}
        zeros += z
        total += t
    params = {id(p): p for p in model.parameters()}.values()
    all_zeros = sum(int((p == 0).sum()) for p in params)
    all_total = sum(p.numel() for p in params)
    return {
        "layers": layers,
        "zeros": zeros,
        "total": total,
        "sparsity": zeros / max(total, 1),
        "model_sparsity": all_zeros / max(all_total, 1),
    }


def format_report(report: dict) -> str:
    lines = [f"{'module':<40} {'sparsity':>9} {'zeros':>10} {'total':>10}"]
    for name, r in report["layers"].items():
        lines.append(f"{name:<40} {r['sparsity']:>9.2%} {r['zeros']:>10} {r['total']:>10}")
    lines.append(f"{'targets':<40} {report['sparsity']:>9.2%} {report['zeros']:>10} {report['total']:>10}")
    lines.append(f"{'whole model':<40} {report['model_sparsity']:>9.2%}")
    return "\n".join(lines)
