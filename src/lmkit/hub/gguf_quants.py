"""GGML block quantisation formats (the tensor types inside GGUF files), in numpy.

Each format cuts a row into blocks and stores each block as a few scale bytes plus packed
integer codes. The quantisers follow llama.cpp's reference C (ggml-quants.c:
`quantize_row_*_ref`, the path `llama-quantize` takes without an importance matrix)
operation by operation in float32, so the bytes match what llama.cpp writes; the
dequantisers follow `dequantize_row_*`.

  type  block  bytes  layout of one block                        value
  Q8_0    32     34   d:f16, q:int8[32]                          d*q
  Q4_0    32     18   d:f16, q:4bit[32] (lo nibbles = 0..15,     d*(q-8)
                      hi nibbles = 16..31)
  Q5_0    32     22   d:f16, qh:u32 (5th bits), q:4bit[32]       d*(q-16)
  Q4_K   256    144   d:f16, dmin:f16, 8 x (6-bit scale,         d*sc*q - dmin*m
                      6-bit min) in 12 bytes, q:4bit[256]        (8 sub-blocks of 32)
  Q6_K   256    210   ql:4 low bits[256], qh:2 high bits[256],   d*sc*(q-32)
                      sc:int8[16], d:f16                         (16 sub-blocks of 16)

F32 / F16 / BF16 are plain arrays. Sums inside a block run sequentially in float32 as the
C loops do (numpy's pairwise `sum` would round differently), so every format is bit-equal to
ggml-quants.c as ISO C reads it (each product and sum rounded on its own). That is how
llama.cpp builds it: ggml-base, which holds the quantizers, is compiled for generic x86-64, so
`llama-quantize` (llama-cpp-python 0.3.36 here) writes the same bytes as lmkit. A build that
lets the compiler fuse multiply-adds there (FMA, e.g. -march=native on all of ggml) picks a
different scale in a few percent of Q4_K / Q6_K blocks: equally valid, not byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmkit.errors import CheckpointError


@dataclass(frozen=True)
class GGMLType:
    """One GGML tensor type: its id in GGUF files, values per block and bytes per block."""

    name: str
    id: int
    block_size: int
    type_size: int


TYPES = {t.id: t for t in (
    GGMLType("F32", 0, 1, 4), GGMLType("F16", 1, 1, 2), GGMLType("Q4_0", 2, 32, 18),
    GGMLType("Q5_0", 6, 32, 22), GGMLType("Q8_0", 8, 32, 34), GGMLType("Q4_K", 12, 256, 144),
    GGMLType("Q6_K", 14, 256, 210), GGMLType("BF16", 30, 1, 2),
)}
BY_NAME = {t.name: t for t in TYPES.values()}
QK_K = 256
_EPS = np.float32(1e-15)  # GROUP_MAX_EPS
_F32 = np.float32


def ggml_type(t: "int | str | GGMLType") -> GGMLType:
    """The type for a GGUF type id or name (CheckpointError for types lmkit does not read)."""
    if isinstance(t, GGMLType):
        return t
    found = TYPES.get(t) if isinstance(t, (int, np.integer)) else BY_NAME.get(str(t).upper())
    if found is None:
        readable = ", ".join(sorted(BY_NAME))
        raise CheckpointError(f"GGML tensor type {t!r} is not supported (lmkit reads {readable})")
    return found


def nbytes(t: GGMLType, n: int) -> int:
    """Bytes that `n` values of type `t` take."""
    return n // t.block_size * t.type_size


# ---- entry points ----------------------------------------------------------------------------
def quantize(x: np.ndarray, t: int | str) -> np.ndarray:
    """float array [..., n] -> uint8 array [..., n / block * bytes per block] of type `t`."""
    t = ggml_type(t)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if t.name == "F32":
        return x.view(np.uint8)
    if t.name == "F16":
        return x.astype(np.float16).view(np.uint8)
    if t.name == "BF16":
        return _to_bf16(x).view(np.uint8)
    if x.shape[-1] % t.block_size:
        raise CheckpointError(f"{t.name} needs rows of a multiple of {t.block_size} values, not {x.shape[-1]}")
    blocks = x.reshape(-1, t.block_size)
    out = _QUANTIZERS[t.name](blocks)
    assert out.shape[1] == t.type_size and out.dtype == np.uint8
    return out.reshape(*x.shape[:-1], x.shape[-1] // t.block_size * t.type_size)


def dequantize(raw: np.ndarray, t: int | str) -> np.ndarray:
    """uint8 array [..., bytes of a row] of type `t` -> float32 array [..., values of a row]."""
    t = ggml_type(t)
    raw = np.ascontiguousarray(raw).view(np.uint8)
    if t.name == "F32":
        return raw.view(np.float32).copy()
    if t.name == "F16":
        return raw.view(np.float16).astype(np.float32)
    if t.name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if raw.shape[-1] % t.type_size:
        raise CheckpointError(f"{t.name}: a row of {raw.shape[-1]} bytes is not whole blocks of {t.type_size}")
    blocks = raw.reshape(-1, t.type_size)
    out = _DEQUANTIZERS[t.name](blocks)
    return out.reshape(*raw.shape[:-1], raw.shape[-1] // t.type_size * t.block_size)


# ---- helpers -----------------------------------------------------------------------------------
def _to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even (ggml_compute_fp32_to_bf16); NaN stays a quiet NaN."""
    n = x.view(np.uint32).astype(np.uint64)
    nan = (n & 0x7FFFFFFF) > 0x7F800000
    rounded = (n + 0x7FFF + ((n >> 16) & 1)) >> 16
    return np.where(nan, (n >> 16) | 64, rounded).astype(np.uint16)


