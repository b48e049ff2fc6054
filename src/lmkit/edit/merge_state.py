"""Merge whole state dicts with one of the merge methods, tensor by tensor.

    MERGE_METHODS   linear | slerp | soup | task_arithmetic | ties | dare_ties | dare_linear
    merge_state_dicts(models, MergeConfig(method=...), base=None) -> merged state dict

Methods that work on task vectors (task_arithmetic, ties, dare_*) need the `base` the models
were fine-tuned from; linear and soup average the models (base not used); slerp goes from the
base (t = 0) to the one model, or from the first model to the second when there is no base.
Every model must have the same tensor names and shapes. Floating tensors are merged in
float32 and cast back to the dtype of the base (else the first model); other tensors (integer
buffers) must be equal in every model and are copied. Names that share one tensor (tied
embeddings) are merged once, so they stay tied (DARE's masks would otherwise differ by name).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from lmkit.edit.merge_dare import dare_linear, dare_ties
from lmkit.edit.merge_linear import weighted_average
from lmkit.edit.merge_slerp import slerp
from lmkit.edit.merge_task_arithmetic import task_arithmetic
from lmkit.edit.merge_ties import ties
from lmkit.errors import CheckpointError, ConfigError

MERGE_METHODS = ("linear", "slerp", "soup", "task_arithmetic", "ties", "dare_ties", "dare_linear")
NEEDS_BASE = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
DEFAULT_DENSITY = {"ties": 0.2, "dare_ties": 0.5, "dare_linear": 0.5}  # TIES paper: top 20 %


@dataclass
class MergeConfig:
    """method; weights (one per model, None: all 1); density (fraction of each task vector kept by
    TIES / DARE, None: the method's default); lam (λ, the scale of the merged task vector); t
    (slerp's position, 0 = first end, 1 = second); seed (DARE's drop masks); normalize (linear:
    divide by Σ w)."""

    method: str = "linear"
    weights: tuple[float, ...] | None = None
    density: float | None = None
    lam: float = 1.0
    t: float = 0.5
    seed: int = 0
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.method not in MERGE_METHODS:
            raise ConfigError(f"MergeConfig.method={self.method!r}: must be one of {', '.join(MERGE_METHODS)}")
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
        if self.density is not None and not 0.0 < self.density <= 1.0:
            raise ConfigError(f"MergeConfig.density={self.density!r}: must be in (0, 1]")
        if not 0.0 <= self.t <= 1.0:
            raise ConfigError(f"MergeConfig.t={self.t!r}: must be in [0, 1]")
        if self.density is None:
            self.density = DEFAULT_DENSITY.get(self.method, 1.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_compatible(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Same tensor names and shapes in every state dict, else one CheckpointError naming them."""
    first = states[0]
    for state, name in zip(states[1:], names[1:]):
        missing, extra = sorted(set(first) - set(state)), sorted(set(state) - set(first))
        shapes = [k for k in first if k in state and tuple(first[k].shape) != tuple(state[k].shape)]
        if missing or extra or shapes:
            raise CheckpointError(
                f"{name} does not have the architecture of {names[0]}: "
                + "; ".join(p for p in (
                    f"missing {missing[:5]}" if missing else "", f"extra {extra[:5]}" if extra else "",
                    f"other shapes for {shapes[:5]}" if shapes else "") if p)
                + " — only models of one architecture and size can be merged"
            )


def merge_tensor(key: str, models: Sequence[torch.Tensor], base: torch.Tensor | None, cfg: MergeConfig) -> torch.Tensor:
    """One merged tensor (float32) by `cfg.method`."""
    m, w = cfg.method, cfg.weights
    if m in ("linear", "soup"):
        return weighted_average(models, w if m == "linear" else None, normalize=cfg.normalize or m == "soup")
    if m == "slerp":
        ends = [base, *models] if base is not None else list(models)
        return slerp(cfg.t, ends[0], ends[1])
    if m == "task_arithmetic":
        return task_arithmetic(base, models, w, cfg.lam)
    if m == "ties":
        return ties(base, models, w, cfg.density, cfg.lam)
    if m == "dare_linear":
        return dare_linear(base, models, w, cfg.density, cfg.lam, cfg.seed, key)
    return dare_ties(base, models, w, cfg.density, cfg.lam, cfg.seed, key)


def _check_counts(cfg: MergeConfig, n_models: int, has_base: bool) -> None:
    if cfg.method in NEEDS_BASE and not has_base:
        raise ConfigError(f"{cfg.method} merges task vectors θ_i − θ_base: give the base model they were tuned from")
    if cfg.method == "slerp" and n_models + has_base != 2:
        raise ConfigError(f"slerp interpolates exactly two models (a base and one model, or two models); "
                          f"got {n_models} model(s){' and a base' if has_base else ''}")
    if n_models < 1:
        raise ConfigError("nothing to merge: give at least one model")
    if cfg.weights is not None and cfg.method != "slerp" and len(cfg.weights) != n_models:
        raise ConfigError(f"{len(cfg.weights)} weights for {n_models} models: give one weight per model")


def merge_state_dicts(models: Sequence[Mapping[str, torch.Tensor]], cfg: MergeConfig,
                      base: Mapping[str, torch.Tensor] | None = None,
                      names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The merged state dict (see the module docstring); `names` only label error messages."""
    _check_counts(cfg, len(models), base is not None)
    everyone = ([base] if base is not None else []) + list(models)
    labels = list(names) if names is not None else [f"model {i}" for i in range(len(everyone))]
    check_compatible(everyone, labels)
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}  # tied weights (one tensor, two names) merge once
    for key, ref in everyone[0].items():
        alias = seen.setdefault((ref.data_ptr(), tuple(ref.shape)), key) if ref.numel() else key
        if alias != key:
            out[key] = out[alias]
            continue
        tensors = [m[key] for m in models]
        if not ref.is_floating_point():
            if any(not torch.equal(t, ref) for t in tensors):
                raise CheckpointError(f"{key}: a non-float tensor differs between the models; it cannot be merged")
            out[key] = ref.clone()
            continue
        merged = merge_tensor(key, tensors, base[key] if base is not None else None, cfg)
        out[key] = merged.to(ref.dtype)
    return out
