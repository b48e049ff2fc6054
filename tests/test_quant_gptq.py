"""GPTQ: equal to a naive (un-batched, explicit H⁻¹ downdate) OBS implementation, reduces to RTN
when H = I, beats RTN on correlated inputs, model-level quantization with calibration."""

from __future__ import annotations

import pytest
import torch

from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.quant.gptq import dequantize_groups, gptq_weight
from lmkit.quant.linear import GPTQLinear, GroupQuantLinear
from lmkit.quant.quantize_model import quantize_model


def naive_obs(w, h, bits, g, damp=0.01):
    """Textbook OBS column loop: explicit inverse Hessian, downdated after every column."""
    w = w.clone().double()
    h = h.clone().double()
    cols = w.shape[1]
    h += damp * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    maxq = 2**bits - 1
    codes = torch.zeros_like(w)
    for i in range(cols):
        if i % g == 0:
            blk = w[:, i:i + g]
            lo = torch.clamp(blk.min(1).values, max=0)
            hi = torch.clamp(blk.max(1).values, min=0)
            scale = (hi - lo) / maxq
            scale[scale == 0] = 1
            zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w[:, i] / scale) + zero, 0, maxq)
        codes[:, i] = q
        err = (w[:, i] - scale * (q - zero)) / hinv[i, i]
        w[:, i + 1:] -= err[:, None] * hinv[i, i + 1:][None, :]
        hinv = hinv - hinv[:, i:i + 1] @ hinv[i:i + 1, :] / hinv[i, i]  # remove column i
    return codes


def correlated(seed=0, n=1024, k=64, out=24):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g) @ torch.randn(8, k, generator=g) + 0.2 * torch.randn(n, k, generator=g)
    w = torch.randn(out, k, generator=g) * 0.1
    return x, w, 2 * x.T.double() @ x.double() / n


@pytest.mark.parametrize("block_size", [128, 16, 5])
def test_lazy_batch_cholesky_equals_naive_obs(block_size):
    x, w, h = correlated()
    codes, scales, zeros = gptq_weight(w, h, bits=4, group_size=16, block_size=block_size)
    ref = naive_obs(w, h, 4, 16)
    agree = (codes.double() == ref).double().mean()
    assert agree > 0.99, float(agree)  # float rounding may flip a rare tie


def test_identity_hessian_is_round_to_nearest():
    _, w, _ = correlated()
    lin = torch.nn.Linear(64, 24, bias=False)
    lin.weight.data = w
    rtn = GroupQuantLinear.from_linear(lin, 4, 16)
    codes, scales, zeros = gptq_weight(w, torch.eye(64, dtype=torch.float64), 4, 16, damp=0.0)
    assert torch.equal(codes, rtn.codes())
    torch.testing.assert_close(scales, rtn.scales)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_layer_output(act_order):
    x, w, h = correlated(1)
    lin = torch.nn.Linear(64, 24, bias=False)
    lin.weight.data = w
    rtn = GroupQuantLinear.from_linear(lin, 4, 16).dequantize_weight()
    q = dequantize_groups(*gptq_weight(w, h, 4, 16, act_order=act_order))
    ref = x @ w.T
    assert (x @ q.T - ref).norm() < 0.7 * (x @ rtn.T - ref).norm()


def test_gptq_model_level():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=32)
    model = DecoderLM(cfg).eval()
    calib = torch.randint(0, 64, (8, 16))
    test = torch.randint(0, 64, (4, 16))
    ref = model(test).logits
    import copy

    rtn = quantize_model(copy.deepcopy(model), "rtn", bits=4, group_size=32)
    gq = quantize_model(copy.deepcopy(model), "gptq", bits=4, group_size=32, calib=calib)
    assert isinstance(gq.layers[0].self_attn.q_proj, GPTQLinear)
    assert type(gq.lm_head) is torch.nn.Linear  # skipped by default
    assert gq.quantization["method"] == "gptq" and len(gq.quantization["modules"]) == 14
    # same storage as RTN
    assert set(gq.layers[1].mlp.down_proj.state_dict()) == set(rtn.layers[1].mlp.down_proj.state_dict())
    e_rtn = (rtn(calib).logits - model(calib).logits).norm()
    e_gptq = (gq(calib).logits - model(calib).logits).norm()
    assert e_gptq < e_rtn
    assert torch.isfinite(gq(test).logits).all() and gq(test).logits.shape == ref.shape
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(copy.deepcopy(model), "gptq")
