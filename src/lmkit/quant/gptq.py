"""GPTQ (Frantar et al. 2023): post-training quantization with second-order error feedback.

Round-to-nearest (RTN) quantizes every weight independently. GPTQ quantizes one input column
of W [out, in] at a time and spreads that column's rounding error onto the columns not yet
quantized, so the layer's *output* on calibration data stays close:
    minimize ||X Wᵀ - X Qᵀ||²   with  H = 2 XᵀX / n   (X: the layer's inputs, n rows)
For column i (OBS update, with H⁻¹ restricted to the columns still free):
    q_i = quant(w_i);   err = (w_i - q_i) / [H⁻¹]_ii;   w_j -= err · [H⁻¹]_ij   for j > i
The paper's three tricks, all implemented here:
  * the H⁻¹ rows needed are the rows of the upper Cholesky factor of H⁻¹ (no re-inversion),
  * "lazy batch" updates: columns are processed in blocks of `block_size` (128); inside a
    block updates touch only the block, the rest of W is updated once per block (one GEMM),
  * dampening: H += damp · mean(diag H) · I (damp = 0.01) keeps the Cholesky stable;
    dead inputs (diag H = 0) get H_ii = 1 and zero weight.
Groups: with group_size g, the (scale, zero) of columns [k·g, (k+1)·g) are computed from
the *updated* weights when the first column of the group is reached (as the reference code
does; here also when a group spans two lazy blocks, so any block size gives the same result). act_order (desc_act) quantizes columns in order of decreasing H_ii; then the group
parameters are computed up front from the original weights ("static groups") so that the
storage stays in column order — exactly GroupQuantLinear's format, the same as RTN.

Model level (`gptq_quantize`): layers are quantized sequentially in forward order; the
Hessians of each transformer block's Linears are collected with forward hooks on the
calibration batch *after* earlier blocks were already quantized, so later layers correct
for the errors of earlier ones.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from lmkit.models.module_tree import replace_module
from lmkit.quant.affine import affine_params, dequantize_with, qrange, quantize_with


def _group_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min-max (scale, zero) per row of w [out, cols], shapes [out, 1]."""
    scale, zero = affine_params(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), bits, symmetric=False)
    return scale, zero


