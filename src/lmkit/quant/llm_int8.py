"""LLM.int8() (Dettmers et al. 2022): vector-wise int8 matmul + mixed-precision decomposition.

Vector-wise quantization: for Y = X Wᵀ with X [n, k] and an nn.Linear weight W [out, k],
every *row* of X gets its own absmax scale c_x[i] = max_j |X[i, j]| / 127 and every output
channel of W (a row of W, i.e. a column of the paper's W [k, out]) its own c_w[o]. Then
    Y[i, o] ≈ c_x[i] · c_w[o] · Σ_j Xq[i, j] · Wq[o, j]        (an exact int32 sum)

Outlier features: at model scale a few hidden dimensions (feature columns of X) carry values
of magnitude 20-60 in almost every token. A row's absmax is then set by its outlier, and all
other entries of the row fall onto a handful of int8 levels — the error explodes. LLM.int8()
finds the columns j where any |X[i, j]| > threshold (6.0), and computes
    Y = X[:, O] W[:, O]ᵀ  (floating point)  +  int8 matmul over the remaining columns
(混合精度分解). The outlier columns are few (< 1 %), so almost all compute stays int8.

In the Linear module the weight is stored only as int8 (+ one scale per output row); its
outlier columns are dequantized from int8 for the floating-point part, as bitsandbytes'
Linear8bitLt does with frozen weights. On CPU the int8 GEMM is simulated exactly with a
float matmul of integer values (exact while k·127² < 2²⁴, else float64).
"""

from __future__ import annotations

import torch

DEFAULT_THRESHOLD = 6.0


def vectorwise_quantize(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and fp32 scales: absmax over `dim` (the reduced vector shares one scale)."""
    xf = x.float()
    absmax = xf.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.clamp(torch.round(xf / scale), -127, 127).to(torch.int8)
    return q, scale


def int8_matmul(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """Exact Σ_j xq[i, j]·wq[o, j] of int8 matrices [n, k] x [out, k] -> fp32/fp64 integers."""
    k = xq.shape[-1]
    dt = torch.float32 if k * 127 * 127 < 2**24 else torch.float64
    return (xq.to(dt) @ wq.to(dt).T)


def vectorwise_int8_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Plain vector-wise int8: X quantized per row at run time, W already int8 per output row."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    xq, sx = vectorwise_quantize(x2, dim=1)
    y = int8_matmul(xq, wq) * sx.to(torch.float64 if wq.shape[1] * 16129 >= 2**24 else torch.float32) * w_scale.reshape(1, -1)
    return y.to(x.dtype).reshape(*shape[:-1], wq.shape[0])


def outlier_columns(x: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Bool mask over the last dim of x: features where any |value| > threshold."""
    return (x.reshape(-1, x.shape[-1]).abs() > threshold).any(dim=0)


def llm_int8_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                    threshold: float = DEFAULT_THRESHOLD, w_outlier: torch.Tensor | None = None) -> torch.Tensor:
    """LLM.int8() y = x Wᵀ with W given as int8 [out, k] + per-row scales [out].

    Outlier feature columns of x go through a floating-point matmul with `w_outlier` (the
    floating weight columns [out, n_outliers]; default: dequantized from int8).
    """
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float()
    mask = outlier_columns(x2, threshold) if threshold > 0 else torch.zeros(shape[-1], dtype=torch.bool)
    if mask.any():
        x_in = x2.masked_fill(mask[None, :], 0.0)  # outlier columns leave the int8 part
        idx = mask.nonzero().flatten()
        w_out = w_outlier if w_outlier is not None else wq[:, idx].float() * w_scale.reshape(-1, 1)
        y_fp = x2[:, idx] @ w_out.float().T
    else:
        x_in, y_fp = x2, None
    y = vectorwise_int8_linear(x_in, wq, w_scale).float()
    if y_fp is not None:
        y = y + y_fp
    return y.to(x.dtype).reshape(*shape[:-1], wq.shape[0])


def quantize_weight_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear weight [out, k] -> int8 [out, k], fp32 scales [out] (absmax per output channel)."""
    q, s = vectorwise_quantize(w, dim=1)
    return q, s.reshape(-1)


def llm_int8_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """LLM.int8() of two float matrices: outlier columns of x multiply the *floating* columns of w."""
    wq, ws = quantize_weight_rows(w)
    mask = outlier_columns(x, threshold) if threshold > 0 else None
    w_out = w[:, mask].float() if mask is not None and mask.any() else None
    return llm_int8_linear(x, wq, ws, threshold, w_out)


def vectorwise_int8_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Plain vector-wise int8 x Wᵀ of two float matrices (no outlier handling)."""
    wq, ws = quantize_weight_rows(w)
    return vectorwise_int8_linear(x, wq, ws)
