"""W8A8 (`quantize_model(m, "w8a8")`, `Int8DynamicLinear`): int8 weights per output channel, activations
quantized per row at run time, exact int32 products on torch._int_mm. The oracle is the vector-wise int8
matmul of LLM.int8() (quant/llm_int8.py), which simulates the same arithmetic in floating point."""

from __future__ import annotations

import pytest
import torch

from lmkit.quant.linear import Int8DynamicLinear, Int8Linear, merge_rows
from lmkit.quant.llm_int8 import vectorwise_int8_linear
from lmkit.quant.weight_kernels import INT8_MM_OP, Int8DynamicKernel


@pytest.mark.parametrize("k,n,rows,bias", [(17, 5, 3, True), (40, 33, 1, False), (1000, 7, 2, True),
                                           (64, 48, 64, False), (24, 1, 5, True)])
def test_kernel_equals_the_simulated_int8_matmul(k, n, rows, bias):
    """Odd shapes (K not a multiple of 16, one output, prompt-sized M) on the kernel: the same numbers as
    the float simulation of the same integer arithmetic, and close to the fp32 layer."""
    torch.manual_seed(k + n)
    lin = torch.nn.Linear(k, n, bias=bias)
    q = Int8DynamicLinear.from_linear(lin)
    assert q.kernel_reason(torch.device("cpu")) is None
    x = torch.randn(rows, k)
    with torch.no_grad():
        y = q(x)
        ref = vectorwise_int8_linear(x, q.weight_int8, q.weight_scale)
        ref = ref if lin.bias is None else ref + lin.bias
        torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
        dense = lin(x)
        assert (y - dense).norm() / dense.norm() < 0.03
    assert isinstance(q.kernel_fn(), Int8DynamicKernel)


def test_activation_rounding_is_per_row():
    """A row's scale comes from that row alone: scaling one row by 1000 leaves the other rows' results
    unchanged (a per-tensor scale would crush them), and an all-zero row gives the bias."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 8)
    q = Int8DynamicLinear.from_linear(lin)
    x = torch.randn(3, 32)
    with torch.no_grad():
        y = q(x)
        x2 = x.clone()
        x2[0] *= 1000
        x2[2] = 0
        y2 = q(x2)
    torch.testing.assert_close(y2[1], y[1])
    torch.testing.assert_close(y2[2], lin.bias.detach())


def test_without_the_kernel_it_simulates_the_same_numbers():
    """With gradients on (no kernel backward) the layer computes by simulation: same outputs."""
    torch.manual_seed(1)
    q = Int8DynamicLinear.from_linear(torch.nn.Linear(48, 20))
    x = torch.randn(4, 48)
    with torch.no_grad():
        fast = q(x)
    slow = q(x.clone().requires_grad_(True))
    torch.testing.assert_close(slow.detach(), fast, rtol=1e-6, atol=1e-6)


def test_merged_rows_are_exact():
    """q/k/v stacked into one module (the fused decode step's merge) compute the concatenated outputs."""
    torch.manual_seed(2)
    parts = [Int8DynamicLinear.from_linear(torch.nn.Linear(64, n)) for n in (64, 32, 32)]
    merged = merge_rows(parts)
    assert type(merged) is Int8DynamicLinear and merged.out_features == 128
    x = torch.randn(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), torch.cat([p(x) for p in parts], dim=-1), rtol=0, atol=0)
    assert merge_rows([parts[0], Int8Linear.from_linear(torch.nn.Linear(64, 8))]) is None  # kinds differ


def test_bf16_input_and_3d_shapes():
    torch.manual_seed(3)
    lin = torch.nn.Linear(64, 16)
    q = Int8DynamicLinear.from_linear(lin)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        y = q(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 16)
    torch.testing.assert_close(y.float(), q(x).detach(), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(INT8_MM_OP is None, reason="torch.library.register_fake is missing")
def test_graph_operator_is_the_int_mm():
    a = torch.randint(-127, 128, (3, 40), dtype=torch.int8)
    w = torch.randint(-127, 128, (9, 40), dtype=torch.int8)
    assert torch.equal(INT8_MM_OP(a, w), (a.long() @ w.long().t()).int())

