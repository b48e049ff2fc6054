"""NF4 + double quantization: code values vs the QLoRA definition, packing and bytes vs
bitsandbytes (its CPU path), round-trip bounds (hypothesis), NF4Linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lmkit.quant.double_quant import double_quantize, dynamic_map
from lmkit.quant.linear import NF4Linear
from lmkit.quant.nf4 import NF4_CODE, dequantize_nf4, pack_nibbles, quantize_nf4, unpack_nibbles


def qlora_normal_map(offset: float = 0.9677083) -> torch.Tensor:
    """QLoRA's create_normal_map, written from the paper with torch's normal quantile."""
    ppf = lambda p: torch.special.ndtri(p.double())  # noqa: E731
    v1 = ppf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    v3 = -ppf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([v1, torch.zeros(1, dtype=torch.float64), v3]).sort().values
    return (v / v.max()).float()


def _bnb():
    try:
        import bitsandbytes.functional as bf

        w = torch.randn(2, 64)
        q, s = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        bf.dequantize_4bit(q, s)
        return bf
    except Exception as exc:  # noqa: BLE001 - any failure means "does not run here"
        pytest.skip(f"bitsandbytes does not run on this CPU: {exc}")


def test_code_values_are_qlora_normal_quantiles():
    assert NF4_CODE.shape == (16,)
    assert NF4_CODE[7] == 0 and NF4_CODE[0] == -1 and NF4_CODE[-1] == 1
    assert torch.all(NF4_CODE[1:] > NF4_CODE[:-1])
    torch.testing.assert_close(NF4_CODE, qlora_normal_map(), atol=2e-7, rtol=0)


def test_code_values_match_bitsandbytes():
    bf = _bnb()
    assert torch.equal(NF4_CODE, bf.get_4bit_type("nf4", device="cpu").float())
    assert torch.equal(dynamic_map(), bf.create_dynamic_map())


def test_nibble_order_high_first():
    idx = torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8)
    packed = pack_nibbles(idx)
    assert packed.tolist() == [0x12, 0xF0, 0x70]
    assert unpack_nibbles(packed, 5).tolist() == idx.tolist()


@pytest.mark.parametrize("double_quant", [False, True])
def test_bytes_match_bitsandbytes(double_quant):
    bf = _bnb()
    torch.manual_seed(0)
    w = torch.randn(48, 64 * 7) * 0.05
    w[3, 5] = 0.9  # an outlier block
    ours = quantize_nf4(w, 64, double_quant=double_quant)
    q, s = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    assert torch.equal(ours.packed, q.reshape(-1))
    if double_quant:
        torch.testing.assert_close(ours.dq.absmax, s.state2.absmax)
        torch.testing.assert_close(ours.dq.offset, s.offset.reshape(()))
        # the 8-bit codes: we take the exact nearest code value; bitsandbytes' C kernel places
        # a few decision boundaries slightly off the midpoints, so near-ties may differ by one
        diff = (ours.dq.q.int() - s.absmax.int()).abs()
        assert diff.max() <= 1 and (diff == 0).float().mean() > 0.95
        code = dynamic_map()
        c = w.reshape(-1, 64).abs().amax(1)
        scaled = (c - ours.dq.offset) / ours.dq.absmax.repeat_interleave(256)[: c.numel()]
        ours_err = (scaled - code[ours.dq.q.long()]).abs()
        assert torch.all(ours_err <= (scaled - code[s.absmax.long()]).abs() + 1e-7)
        assert torch.equal(ours.packed, q.reshape(-1))
        return
    torch.testing.assert_close(ours.absmax, s.absmax)
    torch.testing.assert_close(dequantize_nf4(ours), bf.dequantize_4bit(q, s), atol=1e-6, rtol=1e-5)


MAX_HALF_GAP = float((NF4_CODE[1:] - NF4_CODE[:-1]).max() / 2)


@settings(max_examples=40, deadline=None)
@given(
    blocks=st.integers(1, 6),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_bound(blocks, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(blocks * 64, generator=g) * scale
    q = quantize_nf4(w, 64, double_quant=False)
    err = (dequantize_nf4(q) - w).abs().reshape(-1, 64)
    absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)
    # each element lands on its nearest code value: error <= half the widest gap * absmax
    assert torch.all(err <= absmax * MAX_HALF_GAP * (1 + 1e-5) + 1e-12)
    # the block maximum itself is exact (code ±1)
    idx = w.reshape(-1, 64).abs().argmax(1)
    assert torch.all(err.gather(1, idx[:, None]) <= absmax * 1e-6)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 700), seed=st.integers(0, 2**31 - 1))
def test_double_quant_bound(n, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, generator=g) * 0.5 + 0.01
    dq = double_quantize(c)
    err = (dq.dequantize() - c).abs()
    # the dynamic code's widest relative gap near 1 is < 1/32: error <= blockmax * 1/64 (+ rounding)
    code = dynamic_map()
    half_gap = float((code[1:] - code[:-1]).max() / 2)
    block_max = dq.absmax.repeat_interleave(256)[:n]
    assert torch.all(err <= block_max * half_gap + 1e-6)


def test_block_size_must_divide():
    with pytest.raises(ValueError, match="does not divide"):
        quantize_nf4(torch.randn(10, 10), 64)
    with pytest.raises(ValueError, match="does not divide"):
        NF4Linear.from_linear(nn.Linear(10, 10), block_size=64)


def test_nf4_linear():
    torch.manual_seed(0)
    lin = nn.Linear(128, 96)
    m = NF4Linear.from_linear(lin)
    assert m.in_features == 128 and m.out_features == 96
    assert all(not p.requires_grad for p in m.parameters())
    assert "weight" not in dict(m.named_parameters())
    x = torch.randn(3, 5, 128)
    w = dequantize_nf4(quantize_nf4(lin.weight.detach(), 64, True))
    torch.testing.assert_close(m(x), F.linear(x, w, lin.bias.detach()))
    assert m(x.to(torch.bfloat16)).dtype == torch.bfloat16
    # 4 bits + 8/64 + 32/(64*256) bits per weight (+ a few bytes): > 7.5x smaller than fp32
    assert lin.weight.numel() * 4 / m.weight_bytes() > 7.5
    # relative error of an NF4 matmul on gaussian weights is a few percent
    ref = lin(x)
    assert ((m(x) - ref).norm() / ref.norm()) < 0.1
    # state dict round trip into a fresh module
    m2 = NF4Linear(128, 96, bias=True)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), m(x))


def test_casting_the_model_keeps_fp32_constants():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    m = NF4Linear.from_linear(lin, double_quant=False)
    w = m.dequantize_weight()
    m = m.to(torch.bfloat16)
    assert m.weight_absmax.dtype == torch.float32 and m.bias.dtype == torch.bfloat16
    torch.testing.assert_close(m.dequantize_weight(), w)
    assert m(torch.randn(2, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16