@torch.no_grad()
def gptq_weight(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int | None = 64,
                block_size: int = 128, damp: float = 0.01, act_order: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ one weight matrix [out, in] given the Hessian H [in, in].

    Returns (codes uint8 [out, in], scales fp32 [out, n_groups], zeros fp32 [out, n_groups]).
    group_size None = one group per row.
    """
    w = w.detach().clone().float()
    out_f, cols = w.shape
    g = group_size or cols
    if cols % g:
        raise ValueError(f"group_size={g} does not divide in_features={cols}")
    if h.shape != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(h.shape)} does not fit a weight with {cols} input columns")
    if not 0 <= damp < 1:
        raise ValueError(f"damp={damp} must be in [0, 1)")
    _, maxq = qrange(bits, symmetric=False)
    h = h.detach().clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    n_groups = cols // g
    scales = torch.zeros(out_f, n_groups)
    zeros = torch.zeros(out_f, n_groups)
    if act_order:  # static groups from the original weights
        for k in range(n_groups):
            s, z = _group_params(w[:, k * g:(k + 1) * g], bits)
            scales[:, k], zeros[:, k] = s[:, 0], z[:, 0]
        perm = torch.argsort(torch.diag(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]
    else:
        perm = torch.arange(cols)
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    except RuntimeError as exc:  # pragma: no cover - numerically singular even after dampening
        raise ValueError(f"GPTQ: the Hessian is not positive definite even with damp={damp}; raise damp") from exc
    codes = torch.zeros(out_f, cols)
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            orig = int(perm[col])
            if act_order:
                k = orig // g
                scale, zero = scales[:, k:k + 1], zeros[:, k:k + 1]
            elif col % g == 0:
                upcoming = w1[:, i:i + g]
                need = g - upcoming.shape[1]
                if need > 0:  # the group runs past this block: apply the block's pending updates
                    rest = w[:, i2:i2 + need] - err1[:, :i] @ hinv[i1:i1 + i, i2:i2 + need]
                    upcoming = torch.cat([upcoming, rest], dim=1)
                scale, zero = _group_params(upcoming, bits)
                scales[:, col // g], zeros[:, col // g] = scale[:, 0], zero[:, 0]
            wc = w1[:, i:i + 1]
            q = quantize_with(wc, scale, zero, bits, symmetric=False)
            codes[:, col] = q[:, 0]
            deq = dequantize_with(q, scale, zero)
            e = (wc - deq) / hinv1[i, i]
            w1[:, i:] -= e @ hinv1[i:i + 1, i:]
            err1[:, i] = e[:, 0]
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if act_order:
        inv = torch.argsort(perm)
        codes = codes[:, inv]
    return codes.clamp(0, maxq).to(torch.uint8), scales, zeros


def dequantize_groups(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    out_f, cols = codes.shape
    g = cols // scales.shape[1]
    q = codes.float().reshape(out_f, -1, g)
    return ((q - zeros[..., None]) * scales[..., None]).reshape(out_f, cols)


# ---- model level --------------------------------------------------------------------------------
def _stage(name: str) -> str:
    """Modules of one transformer block are quantized together: 'layers.3.mlp.up_proj' -> 'layers.3'."""
    m = re.match(r"^(.*?layers\.\d+)\.", name)
    return m.group(1) if m else name


@torch.no_grad()
def gptq_quantize(model: nn.Module, names: list[str], calib: torch.Tensor, bits: int = 4, group_size: int | None = 64,
                  block_size: int = 128, damp: float = 0.01, act_order: bool = False, batch_size: int = 8,
                  progress: bool = False) -> None:
    """GPTQ the named nn.Linear modules of `model` in place (they become GPTQLinear).

    calib: LongTensor [n, seq_len] of token ids fed to `model(ids)` (or a list of such batches).
    """
    from lmkit.quant.linear import GPTQLinear

    if isinstance(calib, torch.Tensor):
        if calib.dim() != 2 or calib.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise ValueError("GPTQ calibration data must be token ids: a LongTensor [n_sequences, seq_len]")
        batches = list(calib.split(batch_size))
    else:
        batches = list(calib)
    if not batches:
        raise ValueError("GPTQ calibration data is empty")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stages: "OrderedDict[str, list[str]]" = OrderedDict()
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    for n in sorted(names, key=lambda n: order[n]):
        stages.setdefault(_stage(n), []).append(n)
    results = {}
    it = stages.items()
    if progress:
        from tqdm import tqdm

        it = tqdm(list(it), desc="GPTQ")
    for _, stage_names in it:
        hs: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        hooks = []
        for n in stage_names:
            lin = model.get_submodule(n)

            def hook(mod, inp, out, n=n):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
                hs[n] = hs.get(n, 0) + x.T @ x
                counts[n] = counts.get(n, 0) + x.shape[0]

            hooks.append(lin.register_forward_hook(hook))
        try:
            for b in batches:
                model(b.to(device))
        finally:
            for hk in hooks:
                hk.remove()
        for n in stage_names:
            lin = model.get_submodule(n)
            h = 2 * hs[n] / counts[n]
            codes, scales, zeros = gptq_weight(lin.weight, h.cpu(), bits, group_size, block_size, damp, act_order)
            lin.weight.copy_(dequantize_groups(codes, scales, zeros).to(lin.weight.dtype))  # later stages see it
            results[n] = (codes, scales, zeros, lin.bias)
    for n, (codes, scales, zeros, bias) in results.items():
        new = GPTQLinear.from_codes(codes, scales, zeros, bits, group_size or codes.shape[1], bias)
        replace_module(model, n, new.to(device))
    model.train(was_training)
