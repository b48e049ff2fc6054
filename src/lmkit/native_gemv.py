"""Decode GEMVs in a small C kernel of our own (`native_gemv.c`), built on the user's machine at first use.

Decoding one token streams every weight once, so its speed is memory bandwidth. oneDNN's fp32
GEMV reaches 90-95 % of a plain `sum` over the same bytes and costs 11 us a call (a token makes
65 calls); here each thread takes one contiguous block of weight rows, one dot product per row,
which streams like the `sum` does and costs 3 us a call. The 246M bench model's 65 products per
token, 2 threads, medians of 15 interleaved rounds: fp32 20.2 ms (oneDNN 22.1, `sum` 19.1), bf16
12.0 ms (oneDNN 13.6, `sum` 11.2). It reads nn.Linear's [out, in] weight in place; from 3 rows on
(prefill, batches) oneDNN's GEMM is faster and takes over (`NativeLinear`). Weight-only int8 (`gemv_int8`) widens the codes to fp32 in
registers: 4.4 ms for the same model against 7.7 for torch's `_weight_int8pack_mm`. The same file holds
`lmkit_step`, a whole fp32 or bf16 decode step of one sequence in one call (infer/native_step.py).

The kernel is C (no torch headers: it compiles in a quarter of a second), built with the
system's C compiler (`cc -O3 -march=native -fopenmp`, `$CC` to choose another) into
`~/.cache/lmkit/native/` (`$LMKIT_CACHE` moves it), keyed by the source, the flags and the
CPU, and called through ctypes (which releases the GIL). Its OpenMP calls resolve to the libgomp
torch has already loaded, so it shares torch's threads. Where it cannot be built (no compiler,
not x86 with AVX-512, torch not on OpenMP) or is turned off (`LMKIT_NATIVE_GEMV=0`),
`unavailable()` says why (a warning, once, unless turned off) and callers keep oneDNN / torch's
kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("native_gemv.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_LOCK = threading.Lock()
_STATE: dict = {}  # "lib": the loaded library or None, "reason": why not


@functools.cache
def _cpu_signature() -> str:
    """The CPU's model and flags (a cache shared by two machines must not mix -march=native builds)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _cpu_has_avx512() -> bool:
    return "avx512f" in _cpu_signature().split() or torch.backends.cpu.get_cpu_capability() == "AVX512"