def _f16_bytes(d: np.ndarray) -> np.ndarray:
    """float32 [n] -> its fp16 (round to nearest even, as GGML_FP32_TO_FP16) as bytes [n, 2]."""
    return d.astype(np.float32).astype(np.float16).reshape(-1, 1).view(np.uint8)


def _f16(raw: np.ndarray) -> np.ndarray:
    """bytes [n, 2] -> float32 [n, 1]."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even (the float trick it uses rounds that way)."""
    return np.rint(v).astype(np.int32)


def _signed_absmax(blocks: np.ndarray) -> np.ndarray:
    """Per row, the value of largest magnitude (the first one on ties), as the C loops pick it."""
    i = np.abs(blocks).argmax(axis=1)
    return blocks[np.arange(len(blocks)), i]


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, _F32(0), _F32(1) / d).astype(np.float32)


def _seq_sum(terms) -> np.ndarray:
    """Sum the arrays in order, in float32 (a C `for` loop's `s += ...`)."""
    total = None
    for t in terms:
        total = t if total is None else (total + t).astype(np.float32)
    return total


def _mul_add(a, b, c) -> np.ndarray:
    """a*b + c in float32, rounded after the product and after the sum (no FMA)."""
    return ((np.asarray(a, np.float32) * np.asarray(b, np.float32)).astype(np.float32) + c).astype(np.float32)


def _seq_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise sum of a*b over the last axis, term by term as `s += a[i]*b[i]` (a float32 loop)."""
    return _dot_over_rows(np.ascontiguousarray(a.T), np.ascontiguousarray(b.T))


def _dot_over_rows(at: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """`_seq_dot` of transposed operands [n, b] (contiguous rows: the fast layout for the loop)."""
    total = at[0] * bt[0]
    term = np.empty_like(total)
    for i in range(1, len(at)):
        np.multiply(at[i], bt[i], out=term)
        total += term
    return total


# ---- Q8_0 / Q4_0 / Q5_0: one fp16 scale per 32 values --------------------------------------
def _quantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    d = (np.abs(blocks).max(axis=1) / _F32(127)).astype(np.float32)
    q = _round_half_away(blocks * _inverse(d)[:, None])
    return np.concatenate([_f16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=1)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf: halves round away from zero (v - trunc(v) is exact, so no double rounding)."""
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= _F32(0.5), np.sign(v), _F32(0))


def _dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks[:, :2]) * blocks[:, 2:].view(np.int8).astype(np.float32)


def _offset_codes(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 / Q5_0: d = max/-(levels/2), codes = min(levels-1, trunc(x/d + levels/2 + 0.5))."""
    d = (_signed_absmax(blocks) / _F32(-(levels // 2))).astype(np.float32)
    scaled = (blocks * _inverse(d)[:, None]).astype(np.float32) + _F32(levels // 2 + 0.5)
    codes = np.minimum(levels - 1, np.trunc(scaled).astype(np.int8)).astype(np.uint8)
    return d, codes


def _quantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    d, q = _offset_codes(blocks, 16)
    return np.concatenate([_f16_bytes(d), q[:, :16] | (q[:, 16:] << 4)], axis=1)


def _q4_0_codes(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 codes centred (q - 8), int8 [nb, 32]."""
    qs = blocks[:, 2:]
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - np.int8(8)


def _dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks[:, :2]) * _q4_0_codes(blocks).astype(np.float32)


