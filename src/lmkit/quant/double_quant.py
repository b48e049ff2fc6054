"""Double quantization (双重量化, QLoRA §3): quantize the quantization constants themselves.

NF4 with block size 64 stores one fp32 absmax per 64 weights = 0.5 bit per weight. QLoRA
quantizes those constants again: subtract their mean (they are all positive, so centring
them uses the signed code's full range), split them into blocks of 256 and store each block
as 8-bit codes of the *dynamic* (8-bit float-like) map plus one fp32 absmax per block:
    8/64 + 32/(64*256) = 0.127 bit per weight instead of 0.5.

The 8-bit code is bitsandbytes' `create_dynamic_map(signed=True)` ("dynamic tree
quantization", Dettmers 2015): a sign bit, a unary-coded decimal exponent and a linear
fraction, so that small magnitudes get fine steps. It is rebuilt here from its definition
(and compared with bitsandbytes in the tests). Quantization picks the nearest code value
(ties to the lower code, like `torch.bucketize` over the midpoints, as bitsandbytes does).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

DQ_BLOCK_SIZE = 256


@lru_cache(maxsize=None)
def _dynamic_map_list(max_exponent_bits: int = 7, total_bits: int = 8) -> tuple[float, ...]:
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    i = 0
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2**total_bits - len(data))
    return tuple(sorted(data))


def dynamic_map() -> torch.Tensor:
    """The 256 sorted values of the signed 8-bit dynamic code (in [-1, 1])."""
    return torch.tensor(_dynamic_map_list(), dtype=torch.float32)


def quantize_to_code(x: torch.Tensor, code: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax scaling of flat `x` to [-1, 1], then nearest code index per element.

    Returns (indices uint8, absmax fp32 per block). The last block may be short.
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // block_size)
    pad = n_blocks * block_size - n
    padded = torch.nn.functional.pad(flat, (0, pad)) if pad else flat
    blocks = padded.reshape(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1).reshape(-1)[:n]
    bounds = (code[:-1] + code[1:]) / 2
    idx = torch.bucketize(scaled, bounds).to(torch.uint8)
    return idx, absmax


def dequantize_from_code(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int) -> torch.Tensor:
    vals = code[idx.reshape(-1).long()]
    n = vals.numel()
    scale = absmax.float().repeat_interleave(block_size)[:n]
    return vals * scale


@dataclass
class DoubleQuantized:
    """fp32 constants c quantized as: c ≈ code[q] * absmax[block] + offset."""

    q: torch.Tensor  # uint8 [n]
    absmax: torch.Tensor  # fp32 [ceil(n / block_size)]
    offset: torch.Tensor  # fp32 scalar: the mean that was subtracted
    block_size: int = DQ_BLOCK_SIZE

    def dequantize(self) -> torch.Tensor:
        return dequantize_from_code(self.q, self.absmax, dynamic_map().to(self.q.device), self.block_size) + self.offset

    def nbytes(self) -> int:
        return self.q.numel() + 4 * self.absmax.numel() + 4


def double_quantize(constants: torch.Tensor, block_size: int = DQ_BLOCK_SIZE) -> DoubleQuantized:
    """Quantize positive fp32 block constants (e.g. NF4 absmax) to 8 bits, mean subtracted."""
    if block_size <= 0:
        raise ValueError(f"double quantization block_size={block_size} must be positive")
    c = constants.reshape(-1).float()
    offset = c.mean()
    q, absmax = quantize_to_code(c - offset, dynamic_map(), block_size)
    return DoubleQuantized(q=q, absmax=absmax, offset=offset, block_size=block_size)
