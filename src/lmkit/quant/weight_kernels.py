"""PyTorch's fused weight-only low-bit matmul kernels for CPU, and the layouts they need.

At batch-1 decode a Linear is a matrix-vector product bound by memory bandwidth: reading
fewer weight bytes is what makes quantization fast. Dequantizing the whole weight to
floating point on every call (what a portable implementation does) reads the codes, writes
a dense copy and reads it again, so it is several times *slower* than fp32. PyTorch's CPU
build has fused kernels that read the codes directly:

  int8   torch._weight_int8pack_mm(x [M, K], w int8 [N, K], scales [N]) -> [M, N]
         symmetric per output channel: y = x @ (scales[:, None] * w).T;
         x and scales of one floating dtype (bf16 is several times faster than fp32).
  int4   torch._convert_weight_to_int4pack_for_cpu(codes int32 [N, K] in 0..15, 1) -> packed
         torch._weight_int4pack_mm_for_cpu(x [M, K], packed, group, scales_and_zeros) -> [M, N]
         scales_and_zeros [K / group, N, 2] of x's dtype; per group
             w = (q - 8) * scale + zero        (the "tinygemm" convention)
         so lmkit's asymmetric code  w = scale * (q - z)  maps to  zero = (8 - z) * scale.
         Needs N % 16 == 0 (rows are padded with zero codes here) and group in {32, 64, 128, 256}
         (a larger group that is a multiple of one of those repeats its (scale, zero)).
  w8a8   torch._int_mm(x int8 [M, K], w int8 [N, K].T) -> int32 [M, N], exact integer sums on
         oneDNN's VNNI kernels: the activations are quantized too, per row at run time
         (absmax / 127, as LLM.int8()'s vector-wise part), and y = acc * x_scale * w_scale.
         This is what llama.cpp's Q8_0 does on CPU (its dot products quantize the activations
         to 8-bit blocks of 32); the int8 weight-only kernel instead widens every code to float,
         which costs more than reading it (213M weights: 6.4 ms per pass vs 4.9 ms, 2 threads).

Activations go through torch's kernels in bf16 (`KERNEL_DTYPE`, measured fastest on the benchmark
CPU: 1x1024 @ 1024x11264 int8 0.36 ms, int4 0.30 ms vs fp32 dense 2.3 ms); results come back
in bf16 and are cast to the caller's dtype by the layers. At one or two rows (decoding) int8 runs
on lmkit's native GEMV instead where it builds (`lmkit.native_gemv.gemv_int8`: fp32 activations
and result, 1.7x faster than `_weight_int8pack_mm` over the benchmark model's weights). Where a kernel is missing (CUDA, an
old torch, a group size the kernel refuses) the layers dequantize instead and say so once
(`warn_fallback`).
"""

from __future__ import annotations

import warnings
import torch
import torch.nn.functional as F

from lmkit import native_gemv
from lmkit.graph_ops import define_graph_op
from lmkit.quant.huge_pages import huge_page_copy
from lmkit.quant.llm_int8 import vectorwise_quantize

KERNEL_DTYPE = torch.bfloat16
# From this many rows of activations on (prompt processing), int8 layers dequantize to bf16 and
# run the dense bf16 GEMM instead (oneDNN/AMX): 1024x11264 at 1 thread, 64 rows 55 vs 83 ms,
# 512 rows 200 vs 730 ms; at 8 rows the kernel wins (8 vs 37 ms).
INT8_DENSE_ROWS = 48
INT4_GROUPS = (256, 128, 64, 32)  # group sizes the int4 kernel accepts, largest first
_WARNED: set[str] = set()