def _quantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    d, q = _offset_codes(blocks, 32)
    high = (q >> 4).astype(np.uint32)
    qh = (high << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return np.concatenate([_f16_bytes(d), qh.astype("<u4").reshape(-1, 1).view(np.uint8),
                           (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)], axis=1)


def _q5_0_codes(blocks: np.ndarray) -> np.ndarray:
    """Q5_0 codes centred (q - 16), int8 [nb, 32]."""
    qh = np.ascontiguousarray(blocks[:, 2:6]).view("<u4")
    high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    qs = blocks[:, 6:]
    return (np.concatenate([qs & 0x0F, qs >> 4], axis=1) | (high << 4)).astype(np.int8) - np.int8(16)


def _dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks[:, :2]) * _q5_0_codes(blocks).astype(np.float32)


# ---- Q4_K: 8 sub-blocks of 32 with a 6-bit scale and min each -------------------------------
def _make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                      nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants (squared error) for rows x [b, n] with weights w: the codes
    L [b, n], the scale and -min of each row, searching nstep+1 scales around the range
    (each step measured from the best min found so far, as the C loop does). Works on the
    transposed [n, b] arrays so that the per-element loops run over contiguous memory."""
    lo = np.minimum(x.min(axis=1), _F32(0))
    hi = x.max(axis=1)
    x, w = np.ascontiguousarray(x.T), np.ascontiguousarray(w.T)  # [n, b]
    sum_w = _seq_sum(w)
    sum_x = _dot_over_rows(w, x)
    flat = hi == lo
    flat_min = -lo
    x = np.where(flat, _F32(0), x).astype(np.float32)  # flat rows: codes 0, scale 0
    lo = np.where(flat, _F32(-1), lo).astype(np.float32)
    hi = np.where(flat, _F32(0), hi).astype(np.float32)
    iscale = (_F32(nmax) / (hi - lo)).astype(np.float32)
    scale = (_F32(1) / iscale).astype(np.float32)
    L = np.clip(_nearest_int(iscale * (x - lo)), 0, nmax)

    def error(s, m, codes):
        diff = _mul_add(s, codes.astype(np.float32), m) - x
        return _dot_over_rows(w, diff * diff)

    best = error(scale, lo, L)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for step in range(nstep + 1):
            top = (_mul_add(_F32(rdelta), _F32(step), _F32(rmin)) + _F32(nmax)).astype(np.float32)
            iscale = (top / (hi - lo)).astype(np.float32)
            aux = np.clip(_nearest_int(iscale * (x - lo)), 0, nmax)
            lf = aux.astype(np.float32)
            wl = w * lf
            sum_l = _dot_over_rows(w, lf)
            sum_l2 = _dot_over_rows(wl, lf)
            sum_xl = _dot_over_rows(wl, x)
            D = _mul_add(sum_w, sum_l2, -(sum_l * sum_l))
            this_scale = _mul_add(sum_w, sum_xl, -(sum_x * sum_l)) / D
            this_min = _mul_add(sum_l2, sum_x, -(sum_l * sum_xl)) / D
            pos = this_min > 0
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(np.float32)
            this_min = np.where(pos, _F32(0), this_min).astype(np.float32)
            cur = error(this_scale, this_min, aux)
            better = (D > 0) & (cur < best) & ~flat
            L = np.where(better, aux, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            lo = np.where(better, this_min, lo)
    scale = np.where(flat, _F32(0), scale).astype(np.float32)
    the_min = np.where(flat, flat_min, -lo)
    return np.where(flat, 0, L).T, scale, the_min.astype(np.float32)


def _quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    nb = len(blocks)
    sub = blocks.reshape(nb * 8, 32)
    sum_x2 = _seq_dot(sub, sub)
    av_x = np.sqrt((sum_x2 / _F32(32)).astype(np.float32))
    weights = (av_x[:, None] + np.abs(sub)).astype(np.float32)
    L, scales, mins = _make_qkx2_quants(sub, weights, 15, -1.0, 0.1, 20)
    scales, mins, L = scales.reshape(nb, 8), mins.reshape(nb, 8), L.reshape(nb, 8, 32)
    max_scale = np.maximum(scales.max(axis=1), _F32(0))
    max_min = np.maximum(mins.max(axis=1), _F32(0))
    inv_scale = np.where(max_scale > 0, _F32(63) / np.where(max_scale > 0, max_scale, _F32(1)), _F32(0))
    inv_min = np.where(max_min > 0, _F32(63) / np.where(max_min > 0, max_min, _F32(1)), _F32(0))
    ls = np.minimum(63, _nearest_int((inv_scale[:, None] * scales).astype(np.float32)) & 0xFF).astype(np.uint8)
    lm = np.minimum(63, _nearest_int((inv_min[:, None] * mins).astype(np.float32)) & 0xFF).astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    d16 = _f16_bytes((max_scale / _F32(63)).astype(np.float32))
    dmin16 = _f16_bytes((max_min / _F32(63)).astype(np.float32))
    d = (_f16(d16) * ls.astype(np.float32)).astype(np.float32)  # [nb, 8]
    dm = (_f16(dmin16) * lm.astype(np.float32)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = _nearest_int(((blocks.reshape(nb, 8, 32) + dm[..., None]).astype(np.float32)
                                / d[..., None]).astype(np.float32))
    L = np.where((d == 0)[..., None], L, np.clip(requant, 0, 15)).astype(np.uint8)
    L = L.reshape(nb, 4, 2, 32)  # each 64 values: the first 32 in low nibbles, the next 32 in high ones
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([d16, dmin16, packed, qs], axis=1)


def _q4_k_scale_min(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for all 8 sub-blocks: 12 bytes -> (scales [b, 8], mins [b, 8])."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc, mn


def _q4_k_scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sub-block of 32: (d * scale, dmin * min), float32 [nb, 8] each."""
    sc, mn = _q4_k_scale_min(blocks[:, 4:16])
    return _f16(blocks[:, 0:2]) * sc.astype(np.float32), _f16(blocks[:, 2:4]) * mn.astype(np.float32)