def cache_dir() -> Path:
    root = os.environ.get("LMKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                         "lmkit")
    return Path(root) / "native"


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("LMKIT_NATIVE_GEMV", "1") == "0":
        return None, "turned off (LMKIT_NATIVE_GEMV=0)"
    if platform.machine().lower() not in ("x86_64", "amd64") or not _cpu_has_avx512():
        return None, "the kernel is written for x86 CPUs with AVX-512"
    if "OpenMP" not in torch.__config__.parallel_info():
        return None, "this torch does not run on OpenMP threads"
    cc = os.environ.get("CC", "cc")
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([cc, *_FLAGS]).encode() + _cpu_signature().encode()).hexdigest()[:16]
    target = cache_dir() / f"native_gemv-{key}.so"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: build under the temporary directory instead
        target = Path(tempfile.gettempdir()) / "lmkit-native" / target.name
        target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        if shutil.which(cc) is None:
            return None, f"no C compiler ({cc!r} not found)"
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)  # built beside the target, then renamed:
        os.close(fd)  # concurrent builds (test workers) never load a half-written file
        try:
            done = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                return None, f"{cc} failed: {done.stderr.strip()[-300:]}"
            os.replace(tmp, target)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"building with {cc} failed: {e}"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as e:
        return None, f"loading {target} failed: {e}"
    for name in ("lmkit_gemv_f32", "lmkit_gemv_bf16", "lmkit_gemv_int8"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    lib.lmkit_step.restype = None  # the whole decode step (infer/native_step.py)
    lib.lmkit_step.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 4 + [ctypes.c_int]
    return lib, None


def _library() -> ctypes.CDLL | None:
    if "lib" not in _STATE:
        with _LOCK:
            if "lib" not in _STATE:
                lib, reason = _build()
                _STATE["reason"] = reason
                _STATE["lib"] = lib
                if reason is not None and _cpu_has_avx512() and os.environ.get("LMKIT_NATIVE_GEMV", "1") != "0":
                    warnings.warn(f"lmkit's native GEMV is not available ({reason}); decoding uses oneDNN's",
                                  RuntimeWarning, stacklevel=3)
    return _STATE["lib"]


def library() -> ctypes.CDLL | None:
    """The built kernel library (None where `unavailable()` says why not)."""
    return _library()


def unavailable() -> str | None:
    """Why the native GEMV cannot run here (None: it can). Builds it on the first call."""
    _library()
    return _STATE["reason"]


SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def gemv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
         residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ w[N, K]^T (+ bias [N]) (+ residual [M, N]) -> [M, N], fp32 or bf16 throughout.

    Meant for a few rows (decoding); the kernel reads each weight row once for all M rows."""
    lib = _library()
    if lib is None:
        raise RuntimeError(f"native GEMV unavailable: {_STATE['reason']}")
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"gemv: x {tuple(x.shape)} and w {tuple(w.shape)} are not [M, K] and [N, K]")
    if x.dtype not in SUPPORTED_DTYPES or w.dtype != x.dtype:
        raise TypeError(f"gemv: x {x.dtype} and w {w.dtype} must be one of fp32 / bf16")
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise ValueError("gemv runs on CPU tensors")
    m, n, k = x.shape[0], w.shape[0], w.shape[1]
    for name, t, shape in (("bias", bias, (n,)), ("residual", residual, (m, n))):
        if t is not None and (tuple(t.shape) != shape or t.dtype != x.dtype):
            raise ValueError(f"gemv: {name} {tuple(t.shape)} {t.dtype} is not {shape} {x.dtype}")
    x = x.contiguous()
    w = w.contiguous()
    bias = None if bias is None else bias.contiguous()
    residual = None if residual is None else residual.contiguous()
    y = torch.empty((m, n), dtype=x.dtype)
    fn = lib.lmkit_gemv_f32 if x.dtype == torch.float32 else lib.lmkit_gemv_bf16
    fn(x.data_ptr(), w.data_ptr(), None if bias is None else bias.data_ptr(),
       None if residual is None else residual.data_ptr(), y.data_ptr(), m, n, k, torch.get_num_threads())
    return y


def gemv_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 x [M, K] @ (scale[:, None] * q).T (+ bias) -> fp32 [M, N]; q int8 [N, K], scale / bias fp32 [N].

    The codes are widened to fp32 in registers: the same product as dequantize-then-matmul in fp32,
    reading one byte per weight. The decode path of `--method int8` (quant/weight_kernels.py)."""
    lib = _library()
    if lib is None:
        raise RuntimeError(f"native GEMV unavailable: {_STATE['reason']}")
    if x.dim() != 2 or q.dim() != 2 or x.shape[1] != q.shape[1] or q.dtype != torch.int8:
        raise ValueError(f"gemv_int8: x {tuple(x.shape)} and codes {tuple(q.shape)} {q.dtype} are not "
                         "[M, K] and int8 [N, K]")
    if any(t is not None and t.device.type != "cpu" for t in (x, q, scale, bias)):
        raise ValueError("gemv_int8 runs on CPU tensors")
    n = q.shape[0]
    for name, t in (("scale", scale), ("bias", bias)):
        if t is not None and (tuple(t.shape) != (n,) or t.dtype != torch.float32):
            raise ValueError(f"gemv_int8: {name} {tuple(t.shape)} {t.dtype} is not fp32 [{n}]")
    return gemv_int8_trusted(x, q.contiguous(), scale.contiguous(), None if bias is None else bias.contiguous())


def gemv_int8_trusted(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """`gemv_int8` for codes, scales and bias already checked (contiguous int8 [N, K], fp32 [N]) by the
    kernel object that holds them: only x is checked, which saves 3 of the 6 us a decode call costs."""
    if x.dim() != 2 or x.shape[1] != q.shape[1]:
        raise ValueError(f"gemv_int8: x {tuple(x.shape)} does not match codes {tuple(q.shape)}")
    if x.dtype != torch.float32:
        x = x.float()
    x = x.contiguous()
    y = torch.empty((x.shape[0], q.shape[0]), dtype=torch.float32)
    _library().lmkit_gemv_int8(x.data_ptr(), q.data_ptr(), scale.data_ptr(), None if bias is None else bias.data_ptr(),
                               y.data_ptr(), x.shape[0], q.shape[0], q.shape[1], torch.get_num_threads())
    return y


# Up to this many rows the native kernels beat oneDNN's reordered GEMM and torch's int8 kernel; more rows
# reuse each weight across rows, which a GEMM blocks for (1024x5632, 8 weights in turn, 2 threads, ms per
# product: fp32 1 row 0.53 vs 0.55, 2 rows 0.60 vs 0.58, 4 rows 0.72 vs 0.55, 8 rows 1.06 vs 0.56; int8
# against `_weight_int8pack_mm` 1 row 0.13 vs 0.20, 3 rows 0.21 vs 0.24, 4 rows 0.28 vs 0.23)
MAX_GEMV_ROWS = 2
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class NativeLinear:
    """y = x @ w_t (+ bias) (+ residual) on one CPU weight, called like the fused step's `_OneDNNLinear`:
    one or two rows (decoding) through the native GEMV over nn.Linear's own [out, in] weight, more rows
    (prefill, batched decoding) through oneDNN's GEMM on a copy reordered into its blocked layout (8 rows
    of 1024x5632 fp32: 0.56 ms against 1.10 on the plain layout)."""

    def __init__(self, w_t: torch.Tensor) -> None:
        lib = _library()
        if lib is None:
            raise RuntimeError(f"native GEMV unavailable: {_STATE['reason']}")
        if w_t.dtype not in SUPPORTED_DTYPES or w_t.device.type != "cpu":
            raise TypeError(f"NativeLinear takes an fp32 / bf16 CPU weight, not {w_t.dtype} on {w_t.device}")
        self.w = w_t.detach().t().contiguous()  # [out, in]: the Linear's own weight when w_t is its .t() view
        self.out_features, self.in_features = self.w.shape
        self.dtype = self.w.dtype
        self._fn = lib.lmkit_gemv_f32 if self.dtype == torch.float32 else lib.lmkit_gemv_bf16
        hint = 1 if self.dtype == torch.bfloat16 else 2  # the batch hints of fused_step._OneDNNLinear
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.w, hint) if _ONEDNN else None

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
        m = x.shape[0]
        if m > MAX_GEMV_ROWS or x.dtype != self.dtype or x.dim() != 2:
            if self.packed is not None and x.dtype == self.dtype and x.dim() == 2:
                y = torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")
            else:
                y = torch.nn.functional.linear(x.to(self.dtype), self.w, bias)
            return y if residual is None else residual + y
        x = x.contiguous()
        if residual is not None:
            residual = residual.contiguous()
        y = torch.empty((m, self.out_features), dtype=self.dtype)
        self._fn(x.data_ptr(), self.w.data_ptr(), None if bias is None else bias.data_ptr(),
                 None if residual is None else residual.data_ptr(), y.data_ptr(), m, self.out_features,
                 self.in_features, torch.get_num_threads())
        return y
