"""LLM.int8(): the outlier phenomenon reproduced, codes vs bitsandbytes, the exact int GEMM,
and the int8 / LLM.int8 / RTN Linear modules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lmkit.quant.linear import GroupQuantLinear, Int8Linear, LLMInt8Linear
from lmkit.quant.llm_int8 import (
    int8_matmul,
    llm_int8_matmul,
    outlier_columns,
    vectorwise_int8_matmul,
    vectorwise_quantize,
)


def planted(seed=0, n=64, k=512, out=256, mag=60.0, cols=(3, 100, 300, 411)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    x[:, list(cols)] = torch.randn(n, len(cols), generator=g).sign() * mag * (0.5 + torch.rand(n, len(cols), generator=g))
    w = torch.randn(out, k, generator=g) * 0.05
    return x, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outlier_decomposition_is_10x_more_accurate(seed):
    x, w = planted(seed)
    ref = x.double() @ w.double().T
    err_plain = (vectorwise_int8_matmul(x, w).double() - ref).norm() / ref.norm()
    err_llm = (llm_int8_matmul(x, w, threshold=6.0).double() - ref).norm() / ref.norm()
    assert err_plain >= 10 * err_llm, (float(err_plain), float(err_llm))
    # without outliers both are the same computation
    xs = torch.randn(32, 512)
    assert torch.equal(llm_int8_matmul(xs, w, threshold=6.0), vectorwise_int8_matmul(xs, w))


def test_outlier_columns():
    x, _ = planted(0)
    assert outlier_columns(x, 6.0).nonzero().flatten().tolist() == [3, 100, 300, 411]


def _bnb():
    try:
        import bitsandbytes.functional as bf

        bf.int8_vectorwise_quant(torch.randn(2, 8))
        return bf
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"bitsandbytes int8 does not run on this CPU: {exc}")


def test_vectorwise_codes_match_bitsandbytes():
    bf = _bnb()
    x, _ = planted(1, n=16, k=128, cols=(5,))
    q_ref, absmax_ref, outliers = bf.int8_vectorwise_quant(x, threshold=6.0)
    assert outliers.tolist() == [5]
    q, s = vectorwise_quantize(x.masked_fill(outlier_columns(x)[None], 0.0), dim=1)
    assert torch.equal(q, q_ref)
    torch.testing.assert_close(s.flatten() * 127, absmax_ref)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 40), out=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_int8_matmul_is_exact(n, k, out, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (out, k), generator=g, dtype=torch.int8)
    exact = a.long() @ b.long().T
    assert torch.equal(int8_matmul(a, b).long(), exact)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-3, 3))
def test_vectorwise_error_bound(seed, log_scale):
    """|x·w - deq| <= sum_j (|x_j| e_w + |w_j| e_x + e_x e_w) with e = scale/2 (per row/channel)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 32, generator=g) * 10**log_scale
    w = torch.randn(8, 32, generator=g)
    y = vectorwise_int8_matmul(x, w).double()
    ex = x.abs().amax(1, keepdim=True).double() / 127 / 2
    ew = w.abs().amax(1, keepdim=True).double() / 127 / 2
    bound = x.abs().double().sum(1, keepdim=True) * ew.T + ex * w.abs().double().sum(1)[None] + 32 * ex * ew.T
    assert torch.all((y - x.double() @ w.double().T).abs() <= bound * (1 + 1e-6) + 1e-9)


def test_linear_modules():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    x, _ = planted(0, n=10, k=128, cols=(7,))
    ref = lin(x)
    for m, tol in [(Int8Linear.from_linear(lin), 0.01), (LLMInt8Linear.from_linear(lin), 0.02),
                   (GroupQuantLinear.from_linear(lin, 8, 32), 0.01), (GroupQuantLinear.from_linear(lin, 4, 32), 0.15)]:
        assert all(not p.requires_grad for p in m.parameters())
        assert "weight" not in dict(m.named_parameters())
        y = m(x)
        assert y.shape == ref.shape
        assert (y - ref).norm() / ref.norm() < tol, type(m).__name__
        # a fresh module of the same shape loads the state dict and computes the same
        fresh = type(m)(**{"in_features": 128, "out_features": 64, "bias": True,
                          **({"bits": m.bits, "group_size": m.group_size} if hasattr(m, "bits") else {})})
        fresh.load_state_dict(m.state_dict())
        torch.testing.assert_close(fresh(x), y)
    # weight memory: int8 ~ 4x, 4-bit groups ~ 7x smaller than fp32
    fp32 = lin.weight.numel() * 4
    assert fp32 / Int8Linear.from_linear(lin).weight_bytes() > 3.5
    assert fp32 / GroupQuantLinear.from_linear(lin, 4, 64).weight_bytes() > 6
    # plain int8 rows of the *activations* would suffer from the outlier column; LLM.int8 does not
    plain = Int8Linear.from_linear(lin)
    assert (LLMInt8Linear.from_linear(lin)(x) - ref).norm() < (plain(x) - ref).norm() * 3


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="does not divide"):
        GroupQuantLinear.from_linear(nn.Linear(100, 8), 4, 64)