def warn_fallback(reason: str) -> None:
    """Warn once per process and reason that a quantized layer runs the slow dequantize path."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"lmkit.quant: {reason}; using dequantize-then-matmul (correct but slow)", RuntimeWarning,
                      stacklevel=3)


def int8_kernel_reason(device: torch.device) -> str | None:
    """Why the int8 kernel cannot run on `device` (None: it can)."""
    if device.type != "cpu":
        return f"no fused int8 weight kernel is used on {device.type}"
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no _weight_int8pack_mm"
    return None


def int4_kernel_group(group_size: int, in_features: int) -> int | None:
    """The kernel group size that represents `group_size` exactly (None: none does)."""
    for g in INT4_GROUPS:
        if group_size % g == 0 and in_features % g == 0:
            return g
    return None


def int4_kernel_reason(device: torch.device, group_size: int, in_features: int) -> str | None:
    """Why the int4 kernel cannot run (None: it can)."""
    if device.type != "cpu":
        return f"no fused int4 weight kernel is used on {device.type}"
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return f"torch {torch.__version__} has no _weight_int4pack_mm_for_cpu"
    if int4_kernel_group(group_size, in_features) is None:
        return (f"the int4 kernel needs a group size that is a multiple of 32 (got {group_size} for "
                f"in_features={in_features})")
    return None


def int8_dynamic_kernel_reason(device: torch.device) -> str | None:
    """Why the int8 x int8 kernel (w8a8) cannot run on `device` (None: it can)."""
    if device.type != "cpu":
        return f"no int8 x int8 kernel is used on {device.type}"
    if not hasattr(torch, "_int_mm"):
        return f"torch {torch.__version__} has no _int_mm"
    return None


# (x int8 [M, K], w int8 [N, K]) -> int32 [M, N] for compiled graphs: the inductor's own `_int_mm` in a
# frozen CPU graph, with the scale product after it, ran 25-300x slower than the oneDNN call (its out=
# variant through the C++ wrapper, or a plain loop); an operator of our own stays an extern call.
INT8_MM_OP = define_graph_op("int8_mm", "(Tensor x, Tensor w) -> Tensor", lambda x, w: torch._int_mm(x, w.t()),
                             lambda x, w: x.new_empty((x.shape[0], w.shape[0]), dtype=torch.int32)) \
    if hasattr(torch, "_int_mm") else None


# (x fp32 [M, K], codes int8 [N, K], scales fp32 [N]) -> fp32 [M, N] on the native GEMV, for compiled graphs
INT8_GEMV_OP = define_graph_op("int8_gemv", "(Tensor x, Tensor w, Tensor scales) -> Tensor",
                               lambda x, w, s: native_gemv.gemv_int8_trusted(x, w, s),
                               lambda x, w, s: x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32))


def int8_dynamic_mm(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, mm=None) -> torch.Tensor:
    """x [M, K] @ dequant(w_int8 [N, K], w_scale fp32 [N]).T with x quantized per row -> fp32 [M, N].
    `mm` is the int8 product (default torch._int_mm on the transposed weight; INT8_MM_OP in graphs)."""
    q, sx = vectorwise_quantize(x)  # per row: absmax / 127 (an all-zero row gets scale 1)
    acc = torch._int_mm(q, w_int8.t()) if mm is None else mm(q, w_int8)
    return acc.float() * sx * w_scale


def int8_weight_mm(x: torch.Tensor, w_int8: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [M, K] (KERNEL_DTYPE) @ dequant(w_int8 [N, K], scales [N] KERNEL_DTYPE).T -> [M, N]."""
    return torch.ops.aten._weight_int8pack_mm(x, w_int8, scales)


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
              ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """lmkit's 4-bit storage -> (packed weight, scales_and_zeros, kernel group size).

    codes uint8 [N, K] in 0..15; scales fp32 [N, K / group_size]; zeros [N, K / group_size]
    (integers). N is padded to a multiple of 16 with zero rows (the caller slices the output).
    """
    k = codes.shape[1]
    kg = int4_kernel_group(group_size, k)
    if kg is None:
        raise ValueError(f"no int4 kernel group fits group_size={group_size}, in_features={k}")
    rep = group_size // kg
    s = scales.float().repeat_interleave(rep, dim=1)
    z = (8.0 - zeros.float().repeat_interleave(rep, dim=1)) * s
    packed, sz = pack_int4_tinygemm(codes, s, z, kg)
    return packed, sz, kg


def pack_int4_tinygemm(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """codes uint8 [N, K] in 0..15 with w = (q - 8) * scale + offset per group of `group` (a kernel
    group size; scales / offsets [N, K / group]) -> (packed weight, scales_and_zeros)."""
    n, k = codes.shape
    s, z = scales.float(), offsets.float()
    pad = -n % 16
    q = codes.to(torch.int32)
    if pad:
        q = torch.cat([q, torch.zeros(pad, k, dtype=torch.int32, device=q.device)])
        s = torch.cat([s, torch.zeros(pad, s.shape[1], device=s.device)])
        z = torch.cat([z, torch.zeros(pad, z.shape[1], device=z.device)])
    packed = huge_page_copy(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1))
    sz = torch.stack([s.t(), z.t()], dim=-1).to(KERNEL_DTYPE).contiguous()  # [K / group, N, 2]
    return packed, sz