def _q4_k_codes(blocks: np.ndarray) -> np.ndarray:
    """Q4_K codes 0..15, int8 [nb, 256] (each 64 values: 32 low nibbles, then 32 high ones)."""
    qs = blocks[:, 16:].reshape(len(blocks), 4, 1, 32)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(len(blocks), QK_K).astype(np.int8)


def _dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    nb = len(blocks)
    d, dm = _q4_k_scales(blocks)
    q = _q4_k_codes(blocks).reshape(nb, 8, 32).astype(np.float32)
    return (d[..., None] * q - dm[..., None]).reshape(nb, QK_K)


# ---- Q6_K: 16 sub-blocks of 16 with an int8 scale each ----------------------------------------
def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants with rmse_type 1 (weights x^2), no importance: codes L (0..2*nmax-1)
    and the scale of each row of x [b, n], trying 18 scales around -nmax/max (on the transposed
    [n, b] arrays, as `_make_qkx2_quants`)."""
    mx = _signed_absmax(x)
    zero = np.abs(mx) < _EPS
    safe_mx = np.where(zero, _F32(1), mx).astype(np.float32)
    x = np.ascontiguousarray(x.T)
    w = x * x
    wx = w * x

    def fit(iscale):
        ls = np.clip(_nearest_int(iscale * x), -nmax, nmax - 1)
        lf = ls.astype(np.float32)
        return ls, _dot_over_rows(wx, lf), _dot_over_rows(w * lf, lf)

    iscale = (_F32(-nmax) / safe_mx).astype(np.float32)
    L, sumlx, suml2 = fit(iscale)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, _F32(0)).astype(np.float32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = (-(_F32(nmax) + (_F32(0.1) * _F32(step))).astype(np.float32) / safe_mx).astype(np.float32)
        ls, sumlx, suml2 = fit(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = (sumlx / suml2).astype(np.float32)
        L = np.where(better, ls, L)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, new_scale * sumlx, best)
    L = np.where(zero, -nmax, L) + nmax
    return L.T, np.where(zero, _F32(0), scale).astype(np.float32)


def _quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    nb = len(blocks)
    L, scales = _make_qx_quants(blocks.reshape(nb * 16, 16), 32)
    L, scales = L.reshape(nb, 16, 16), scales.reshape(nb, 16)
    max_scale = _signed_absmax(scales)
    empty = np.abs(max_scale) < _EPS
    safe = np.where(empty, _F32(1), max_scale).astype(np.float32)
    iscale = (_F32(-128) / safe).astype(np.float32)
    d16 = _f16_bytes(np.where(empty, _F32(0), (_F32(1) / iscale).astype(np.float32)))
    sc = np.minimum(127, _nearest_int((iscale[:, None] * scales).astype(np.float32))).astype(np.int8)
    d = (_f16(d16) * sc.astype(np.float32)).astype(np.float32)  # [nb, 16]
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = _nearest_int((blocks.reshape(nb, 16, 16) / d[..., None]).astype(np.float32))
    L = np.where((d == 0)[..., None], L, np.clip(requant, -32, 31) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)
    ql = np.concatenate([(L[:, :, 0] & 0x0F) | ((L[:, :, 2] & 0x0F) << 4),
                         (L[:, :, 1] & 0x0F) | ((L[:, :, 3] & 0x0F) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d16], axis=1)
    out[empty] = 0
    return out


def _q6_k_codes(blocks: np.ndarray) -> np.ndarray:
    """Q6_K codes centred (q - 32), int8 [nb, 256]."""
    nb = len(blocks)
    ql = blocks[:, :128].reshape(nb, 2, 2, 32)  # [half, l / l+32, 32]
    qh = blocks[:, 128:192].reshape(nb, 2, 1, 32)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # [nb, 2, 4, 32]: values 0-31, 32-63, 64-95, 96-127
    high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    return ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(nb, QK_K)


def _q6_k_scales(blocks: np.ndarray) -> np.ndarray:
    """d * scale of each sub-block of 16, float32 [nb, 16]."""
    return _f16(blocks[:, 208:210]) * blocks[:, 192:208].view(np.int8).astype(np.float32)


def _dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    nb = len(blocks)
    q = _q6_k_codes(blocks).astype(np.float32).reshape(nb, 16, 16)
    return (_q6_k_scales(blocks)[..., None] * q).reshape(nb, QK_K)


_QUANTIZERS = {"Q8_0": _quantize_q8_0, "Q4_0": _quantize_q4_0, "Q5_0": _quantize_q5_0,
               "Q4_K": _quantize_q4_k, "Q6_K": _quantize_q6_k}
_DEQUANTIZERS = {"Q8_0": _dequantize_q8_0, "Q4_0": _dequantize_q4_0, "Q5_0": _dequantize_q5_0,
                 "Q4_K": _dequantize_q4_k, "Q6_K": _dequantize_q6_k}


# ---- for integer layers ------------------------------------------------------------------------
def integer_groups(raw: np.ndarray, t: int | str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The blocks of a quantized row-major matrix as integer layers take them: (codes int8
    [rows, n], scales float32 [rows, n / group], offsets float32 [rows, n / group], group), with
    value = code * scale + offset (offset 0 except Q4_K).

    Codes are centred: Q8_0 q (group 32), Q4_0 q - 8 and Q5_0 q - 16 (32), Q4_K q - 8 with
    offset 8*d*sc - dmin*m (32: `torch._weight_int4pack_mm`'s (q - 8) * scale + zero form),
    Q6_K q - 32 (16). Q8_0 / Q4_0 / Q5_0 / Q6_K give `dequantize`'s floats exactly; Q4_K up to
    float32 rounding of the rewritten offset."""
    t = ggml_type(t)
    if t.name not in ("Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"):
        raise CheckpointError(f"{t.name} is not an integer block format")
    raw = np.ascontiguousarray(raw).view(np.uint8)
    rows = raw.shape[0]
    blocks = raw.reshape(-1, t.type_size)
    offsets = None
    if t.name == "Q8_0":
        codes, scales = blocks[:, 2:].view(np.int8), _f16(blocks[:, :2])
    elif t.name in ("Q4_0", "Q5_0"):
        codes, scales = _q4_0_codes(blocks) if t.name == "Q4_0" else _q5_0_codes(blocks), _f16(blocks[:, :2])
    elif t.name == "Q4_K":
        d, dm = _q4_k_scales(blocks)
        codes = _q4_k_codes(blocks) - np.int8(8)
        scales, offsets = d, (d * np.float32(8) - dm).astype(np.float32)
    else:
        codes, scales = _q6_k_codes(blocks), _q6_k_scales(blocks)
    group = 16 if t.name == "Q6_K" else 32
    codes = np.ascontiguousarray(codes).reshape(rows, -1)
    scales = np.ascontiguousarray(scales, dtype=np.float32).reshape(rows, -1)
    offsets = np.zeros_like(scales) if offsets is None else offsets.reshape(rows, -1)
    return codes, scales, offsets, group
