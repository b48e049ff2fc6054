"""Quantized replacements for `nn.Linear`.

  Int8Linear       weight-only int8, symmetric absmax per output channel (row of W);
                   forward dequantizes W to the input dtype and runs an ordinary matmul.
  Int8DynamicLinear  W8A8: Int8Linear's weight, activations int8 per row at run time, exact int32
                   products on torch._int_mm (the fastest int8 path on CPU; not weight-only).
  LLMInt8Linear    LLM.int8(): int8 weight (per output channel); activations quantized per
                   row at run time; input feature columns with any |x| > threshold go through
                   a floating-point matmul instead (mixed-precision decomposition).
  NF4Linear        QLoRA's NF4 weight (block 64) with optional double quantization.
  GroupQuantLinear b-bit (4 or 8) asymmetric (zero-point) groups of `group_size` input
                   columns per output row — the storage of round-to-nearest and GPTQ alike.
  Int4OffsetLinear 4-bit codes with a float scale and offset per group, (q - 8) * scale + offset:
                   the int4 kernel's own form, which GGUF Q4_0 / Q4_K blocks load into exactly.

All quantized weights are *buffers*, never `nn.Parameter`s, so an optimizer cannot touch them
(QLoRA trains adapters on top of a frozen NF4 base). A bias stays a Parameter with
requires_grad=False. `weight_bytes()` counts the bytes of the stored weight (codes and
constants, not the bias). `dequantize_weight()` returns the dense [out, in] matrix.
Int8Linear and 4-bit GroupQuantLinear / GPTQLinear run on PyTorch's fused CPU weight-only
kernels (weight_kernels.py: int8 per channel, int4 in groups of 32..256, bf16 activations):
they read the codes directly, so at batch-1 decode they are several times faster than fp32.
Their kernel layouts (bf16 scales, the int4 pack) are derived from the stored buffers on first
use and rebuilt whenever the buffers change, so checkpoints keep the format above. Where no
kernel runs (CUDA, 8-bit groups, a group size not a multiple of 32, gradients through the layer)
they dequantize and matmul, with one warning. NF4 and LLM.int8() always *simulate* low-bit
compute: memory is real, speed is not (see docs/quantization.md).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import QuantizationError
from lmkit.quant.nf4 import NF4Tensor, quantize_nf4
from lmkit.quant.double_quant import DQ_BLOCK_SIZE, DoubleQuantized
from lmkit.quant import weight_kernels as wk
from lmkit.quant.llm_int8 import vectorwise_int8_linear
from lmkit.quant.huge_pages import huge_page_copy


def _bias_param(bias: torch.Tensor | None) -> nn.Parameter | None:
    if bias is None:
        return None
    return nn.Parameter(bias.detach().clone(), requires_grad=False)


class QuantLinearBase(nn.Module):
    """Shared bits: in/out features, bias, `extra_repr`, `weight_bytes`."""

    method = "base"

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        """`model.to(device)` moves the quantized buffers; `model.half()` / `.to(bf16)` must not
        round their fp32 constants (scales, absmax), so those keep their dtype and exact values."""
        kept = {n: b for n, b in self._buffers.items() if b is not None and b.is_floating_point()}
        super()._apply(fn, recurse)
        for n, old in kept.items():
            new = self._buffers[n]
            if new is not None and new.dtype != old.dtype:
                self._buffers[n] = old.to(new.device)
        return self

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def kernel_reason(self, device: torch.device) -> str | None:
        """Why no fused kernel runs this layer on `device` (None: one does). Subclasses with a kernel override."""
        return f"{type(self).__name__} has no fused kernel"

    def make_kernel(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """A function x [M, in] -> x @ W.T + bias [M, out] (`wk.KERNEL_DTYPE`) on the fused kernel, holding
        only the kernel's layout of the weight; None for layers without a kernel (subclasses override)."""
        return None

    def kernel_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """`make_kernel()`, cached; rebuilt when a buffer or parameter is replaced or written in place."""
        key = self._kernel_key()
        cached = self.__dict__.get("_kernel_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                fn = self.make_kernel()
            # make_kernel may have moved a buffer into huge pages (same values): key the result on what is there now
            cached = (self._kernel_key(), fn)
            self.__dict__["_kernel_cache"] = cached
        return cached[1]

    def _kernel_key(self) -> tuple:
        tensors = list(self._buffers.values()) + list(self._parameters.values())
        return tuple((t.data_ptr(), 0 if t.is_inference() else t._version, t.device)
                     for t in tensors if t is not None)  # inference tensors have no version counter

    def kernel_mm(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, in] (any floating dtype) -> x @ W.T + bias [M, out] in `wk.KERNEL_DTYPE`, on the fused kernel."""
        return self.kernel_fn()(x)

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether forward(x) runs the fused kernel (warns once, per reason, when a kernel layer cannot)."""
        if type(self).make_kernel is QuantLinearBase.make_kernel:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None and self.bias.requires_grad)):
            return False  # the kernels have no backward
        why = self.kernel_reason(x.device)
        if why is not None:
            wk.warn_fallback(why)
            return False
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() and self.uses_kernel(x):
            y = self.kernel_mm(x.reshape(-1, self.in_features))
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return self.forward_without_kernel(x)

    def forward_without_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The same product where no fused kernel runs: dequantize, then matmul."""
        w = self.dequantize_weight(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---- NF4 ------------------------------------------------------------------------------------
class NF4Linear(QuantLinearBase):
    """A frozen NF4 weight. Buffers:
    weight_packed uint8 [out*in/2]; then either weight_absmax fp32 [n_blocks] or (double quant)
    weight_absmax_q uint8 [n_blocks], weight_absmax_scale fp32 [ceil(n_blocks/256)],
    weight_absmax_offset fp32 [] (mean subtracted before the 8-bit quantization).
    """

    method = "nf4"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = 64,
                 double_quant: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        n = in_features * out_features
        if block_size <= 0 or n % block_size:
            raise ValueError(
                f"NF4Linear: block_size={block_size} does not divide the {out_features}x{in_features} weight "
                f"({n} elements); pick a block size that divides it"
            )
        self.block_size = block_size
        self.double_quant = double_quant
        n_blocks = n // block_size
        self.register_buffer("weight_packed", torch.zeros((n + 1) // 2, dtype=torch.uint8))
        if double_quant:
            self.register_buffer("weight_absmax_q", torch.zeros(n_blocks, dtype=torch.uint8))
            self.register_buffer("weight_absmax_scale", torch.zeros(-(-n_blocks // DQ_BLOCK_SIZE)))
            self.register_buffer("weight_absmax_offset", torch.zeros(()))
        else:
            self.register_buffer("weight_absmax", torch.zeros(n_blocks))

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = True) -> "NF4Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, block_size, double_quant)
        m.load_nf4(quantize_nf4(linear.weight.detach(), block_size, double_quant))
        if linear.bias is not None:
            m.bias = _bias_param(linear.bias)
        return m.to(linear.weight.device)

    @torch.no_grad()
    def load_nf4(self, q: NF4Tensor) -> None:
        if q.shape != (self.out_features, self.in_features) or q.block_size != self.block_size:
            raise ValueError(f"NF4 tensor {q.shape}/block {q.block_size} does not fit {self}")
        self.weight_packed = q.packed.clone()
        if q.dq is not None:
            self.weight_absmax_q = q.dq.q.clone()
            self.weight_absmax_scale = q.dq.absmax.clone()
            self.weight_absmax_offset = q.dq.offset.clone().reshape(())
        else:
            self.weight_absmax = q.absmax.clone()

    def nf4_tensor(self) -> NF4Tensor:
        dq = None
        absmax = None
        if self.double_quant:
            dq = DoubleQuantized(self.weight_absmax_q, self.weight_absmax_scale.float(),
                                 self.weight_absmax_offset.float(), DQ_BLOCK_SIZE)
        else:
            absmax = self.weight_absmax.float()
        return NF4Tensor(self.weight_packed, (self.out_features, self.in_features), self.block_size, absmax, dq)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.nf4_tensor().dequantize(dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", block_size={self.block_size}, double_quant={self.double_quant}"


# ---- weight-only int8 -----------------------------------------------------------------------
class Int8Linear(QuantLinearBase):
    """Weight-only int8: W ≈ weight_scale[o] * weight_int8[o, :] (absmax per output channel)."""

    method = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        from lmkit.quant.affine import quantize_affine

        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        a = quantize_affine(linear.weight.detach(), bits=8, symmetric=True, granularity="channel", axis=0)
        m.weight_int8 = a.q.contiguous()
        m.weight_scale = a.scale.contiguous()
        m.bias = _bias_param(linear.bias)
        return m.to(linear.weight.device)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight_int8.float() * self.weight_scale[:, None].float()).to(dtype)

    def kernel_reason(self, device: torch.device) -> str | None:
        if self.in_features % 16:  # the CPU kernel reads K in blocks of 16 (other K: wrong results or a crash)
            return f"the int8 kernel needs in_features divisible by 16 (got {self.in_features})"
        return wk.int8_kernel_reason(device)

    def make_kernel(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # the kernel streams the codes themselves: move them into huge pages (same values, no second copy)
        self.weight_int8 = huge_page_copy(self.weight_int8)
        return wk.Int8Kernel(self.weight_int8, self.weight_scale, self.bias)


class Int8DynamicLinear(Int8Linear):
    """W8A8: Int8Linear's weight (absmax per output channel), and the activations quantized to int8 per
    row (token) at run time; the product is an exact int32 sum on `torch._int_mm` (weight_kernels.py).
    Not weight-only: the activation rounding adds error (measured in docs/quantization.md), and in
    exchange it is the fastest int8 path on CPU, at decode and at prompt lengths alike. Without the
    kernel it computes the same numbers by simulation (`vectorwise_int8_linear`)."""

    method = "w8a8"

    def kernel_reason(self, device: torch.device) -> str | None:
        return wk.int8_dynamic_kernel_reason(device)

    def make_kernel(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self.weight_int8 = huge_page_copy(self.weight_int8)
        return wk.Int8DynamicKernel(self.weight_int8, self.weight_scale, self.bias)

    def forward_without_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel's own arithmetic, simulated (activations rounded too), not a dequantized matmul."""
        y = vectorwise_int8_linear(x, self.weight_int8, self.weight_scale)
        return y if self.bias is None else y + self.bias.to(y.dtype)


