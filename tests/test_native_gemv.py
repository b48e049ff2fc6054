"""lmkit's native decode GEMVs (lmkit/native_gemv.c) against torch's own products, and the fallbacks."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit import native_gemv
from lmkit.native_gemv import NativeLinear, gemv, gemv_int8

needs_native = pytest.mark.skipif(native_gemv.unavailable() is not None,
                                  reason=f"native GEMV unavailable: {native_gemv.unavailable()}")
# odd sizes on purpose: K below one vector (16), between the unrolled blocks (64) and past them
SHAPES = [(1, 1, 1), (1, 7, 3), (2, 33, 77), (3, 65, 129), (4, 100, 2816), (1, 1536, 1024), (1, 5, 15)]


@needs_native
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_fp32_gemv_equals_linear(m, n, k):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    b, r = torch.randn(n, generator=g), torch.randn(m, n, generator=g)
    ref = x.double() @ w.double().t()
    torch.testing.assert_close(gemv(x, w), ref.float(), rtol=1e-5, atol=1e-5 * k**0.5)
    torch.testing.assert_close(gemv(x, w, b), (ref + b.double()).float(), rtol=1e-5, atol=1e-5 * k**0.5)
    torch.testing.assert_close(gemv(x, w, b, r), (ref + b.double() + r.double()).float(), rtol=1e-5,
                               atol=1e-5 * k**0.5)


@needs_native
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_bf16_gemv_rounds_once_like_torch(m, n, k):
    """fp32 sums of bf16 products, rounded once to bf16 (then the residual add, rounded again): within
    one bf16 rounding of torch's bf16 linear."""
    g = torch.Generator().manual_seed(k)
    x, w = torch.randn(m, k, generator=g).bfloat16(), torch.randn(n, k, generator=g).bfloat16()
    b, r = torch.randn(n, generator=g).bfloat16(), torch.randn(m, n, generator=g).bfloat16()
    exact = x.double() @ w.double().t() + b.double()
    y = gemv(x, w, b)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), exact, rtol=2**-8, atol=1e-5 * k**0.5)
    torch.testing.assert_close(gemv(x, w, b, r), r + y, rtol=0, atol=0)  # residual: bf16(r + bf16(xW + b))
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=2**-7, atol=1e-2)


@needs_native
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_gemv_equals_dequantize_then_matmul(m, n, k):
    g = torch.Generator().manual_seed(n + 7 * k)
    x = torch.randn(m, k, generator=g)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    s, b = torch.rand(n, generator=g) * 0.02, torch.randn(n, generator=g)
    ref = x.double() @ (q.double() * s.double()[:, None]).t() + b.double()
    torch.testing.assert_close(gemv_int8(x, q, s, b), ref.float(), rtol=1e-5, atol=1e-6 * k**0.5)
    # bf16 activations are widened first: the same as the fp32 product of their values
    torch.testing.assert_close(gemv_int8(x.bfloat16(), q, s), gemv_int8(x.bfloat16().float(), q, s))


@needs_native
@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 4), n=st.integers(1, 70), k=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_fp32_gemv_property(m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    torch.testing.assert_close(gemv(x, w), (x.double() @ w.double().t()).float(), rtol=1e-5, atol=1e-5 * k**0.5)


@needs_native
def test_threads_split_the_rows_to_the_same_result():
    x, w = torch.randn(1, 512), torch.randn(4096, 512)  # large enough to run on every thread
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gemv(x, w)
        torch.set_num_threads(2)
        two = gemv(x, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each output is one thread's whole dot product: the same bits


@needs_native
def test_bad_input_gets_a_clear_error():
    x, w = torch.randn(2, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"not \[M, K\] and \[N, K\]"):
        gemv(x, torch.randn(5, 9))
    with pytest.raises(ValueError, match=r"not \[M, K\] and \[N, K\]"):
        gemv(x[0], w)
    with pytest.raises(TypeError, match="fp32 / bf16"):
        gemv(x.double(), w.double())
    with pytest.raises(TypeError, match="fp32 / bf16"):
        gemv(x, w.bfloat16())
    with pytest.raises(ValueError, match="bias"):
        gemv(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="residual"):
        gemv(x, w, None, torch.randn(5, 2))
    with pytest.raises(ValueError, match="int8"):
        gemv_int8(x, w, torch.ones(5))
    with pytest.raises(ValueError, match="scale"):
        gemv_int8(x, torch.zeros(5, 8, dtype=torch.int8), torch.ones(5, dtype=torch.float64))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, native_gemv.MAX_GEMV_ROWS + 1, 37])