def int4_weight_mm(x: torch.Tensor, packed: torch.Tensor, group: int, scales_and_zeros: torch.Tensor,
                   out_features: int) -> torch.Tensor:
    """x [M, K] (KERNEL_DTYPE) @ the packed int4 weight -> [M, out_features]."""
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros)
    return y if y.shape[-1] == out_features else y[:, :out_features]


def _kernel_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().to(KERNEL_DTYPE)


class Int8Kernel:
    """x [M, K] -> x @ (scales * w_int8).T + bias. A few rows (decoding) run lmkit's native GEMV where it
    builds (`lmkit.native_gemv.gemv_int8`: fp32 activations and result, the codes widened in registers;
    213M weights in 4.4 ms per pass against 7.7 for `_weight_int8pack_mm`, 2 threads), else
    `_weight_int8pack_mm` in KERNEL_DTYPE; from INT8_DENSE_ROWS rows on a bf16 copy of the weight and
    the dense GEMM. Its tensors are attributes, so a compiled decode step (infer/compiled_step.py) can
    take them in as constants and call the same kernels."""

    def __init__(self, w_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.w_int8 = w_int8
        self.scales = scales.to(KERNEL_DTYPE).contiguous()
        self.bias = _kernel_bias(bias)
        self.native = (w_int8.device.type == "cpu" and w_int8.dtype == torch.int8 and w_int8.dim() == 2
                       and w_int8.is_contiguous() and native_gemv.unavailable() is None)
        # what the kernel computes in (callers may write its input in it directly); None: any float dtype
        self.input_dtype = None if self.native else KERNEL_DTYPE
        self.scales_fp32 = scales.float().contiguous() if self.native else None
        self.bias_fp32 = None if bias is None or not self.native else bias.detach().float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.native and x.shape[0] <= native_gemv.MAX_GEMV_ROWS:
            return native_gemv.gemv_int8_trusted(x, self.w_int8, self.scales_fp32, self.bias_fp32)
        x = x.to(KERNEL_DTYPE).contiguous()
        if x.shape[0] >= INT8_DENSE_ROWS:
            return F.linear(x, self.w_int8.to(KERNEL_DTYPE) * self.scales[:, None], self.bias)
        y = int8_weight_mm(x, self.w_int8, self.scales)
        return y if self.bias is None else y + self.bias


class Int4Kernel:
    """x [M, K] -> x @ W.T + bias in KERNEL_DTYPE on the packed int4 layout (`pack_int4_tinygemm`):
    packed weight, scales_and_zeros, kernel group size, out_features (the packed rows are padded)."""

    input_dtype = KERNEL_DTYPE

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group: int, out_features: int,
                 bias: torch.Tensor | None) -> None:
        self.packed, self.scales_and_zeros, self.group = packed, scales_and_zeros, group
        self.out_features = out_features
        self.bias = _kernel_bias(bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = int4_weight_mm(x.to(KERNEL_DTYPE).contiguous(), self.packed, self.group, self.scales_and_zeros,
                           self.out_features)
        return y if self.bias is None else y + self.bias


class Int8DynamicKernel:
    """x [M, K] -> fp32 x @ W.T + bias with x quantized per row at run time (w8a8), every M: the
    int8 GEMM is also about 2x the dense bf16 GEMM at prompt lengths (1024x5632, 512 rows: 3.2 vs
    6.5 ms). The codes stay [N, K] row-major, which torch._int_mm reads as its transposed operand."""

    input_dtype = None  # quantizes whatever float dtype comes in

    def __init__(self, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.w_int8 = w_int8
        self.w_scale = w_scale.float().contiguous()
        self.bias = None if bias is None else bias.detach().float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_dynamic_mm(x, self.w_int8, self.w_scale)
        return y if self.bias is None else y + self.bias


def int4_linear_fn(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                   bias: torch.Tensor | None) -> Int4Kernel:
    """x [M, K] -> x @ W.T + bias in KERNEL_DTYPE for lmkit's 4-bit groups (codes uint8 [N, K] in 0..15)."""
    packed, sz, group = pack_int4(codes, scales, zeros, group_size)
    return Int4Kernel(packed, sz, group, codes.shape[0], bias)


def int4_offset_linear_fn(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group: int,
                          bias: torch.Tensor | None) -> Int4Kernel:
    """x [M, K] -> x @ W.T + bias in KERNEL_DTYPE for w = (q - 8) * scale + offset in groups of `group`
    (a kernel group size), the kernel's own form (codes uint8 [N, K] in 0..15)."""
    packed, sz = pack_int4_tinygemm(codes, scales, offsets, group)
    return Int4Kernel(packed, sz, group, codes.shape[0], bias)
