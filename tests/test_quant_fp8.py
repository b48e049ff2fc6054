"""FP8 E4M3/E5M2, BF16, FP16, TF32: exact rounding vs torch's casts and a bit-level TF32
oracle; error bounds (hypothesis); saturation semantics; scaled FP8."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.quant.float_formats import FORMATS, error_report, round_to_format
from lmkit.quant.fp8 import fp8_available, quantize_fp8, to_fp8

needs_fp8 = pytest.mark.skipif(not fp8_available(), reason="this torch has no float8 dtypes")

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@needs_fp8
@settings(max_examples=200, deadline=None)
@given(values=st.lists(finite32, min_size=1, max_size=64), fmt=st.sampled_from(["fp16", "bf16", "e4m3", "e5m2"]))
def test_rounding_matches_torch_casts_in_range(values, fmt):
    f = FORMATS[fmt]
    x = torch.tensor(values, dtype=torch.float32)
    x = x[x.abs() <= f.max]  # in range: every converter agrees (overflow is tested below)
    if x.numel() == 0:
        return
    ours = round_to_format(x, fmt)
    ref = x.to(f.torch_dtype).float()
    assert torch.equal(ours, ref), (x[ours != ref], ours[ours != ref], ref[ours != ref])


def tf32_bits_oracle(x: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest-even of the 13 low mantissa bits of the fp32 encoding."""
    b = x.view(torch.int32).long() & 0xFFFFFFFF
    lsb = (b >> 13) & 1
    b = (b + 0xFFF + lsb) & ~0x1FFF & 0xFFFFFFFF
    b = torch.where(b >= 2**31, b - 2**32, b)
    return b.to(torch.int32).view(torch.float32)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(-2.0**100, 2.0**100, allow_nan=False, width=32), min_size=1, max_size=64))
def test_tf32_matches_bit_oracle(values):
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(round_to_format(x, "tf32"), tf32_bits_oracle(x))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(finite32, min_size=1, max_size=32), fmt=st.sampled_from(sorted(FORMATS)))
def test_error_bounds(values, fmt):
    f = FORMATS[fmt]
    x = torch.tensor(values, dtype=torch.float32)
    x = x[x.abs() <= f.max]
    r = round_to_format(x, fmt)
    err = (r - x).abs()
    normal = x.abs() >= f.smallest_normal
    assert torch.all(err[normal] <= x[normal].abs() * f.max_relative_error)
    assert torch.all(err[~normal] <= f.smallest_subnormal / 2)


def test_format_table():
    assert FORMATS["e4m3"].max == float(torch.finfo(torch.float8_e4m3fn).max) if fp8_available() else True
    assert FORMATS["e5m2"].smallest_normal == 2.0**-14
    assert FORMATS["bf16"].smallest_normal == float(torch.finfo(torch.bfloat16).tiny)
    assert FORMATS["fp16"].eps == float(torch.finfo(torch.float16).eps)
    assert FORMATS["tf32"].bits == 19
    # bf16 keeps fp32's range, fp16 does not
    big = torch.tensor([1e10])
    assert math.isfinite(float(round_to_format(big, "bf16", saturate=False)))
    assert math.isinf(float(round_to_format(big, "fp16", saturate=False)))
    rep = error_report(torch.linspace(0.1, 10, 1000))
    assert rep["fp16"]["max_rel"] < rep["bf16"]["max_rel"] < rep["e4m3"]["max_rel"] < rep["e5m2"]["max_rel"]


@needs_fp8
def test_saturation_semantics():
    x = torch.tensor([1000.0, -1000.0, 100.0, float("inf")])
    assert to_fp8(x, "e4m3").float().tolist() == [448.0, -448.0, 96.0, 448.0]
    nan = to_fp8(x, "e4m3", saturate=False).float()
    assert torch.isnan(nan[[0, 1, 3]]).all() and nan[2] == 96.0
    assert to_fp8(torch.tensor([1e6, -1e6]), "e5m2").float().tolist() == [57344.0, -57344.0]
    inf = to_fp8(torch.tensor([1e6, -1e6, 57344.0]), "e5m2", saturate=False).float().tolist()
    assert inf == [float("inf"), float("-inf"), 57344.0]
    with pytest.raises(ValueError, match="not an FP8 format"):
        to_fp8(x, "bf16")


@needs_fp8
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-20, 20), fmt=st.sampled_from(["e4m3", "e5m2"]),
       per_row=st.booleans())
def test_scaled_fp8_relative_error(seed, log_scale, fmt, per_row):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 32, generator=g) * 2.0**log_scale
    q = quantize_fp8(x, fmt, per_row=per_row)
    assert q.data.dtype == FORMATS[fmt].torch_dtype and q.data.element_size() == 1
    deq = q.dequantize()
    f = FORMATS[fmt]
    normal = (x / q.scale).abs() >= f.smallest_normal
    rel = ((deq - x).abs() / x.abs())[normal]
    assert torch.all(rel <= f.max_relative_error * (1 + 1e-5))
