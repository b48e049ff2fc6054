"""Int8 / int4 quantized Linears on PyTorch's fused CPU weight-only kernels (quant/weight_kernels.py).

Oracle: dequantize-then-matmul (the layer's own `dequantize_weight`) with the activations
rounded to bf16, as the kernels take them; the kernels round scales and results to bf16, so
the match is within bf16 rounding. Odd output sizes (padded for the int4 kernel), group sizes
32/64/128 (and a whole-row group), RTN and GPTQ, checkpoints, and decode through the fused step.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lmkit.errors import LmkitError, QuantizationError
from lmkit.infer import generate
from lmkit.infer.fused_step import FusedDecoder, _QuantProj
from lmkit.infer.runner import fast_decoder
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.quant import weight_kernels as wk
from lmkit.quant.checkpoint import load_quantized, save_quantized
from lmkit.quant.linear import GPTQLinear, GroupQuantLinear, Int8Linear, merge_rows
from lmkit.quant.quantize_model import quantize_model

BF16_TOL = 2e-2  # relative to the largest output: bf16 activations, scales and results


def _close(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert (y - ref).abs().max() <= BF16_TOL * ref.abs().max()


def _oracle(m, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(x.bfloat16().float(), m.dequantize_weight(), m.bias)


@pytest.mark.parametrize("k,n,rows", [(48, 37, 6), (96, 5, 6), (1024, 3, 6), (64, 21, wk.INT8_DENSE_ROWS + 1)])
def test_int8_kernel_matches_dequantize(k, n, rows):
    torch.manual_seed(k + n)
    m = Int8Linear.from_linear(nn.Linear(k, n))
    x = torch.randn(rows // 2, 2, k)
    with torch.no_grad():
        assert m.uses_kernel(x)
        _close(m(x), _oracle(m, x))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("n", [7, 16, 45])
def test_int4_kernel_matches_dequantize(group, n):
    torch.manual_seed(group + n)
    k = 2 * 128 + (group if group < 128 else 0)  # K a multiple of the group, not of every larger one
    m = GroupQuantLinear.from_linear(nn.Linear(k, n), bits=4, group_size=group)
    x = torch.randn(5, k)
    with torch.no_grad():
        assert m.uses_kernel(x)
        _close(m(x), _oracle(m, x))
        _close(m(x.bfloat16()).float(), _oracle(m, x))


def test_int4_whole_row_group_and_bias():
    torch.manual_seed(0)
    m = GroupQuantLinear.from_linear(nn.Linear(512, 24, bias=True), bits=4, group_size=512)  # kernel group 256
    x = torch.randn(2, 512)
    with torch.no_grad():
        assert m.uses_kernel(x)
        _close(m(x), _oracle(m, x))


def test_kernel_layout_follows_the_buffers():
    """The packed form is rebuilt when the stored codes change (load_state_dict writes in place)."""
    torch.manual_seed(0)
    a = GroupQuantLinear.from_linear(nn.Linear(64, 16), bits=4, group_size=32)
    b = GroupQuantLinear.from_linear(nn.Linear(64, 16), bits=4, group_size=32)
    x = torch.randn(2, 64)
    with torch.no_grad():
        a(x)
        a.load_state_dict(b.state_dict())
        assert torch.equal(a(x), b(x))


def test_fallback_is_correct_and_said_once(monkeypatch):
    torch.manual_seed(0)
    m = GroupQuantLinear.from_linear(nn.Linear(64, 8), bits=8, group_size=32)  # no 8-bit group kernel
    x = torch.randn(2, 64)
    monkeypatch.setattr(wk, "_WARNED", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torch.no_grad():
            y1, y2 = m(x), m(x)
    assert len([w for w in seen if "no fused kernel" in str(w.message)]) == 1
    assert torch.allclose(y1, nn.functional.linear(x, m.dequantize_weight(), m.bias), atol=1e-5)
    assert torch.equal(y1, y2)
    small = GroupQuantLinear.from_linear(nn.Linear(32, 8), bits=4, group_size=16)  # the kernel needs >= 32
    assert not small.uses_kernel(x[:, :32])


def test_gradients_take_the_dequantize_path():
    m = Int8Linear.from_linear(nn.Linear(32, 8))
    x = torch.randn(2, 32, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_shapes_give_clear_errors():
    with pytest.raises(QuantizationError, match="does not divide in_features=100"):
        GroupQuantLinear(100, 8, bits=4, group_size=32)
    with pytest.raises(QuantizationError, match="bits=3"):
        GroupQuantLinear(64, 8, bits=3, group_size=32)
    with pytest.raises(QuantizationError, match="must both be"):
        GroupQuantLinear.from_codes(torch.zeros(8, 64, dtype=torch.uint8), torch.ones(8, 3), torch.zeros(8, 3), 4, 32)
    model = DecoderLM(ModelConfig(vocab_size=64, d_model=48, n_layers=1, n_heads=4, d_ff=80, max_seq_len=16)).eval()
    with pytest.raises(LmkitError, match="group_size=32 does not divide in_features=48"):
        quantize_model(model, "int4", group_size=32)
    assert isinstance(QuantizationError("x"), ValueError)  # callers catching ValueError keep working


# ---- models -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=64,
                      model_type="llama")
    return DecoderLM(cfg).eval()


@pytest.mark.parametrize("method,kw,kind", [
    ("int8", {}, Int8Linear),
    ("int4", dict(group_size=32), GroupQuantLinear),
    ("rtn", dict(bits=4, group_size=64), GroupQuantLinear),
    ("gptq", dict(bits=4, group_size=32), GPTQLinear),
])
def test_methods_produce_kernel_layers_and_checkpoints_round_trip(tiny, tmp_path, method, kw, kind):
    ids = torch.randint(0, 96, (2, 10))
    extra = dict(calib=torch.randint(0, 96, (4, 16))) if method == "gptq" else {}
    q = quantize_model(copy.deepcopy(tiny), method, skip=[], **kw, **extra)
    layers = [m for m in q.modules() if isinstance(m, kind)]
    assert len(layers) == 15 and all(m.uses_kernel(torch.zeros(1, m.in_features)) for m in layers)
    with torch.no_grad():
        ref = tiny(ids).logits
        out = q(ids).logits
    assert (out - ref).norm() / ref.norm() < (0.03 if method == "int8" else 0.3)
    save_quantized(q, tmp_path / method)
    back = load_quantized(tmp_path / method)
    assert all(type(a) is type(b) for a, b in zip(q.modules(), back.modules()))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, out)


@pytest.mark.parametrize("method,dtype", [("int8", torch.float32), ("int4", torch.float32), ("int4", torch.bfloat16),
                                          (None, torch.bfloat16)])
def test_greedy_decode_runs_the_fused_step(tiny, method, dtype):
    m = copy.deepcopy(tiny)
    if method is not None:
        quantize_model(m, method, skip=[], group_size=32)
    m = m.to(dtype)
    assert FusedDecoder.unsupported(m) is None
    fused = fast_decoder(m, 32)
    if method is not None:
        qkv = fused.layers[0][0]
        assert isinstance(qkv, _QuantProj) and len(qkv.calls) == 1  # q/k/v merged into one kernel call
        assert not isinstance(qkv.calls[0], nn.Module)  # the kernel itself, not the dequantizing module
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    fast = generate(m, prompts, max_new_tokens=10, do_sample=False).sequences
    slow = generate(m, prompts, max_new_tokens=10, do_sample=False, fused=False).sequences
    assert fast == slow


def test_merge_rows_is_exact():
    torch.manual_seed(0)
    lins = [GroupQuantLinear.from_linear(nn.Linear(64, n), bits=4, group_size=32) for n in (16, 8, 8)]
    merged = merge_rows(lins)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(merged.dequantize_weight(), torch.cat([m.dequantize_weight() for m in lins]))
        _close(merged(x), torch.cat([_oracle(m, x) for m in lins], dim=-1))
    assert merge_rows([lins[0], Int8Linear.from_linear(nn.Linear(64, 8))]) is None


def test_cli_quantize_int4_loads_into_kernel_layers(tiny, tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli
    from lmkit.hub import load_pretrained, save_pretrained

    save_pretrained(tiny, tmp_path / "fp32")
    r = CliRunner().invoke(cli, ["quantize", str(tmp_path / "fp32"), "-o", str(tmp_path / "q4"), "--method", "int4",
                                 "--group-size", "32"])
    assert r.exit_code == 0, r.output
    model = load_pretrained(tmp_path / "q4")
    q = model.layers[0].mlp.down_proj
    assert type(q) is GroupQuantLinear and (q.bits, q.group_size) == (4, 32) and q.uses_kernel(torch.zeros(1, 128))
    assert FusedDecoder.unsupported(model) is None
    assert len(generate(model, [[1, 2, 3]], max_new_tokens=4, eos_token_id=[]).sequences[0]) == 4
