"""absmax / zero-point quantization per tensor, channel and block: error bounds (hypothesis),
integer codes vs PyTorch's own quantized tensors, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.quant.affine import quantize_affine

pytestmark = pytest.mark.filterwarnings("ignore:.*quantize_per.*deprecated")


def _expand_scale(a, x):
    """Per-element scale, computed the obvious way per granularity (independent of the module)."""
    if a.granularity == "tensor":
        return a.scale.expand(x.shape)
    if a.granularity == "channel":
        shape = [1] * x.dim()
        shape[a.axis % x.dim()] = -1
        return a.scale.reshape(shape).expand(x.shape)
    axis = a.axis % x.dim()
    moved = x.movedim(axis, -1)
    s = a.scale.reshape(*moved.shape[:-1], -1).repeat_interleave(a.block_size, dim=-1)
    return s.movedim(-1, axis)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 8),
    cols=st.sampled_from([4, 8, 16, 32]),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["tensor", "channel", "block"]),
    axis=st.sampled_from([0, 1, -1]),
    shift=st.floats(-3, 3),
    log_scale=st.floats(-6, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_error_at_most_half_a_step(rows, cols, bits, symmetric, granularity, axis, shift, log_scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=g) + shift) * 10.0**log_scale
    block = (rows if axis == 0 else 4) if granularity == "block" else None
    a = quantize_affine(x, bits=bits, symmetric=symmetric, granularity=granularity, axis=axis, block_size=block)
    deq = a.dequantize()
    assert deq.shape == x.shape and deq.dtype == x.dtype
    step = _expand_scale(a, x)
    assert torch.all((x - deq).abs() <= step / 2 * (1 + 1e-5) + 1e-30)
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert int(a.q.min()) >= lo and int(a.q.max()) <= hi
    if not symmetric:  # zero is exactly representable
        z = torch.zeros_like(x)
        az = quantize_affine(torch.cat([x, z]), bits=bits, symmetric=False, granularity="tensor")
        assert torch.all(az.dequantize()[rows:] == 0)


@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_codes_match_torch_quantize_per_channel(axis):
    torch.manual_seed(0)
    x = torch.randn(16, 24) * torch.linspace(0.1, 5, 24)
    a = quantize_affine(x, bits=8, symmetric=True, granularity="channel", axis=axis)
    ref = torch.quantize_per_channel(x, a.scale.double(), torch.zeros(x.shape[axis], dtype=torch.long), axis, torch.qint8)
    diff = (a.q.int() - ref.int_repr().int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.995  # ties may round either way
    b = quantize_affine(x, bits=8, symmetric=False, granularity="channel", axis=axis)
    ref = torch.quantize_per_channel(x, b.scale.double(), b.zero_point.long(), axis, torch.quint8)
    diff = (b.q.int() - ref.int_repr().int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.995
    torch.testing.assert_close(b.dequantize(), ref.dequantize(), atol=float(b.scale.max()), rtol=0)


def test_per_tensor_matches_torch_quantize_per_tensor():
    torch.manual_seed(1)
    x = torch.randn(50) * 3 + 1
    a = quantize_affine(x, bits=8, symmetric=False)
    ref = torch.quantize_per_tensor(x, float(a.scale), int(a.zero_point), torch.quint8)
    assert (a.q.int() - ref.int_repr().int()).abs().max() <= 1
    # absmax: the scale is max|x| / 127
    s = quantize_affine(x, bits=8, symmetric=True)
    assert torch.isclose(s.scale, x.abs().max() / 127)


def test_finer_granularity_has_smaller_error_with_outliers():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.02
    w[5, 17] = 3.0  # one outlier weight
    errs = {}
    for gran, kw in [("tensor", {}), ("channel", {"axis": 0}), ("block", {"axis": 1, "block_size": 32})]:
        errs[gran] = (quantize_affine(w, 8, True, gran, **kw).dequantize() - w).pow(2).mean()
    assert errs["block"] < errs["channel"] < errs["tensor"] / 10


def test_bad_input():
    x = torch.randn(6, 10)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_affine(x, granularity="block", axis=1, block_size=4)
    with pytest.raises(ValueError, match="granularity"):
        quantize_affine(x, granularity="row")
    with pytest.raises(ValueError, match="bits"):
        quantize_affine(x, bits=1)
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_affine(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError):
        quantize_affine(torch.arange(4))
