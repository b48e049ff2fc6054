"""What one reverse-diffusion step returns, shared by the DDPM and DDIM samplers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepOutput:
    """x_{t-1} (`prev_sample`) and the step's estimate of the clean image (`pred_original_sample`)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
