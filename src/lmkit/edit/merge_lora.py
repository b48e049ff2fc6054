"""Merging LoRA adapters of one base: as weight deltas, or as a new adapter (PEFT's "cat", "linear").

An adapter i changes each adapted weight by ΔW_i = s_i B_i A_i (s_i = alpha_i / r_i, or
alpha_i / √r_i with rsLoRA). Three ways to merge adapters, from exact to approximate:

    delta    ΔW_i per module is a task vector: any merge method (task arithmetic, TIES, DARE,
             linear, ...) combines them exactly as it would full fine-tunes, and the result is
             folded into the base weights (a full checkpoint). `lora_task_vectors`.
    cat      PEFT's add_weighted_adapter(combination_type="cat"): A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]
             stacked along the rank, B = [B_1, B_2, ...], r = Σ r_i, alpha = r (scaling 1), so
             B A = Σ w_i s_i B_i A_i exactly — a new adapter of rank Σ r_i.
    linear   PEFT's "linear": with c_i = w_i s_i, A = Σ sign(c_i) √|c_i| A_i and
             B = Σ √|c_i| B_i at the same rank r (alpha = r). B A then holds cross terms
             B_i A_j (i ≠ j): only an approximation of Σ c_i B_i A_i, as PEFT's docs warn;
             every adapter must have one rank.

Adapters are given as (LoraConfig, tensors) with keys `<module>.lora_A.weight` /
`<module>.lora_B.weight` (`peft.read_lora_adapter`; PEFT's own files use the same suffixes).
Adapters that train biases or whole modules (modules_to_save) are refused: those tensors are
not low-rank deltas.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from lmkit.edit.merge_task_arithmetic import check_weights
from lmkit.errors import ConfigError
from lmkit.peft.lora import LoraConfig

A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
Adapter = tuple[LoraConfig, Mapping[str, torch.Tensor]]


def lora_modules(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The adapted modules of an adapter's tensors; refuses tensors that are not LoRA A/B."""
    other = [k for k in state if not (k.endswith(A_SUFFIX) or k.endswith(B_SUFFIX))]
    if other:
        raise ConfigError(f"the adapter holds tensors that are not LoRA A/B matrices ({other[:4]}: trained biases "
                          "or modules_to_save); only pure LoRA adapters can be merged")
    return sorted(k[: -len(A_SUFFIX)] for k in state if k.endswith(A_SUFFIX))


def lora_task_vectors(adapter: Adapter) -> dict[str, torch.Tensor]:
    """{"<module>.weight": ΔW = s B A} of one adapter (float32)."""
    config, state = adapter
    s = config.scaling
    return {f"{m}.weight": s * (state[m + B_SUFFIX].float() @ state[m + A_SUFFIX].float())
            for m in lora_modules(state)}


def _all_modules(adapters: Sequence[Adapter]) -> list[str]:
    return sorted({m for _, state in adapters for m in lora_modules(state)})


def combine_cat(adapters: Sequence[Adapter], weights: Sequence[float] | None = None,
                template: LoraConfig | None = None) -> Adapter:
    """PEFT's "cat": one adapter of rank Σ r_i with B A = Σ w_i s_i B_i A_i exactly."""
    weights = check_weights(weights, len(adapters))
    r = sum(c.r for c, _ in adapters)
    out: dict[str, torch.Tensor] = {}
    for m in _all_modules(adapters):
        ref = next(state for _, state in adapters if m + A_SUFFIX in state)
        d_in, d_out = ref[m + A_SUFFIX].shape[1], ref[m + B_SUFFIX].shape[0]
        As, Bs = [], []
        for (config, state), w in zip(adapters, weights):
            if m + A_SUFFIX in state:  # an adapter without this module contributes zeros
                As.append(state[m + A_SUFFIX].float() * w * config.scaling)
                Bs.append(state[m + B_SUFFIX].float())
            else:
                As.append(torch.zeros(config.r, d_in))
                Bs.append(torch.zeros(d_out, config.r))
        out[m + A_SUFFIX], out[m + B_SUFFIX] = torch.cat(As, 0), torch.cat(Bs, 1)
    return _config_like(template or adapters[0][0], adapters, r), out


def combine_linear(adapters: Sequence[Adapter], weights: Sequence[float] | None = None,
                   template: LoraConfig | None = None) -> Adapter:
    """PEFT's "linear": A = Σ sign(c_i) √|c_i| A_i, B = Σ √|c_i| B_i (c_i = w_i s_i); an approximation."""
    weights = check_weights(weights, len(adapters))
    ranks = {c.r for c, _ in adapters}
    if len(ranks) != 1:
        raise ConfigError(f"the linear combination of LoRA adapters needs one rank; got ranks {sorted(ranks)} "
                          "(use cat, or delta to merge the weight updates)")
    out: dict[str, torch.Tensor] = {}
    for m in _all_modules(adapters):
        a_sum = b_sum = 0.0
        for (config, state), w in zip(adapters, weights):
            if m + A_SUFFIX not in state:
                continue
            c = w * config.scaling
            root = math.sqrt(abs(c))
            a_sum = a_sum + (root if c >= 0 else -root) * state[m + A_SUFFIX].float()
            b_sum = b_sum + root * state[m + B_SUFFIX].float()
        out[m + A_SUFFIX], out[m + B_SUFFIX] = a_sum, b_sum
    return _config_like(template or adapters[0][0], adapters, ranks.pop()), out


def _config_like(template: LoraConfig, adapters: Sequence[Adapter], r: int) -> LoraConfig:
    """rank r, alpha r (scaling 1, the weights already carry each s_i), the union of targets."""
    targets = tuple(sorted({t for c, _ in adapters for t in c.target_modules}))
    return LoraConfig(r=r, alpha=r, dropout=template.dropout, target_modules=targets, use_rslora=False,
                      bias="none", modules_to_save=())