def test_native_linear_matches_linear_for_decode_and_prefill_rows(dtype, rows):
    """One or two rows through the native GEMV on the Linear's own weight, more through oneDNN's GEMM."""
    lin = torch.nn.Linear(48, 80, dtype=dtype)
    layer = NativeLinear(lin.weight.t())
    assert layer.w.data_ptr() == lin.weight.data_ptr()
    x, res = torch.randn(rows, 48, dtype=dtype), torch.randn(rows, 80, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-7, atol=2e-2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ lin.weight.t(), **tol)
        torch.testing.assert_close(layer(x, lin.bias), lin(x), **tol)
        torch.testing.assert_close(layer(x, lin.bias, res), res + lin(x), **tol)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


FALLBACK = """
    import torch
    from lmkit import native_gemv
    from lmkit.infer import generate
    from lmkit.infer.fused_step import FusedDecoder, _OneDNNLinear
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
    m = DecoderLM(cfg).eval()
    print("reason:", native_gemv.unavailable())
    fused = FusedDecoder.for_model(m)
    print("lm head:", type(fused.run_lm_w).__name__)
    fast = generate(m, [[1, 2, 3]], max_new_tokens=8, do_sample=False, eos_token_id=[]).sequences
    slow = generate(m, [[1, 2, 3]], max_new_tokens=8, do_sample=False, eos_token_id=[], fused=False).sequences
    print("same tokens:", fast == slow)
"""


def test_turned_off_falls_back_to_onednn_without_a_warning():
    out = _run(FALLBACK, LMKIT_NATIVE_GEMV="0")
    assert out.returncode == 0, out.stderr
    assert "reason: turned off (LMKIT_NATIVE_GEMV=0)" in out.stdout
    assert "lm head: " in out.stdout and "NativeLinear" not in out.stdout
    assert "same tokens: True" in out.stdout
    assert "native GEMV is not available" not in out.stderr


@needs_native
def test_a_failed_build_warns_once_and_decoding_still_works(tmp_path):
    out = _run(FALLBACK, CC="false", LMKIT_CACHE=str(tmp_path))  # `false`: a compiler that always fails
    assert out.returncode == 0, out.stderr
    assert "reason: false failed" in out.stdout
    assert out.stderr.count("native GEMV is not available") == 1
    assert "same tokens: True" in out.stdout


@needs_native
def test_the_build_lands_in_the_cache_and_is_reused(tmp_path):
    code = "from lmkit import native_gemv; print(native_gemv.unavailable())"
    first = _run(code, LMKIT_CACHE=str(tmp_path))
    assert first.returncode == 0 and first.stdout.strip() == "None", first.stderr
    built = list((tmp_path / "native").glob("native_gemv-*.so"))
    assert len(built) == 1 and not list((tmp_path / "native").glob("tmp*"))  # renamed into place, no leftovers
    stamp = built[0].stat().st_mtime_ns
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "cc").write_text("#!/bin/sh\nexit 1\n")
    (broken / "cc").chmod(0o755)
    path = f"{broken}{os.pathsep}{os.environ['PATH']}"
    assert _run(code, LMKIT_CACHE=str(tmp_path), PATH=path).stdout.strip() == "None"  # the build is not redone
    assert _run(code, LMKIT_CACHE=str(tmp_path / "other"), PATH=path).stdout.strip().startswith("cc failed")
    assert built[0].stat().st_mtime_ns == stamp