# ---- LLM.int8() -----------------------------------------------------------------------------
class LLMInt8Linear(Int8Linear):
    """LLM.int8(): int8 weight per output row; activations int8 per row at run time, except the
    input features with |x| > threshold, which are multiplied in floating point."""

    method = "llm-int8"
    make_kernel = QuantLinearBase.make_kernel  # its own mixed-precision forward, not the weight-only kernel

    def __init__(self, in_features: int, out_features: int, bias: bool = True, threshold: float = 6.0) -> None:
        super().__init__(in_features, out_features, bias)
        self.threshold = threshold

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float = 6.0) -> "LLMInt8Linear":
        base = Int8Linear.from_linear(linear)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, threshold)
        m.weight_int8, m.weight_scale, m.bias = base.weight_int8, base.weight_scale, base.bias
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lmkit.quant.llm_int8 import llm_int8_linear

        y = llm_int8_linear(x, self.weight_int8, self.weight_scale, self.threshold)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", threshold={self.threshold}"


# ---- b-bit groups (RTN and GPTQ) --------------------------------------------------------------
class GroupQuantLinear(QuantLinearBase):
    """Asymmetric b-bit weight (b = 4 or 8) with one (scale, zero) per `group_size` input columns
    of each output row:  W[o, j] ≈ scale[o, g] * (q[o, j] - zero[o, g]),  g = j // group_size.
    4-bit codes are packed two per byte along the input dimension (high nibble first).
    Round-to-nearest (`from_linear`) and GPTQ (`from_codes`) produce exactly this storage."""

    method = "rtn"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 4,
                 group_size: int = 64) -> None:
        super().__init__(in_features, out_features, bias)
        if bits not in (4, 8):
            raise QuantizationError(f"GroupQuantLinear: bits={bits} must be 4 or 8")
        if not isinstance(group_size, int) or group_size <= 0 or in_features % group_size:
            raise QuantizationError(
                f"GroupQuantLinear: group_size={group_size} does not divide in_features={in_features}; "
                "choose a group size that divides it"
            )
        if bits == 4 and in_features % 2:
            raise QuantizationError(f"4-bit packing needs an even in_features, got {in_features}")
        self.bits = bits
        self.group_size = group_size
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features * bits // 8, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.uint8))

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                   group_size: int, bias: torch.Tensor | None = None) -> "GroupQuantLinear":
        if codes.dim() != 2:
            raise QuantizationError(f"{cls.__name__}.from_codes: codes must be [out, in], got {tuple(codes.shape)}")
        out_f, in_f = codes.shape
        m = cls(in_f, out_f, bias is not None, bits, group_size)
        want = (out_f, in_f // group_size)
        if tuple(scales.shape) != want or tuple(zeros.shape) != want:
            raise QuantizationError(f"{cls.__name__}.from_codes: scales {tuple(scales.shape)} and zeros "
                                    f"{tuple(zeros.shape)} must both be {want} (one per row and group of {group_size})")
        codes = codes.to(torch.uint8)
        if bits == 4:
            codes = (codes[:, 0::2] << 4) | codes[:, 1::2]
        m.qweight = codes.contiguous()
        m.scales = scales.float().contiguous()
        m.zeros = zeros.to(torch.uint8).contiguous()
        m.bias = _bias_param(bias)
        return m.to(codes.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int = 64) -> "GroupQuantLinear":
        """Round-to-nearest (RTN)."""
        from lmkit.quant.affine import quantize_affine

        a = quantize_affine(linear.weight.detach(), bits=bits, symmetric=False, granularity="block", axis=1,
                            block_size=group_size)
        n_groups = linear.in_features // group_size
        return cls.from_codes(a.q, a.scale.reshape(-1, n_groups), a.zero_point.reshape(-1, n_groups), bits,
                              group_size, linear.bias)

    def codes(self) -> torch.Tensor:
        if self.bits == 8:
            return self.qweight
        out = torch.empty(self.out_features, self.in_features, dtype=torch.uint8, device=self.qweight.device)
        out[:, 0::2] = self.qweight >> 4
        out[:, 1::2] = self.qweight & 0xF
        return out

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        g = self.group_size
        q = self.codes().float().reshape(self.out_features, -1, g)
        w = (q - self.zeros.float()[..., None]) * self.scales.float()[..., None]
        return w.reshape(self.out_features, self.in_features).to(dtype)

    def kernel_reason(self, device: torch.device) -> str | None:
        if self.bits != 4:
            return f"{self.bits}-bit group quantization has no fused kernel"
        return wk.int4_kernel_reason(device, self.group_size, self.in_features)

    def make_kernel(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return wk.int4_linear_fn(self.codes(), self.scales, self.zeros, self.group_size, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bits={self.bits}, group_size={self.group_size}"


class GPTQLinear(GroupQuantLinear):
    """The same storage as GroupQuantLinear; the codes were chosen by GPTQ."""

    method = "gptq"


class Int4OffsetLinear(QuantLinearBase):
    """4-bit codes with a float scale *and offset* per group of `group_size` input columns:
    W[o, j] = (q[o, j] - 8) * scale[o, g] + offset[o, g] — the int4 kernel's own form, so llama.cpp's
    Q4_0 (offset 0) and Q4_K (offset 8 * d * sc - dmin * m) blocks load into it without rounding
    (`hub/gguf_import.py`). GroupQuantLinear's integer zero-point cannot hold Q4_K's minimum.
    Codes are packed two per byte like GroupQuantLinear's (high nibble first)."""

    method = "int4-offset"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 32) -> None:
        super().__init__(in_features, out_features, bias)
        if not isinstance(group_size, int) or group_size <= 0 or in_features % group_size or in_features % 2:
            raise QuantizationError(f"Int4OffsetLinear: group_size={group_size} must divide the even "
                                    f"in_features={in_features}")
        self.group_size = group_size
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups))
        self.register_buffer("offsets", torch.zeros(out_features, n_groups))

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group_size: int,
                   bias: torch.Tensor | None = None) -> "Int4OffsetLinear":
        """codes [out, in] in 0..15 (value (q - 8) * scale + offset); scales / offsets [out, in / group_size]."""
        if codes.dim() != 2:
            raise QuantizationError(f"Int4OffsetLinear.from_codes: codes must be [out, in], got {tuple(codes.shape)}")
        out_f, in_f = codes.shape
        m = cls(in_f, out_f, bias is not None, group_size)
        want = (out_f, in_f // group_size)
        if tuple(scales.shape) != want or tuple(offsets.shape) != want:
            raise QuantizationError(f"Int4OffsetLinear.from_codes: scales {tuple(scales.shape)} and offsets "
                                    f"{tuple(offsets.shape)} must both be {want}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
            raise QuantizationError("Int4OffsetLinear.from_codes: codes must lie in 0..15")
        c = codes.to(torch.uint8)
        m.qweight = ((c[:, 0::2] << 4) | c[:, 1::2]).contiguous()
        m.scales = scales.float().contiguous()
        m.offsets = offsets.float().contiguous()
        m.bias = _bias_param(bias)
        return m.to(codes.device)

    def codes(self) -> torch.Tensor:
        out = torch.empty(self.out_features, self.in_features, dtype=torch.uint8, device=self.qweight.device)
        out[:, 0::2] = self.qweight >> 4
        out[:, 1::2] = self.qweight & 0xF
        return out

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = (self.codes().float() - 8.0).reshape(self.out_features, -1, self.group_size)
        w = q * self.scales.float()[..., None] + self.offsets.float()[..., None]
        return w.reshape(self.out_features, self.in_features).to(dtype)

    def kernel_reason(self, device: torch.device) -> str | None:
        why = wk.int4_kernel_reason(device, self.group_size, self.in_features)
        if why is None and wk.int4_kernel_group(self.group_size, self.in_features) != self.group_size:
            return f"the int4 kernel takes one offset per group of 32..256, not {self.group_size}"
        return why

    def make_kernel(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return wk.int4_offset_linear_fn(self.codes(), self.scales, self.offsets, self.group_size, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


QUANT_LINEAR_TYPES = (Int8Linear, Int8DynamicLinear, LLMInt8Linear, NF4Linear, GroupQuantLinear, GPTQLinear, Int4OffsetLinear)


def merge_rows(linears: list[QuantLinearBase]) -> QuantLinearBase | None:
    """One quantized module computing the concatenated outputs of `linears` (which share one input):
    q/k/v or gate/up in one kernel call at decode. Their codes and per-row constants are stacked
    row-wise, which is exact because every row is quantized on its own. None when they differ in
    kind or settings (or the kind has no fused kernel)."""
    first = linears[0]
    kind = type(first)
    if len(linears) == 1:
        return first
    if kind not in (Int8Linear, Int8DynamicLinear, GroupQuantLinear, GPTQLinear, Int4OffsetLinear) or any(type(m) is not kind for m in linears):
        return None
    if any(m.in_features != first.in_features or (m.bias is None) != (first.bias is None) for m in linears):
        return None
    out_f = sum(m.out_features for m in linears)
    bias = first.bias is not None
    if kind in (Int8Linear, Int8DynamicLinear):
        merged = kind(first.in_features, out_f, bias)
        names = ("weight_int8", "weight_scale")
    elif kind is Int4OffsetLinear:
        if any(m.group_size != first.group_size for m in linears):
            return None
        merged = Int4OffsetLinear(first.in_features, out_f, bias, first.group_size)
        names = ("qweight", "scales", "offsets")
    else:
        if any((m.bits, m.group_size) != (first.bits, first.group_size) for m in linears):
            return None
        merged = kind(first.in_features, out_f, bias, first.bits, first.group_size)
        names = ("qweight", "scales", "zeros")
    with torch.no_grad():
        for n in names:
            setattr(merged, n, torch.cat([getattr(m, n) for m in linears]))
        if bias:
            merged.bias = _bias_param(torch.cat([m.bias for m in linears]))
    return merged
