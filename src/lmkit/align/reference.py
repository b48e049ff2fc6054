"""The reference policy pi_ref that DPO, PPO and GRPO measure the policy against.

Either a separate frozen model (a full-model policy: the SFT model, copied once before
training), or — for a LoRA policy — the policy itself with its adapters switched off:
``disable_adapters(model)`` computes exactly the base model, so no second copy of the
weights is needed (the point of LoRA on small machines). `Reference.run` yields the
model to call, in eval mode and without gradients, and restores the policy's mode after.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn

from lmkit.errors import ConfigError


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy of `model` to serve as pi_ref for a full-model policy."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def has_adapters(model: nn.Module) -> bool:
    """True if `model` carries LoRA adapters (lmkit.peft.lora)."""
    return bool(getattr(model, "lora_configs", None))


class Reference:
    """pi_ref for `policy`: `ref_model` if given, else `policy` with its LoRA adapters disabled."""

    def __init__(self, policy: nn.Module, ref_model: nn.Module | None = None) -> None:
        if ref_model is None and not has_adapters(policy):
            raise ConfigError(
                "a full-model policy needs a reference model (pass ref_model=..., e.g. a frozen copy of the "
                "starting model) or precomputed reference log-probs; a LoRA policy uses its base model"
            )
        self.policy = policy
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)

    @classmethod
    def for_policy(cls, policy: nn.Module, ref_model: nn.Module | None = None) -> "Reference":
        """pi_ref as DPO, PPO and GRPO choose it: `ref_model` if given, else a LoRA policy's
        base (adapters disabled), else a frozen copy of `policy` taken now."""
        if ref_model is None and not has_adapters(policy):
            ref_model = frozen_copy(policy)
        return cls(policy, ref_model)

    @property
    def uses_adapters(self) -> bool:
        return self.ref_model is None

    @contextlib.contextmanager
    def run(self) -> Iterator[nn.Module]:
        """The reference model to call (no grad, eval mode)."""
        if self.ref_model is not None:
            dev = next(self.policy.parameters()).device
            if next(self.ref_model.parameters()).device != dev:
                self.ref_model.to(dev)
            with torch.no_grad():
                yield self.ref_model
            return
        from lmkit.peft.lora import disable_adapters

        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), disable_adapters(self.policy):
                yield self.policy
        finally:
            self.policy.train(was_training)
