"""The whole fp32 or bf16 decode step of one sequence as one native call (`lmkit_step` in lmkit/native_gemv.c).

At batch 1 a token streams every weight once, so a step is as fast as memory allows only if nothing
but the weight stream takes time. The fused step (fused_step.py) calls ~65 native GEMVs, each a parallel
region of its own entered through ctypes, with norms, rotary and attention between them run by torch
on one thread while the other waits; compiled (compiled_step.py) the graph's loops are fused, but the
GEMVs are still 65 calls out of the graph. Here the threads enter one OpenMP region per token and meet
at five barriers per layer, the small operations are split over them, and Python makes one call.
On the 246M bench model (2 threads, 64 tokens, medians of 7 interleaved rounds), fp32: 20.7 ms per token
against the compiled step's 21.6 and the eager fused step's 22.8, where a `sum` over the same bytes
takes 19.4; bf16: 8.1 ms against the eager fused step's 9.9. On tiny models the step is a few small
loops: 31 us against the fused step's 215 (d_model 64, 2 layers) (docs/benchmarks.md, "One native call
per token").

It runs the fused step's own matrices (norm gains folded in, q/k/v and gate/up merged: the
`NativeLinear` weights, no copy) and writes the model's `KVCache` in place, so prefill by the fused
step or `model.forward`, eager steps and native steps mix freely. Covered: fp32 or bf16 weights on
CPU, one sequence without padding, RMSNorm or LayerNorm, rotary (no scaling that depends on the
length) or learned positions, SiLU / ReLU / tanh-GELU / quick-GELU, gated or not, biases anywhere —
the models FusedDecoder covers, less quantized layers, erf-GELU and batches, which keep the fused or
compiled step. `LMKIT_NATIVE_STEP=0` turns it off. fp32 results are the fused step's within fp32
rounding (its own summation order for norms and softmax: max relative logit difference ~1e-6 on the
bench model, the same greedy tokens); bf16 rounds where the fused step's bf16 tensors round (every
product, norm, rotary product and sum, activation, residual add; attention in fp32), so it differs
from it only where an fp32 difference of that size crosses a bf16 rounding boundary.
"""

from __future__ import annotations

import ctypes
import os
import weakref

import torch

from lmkit import native_gemv
from lmkit.models.kv_cache import KVCache
from lmkit.native_gemv import NativeLinear

ENABLED = os.environ.get("LMKIT_NATIVE_STEP", "1") != "0"
_ACTIVATIONS = {"silu": 0, "relu": 1, "gelu_tanh": 2, "quick_gelu": 3}
# below this many weight bytes per token a second thread costs more (barriers) than it streams: Llama-shaped
# models, 2 threads, us per step on 1 / 2 threads (the fused step): d 128 x 4 layers (4.3 MB) 86 / 92 (456),
# d 256 x 4 (17 MB) 288 / 139 (450), d 512 x 8 (150 MB) 3891 / 3277 (4549)
_PARALLEL_BYTES = 4 * 2**20
_P = ctypes.c_void_p
_DTYPES = (torch.float32, torch.bfloat16)


class _Layer(ctypes.Structure):
    _fields_ = [(n, _P) for n in ("qkv_w", "qkv_b", "o_w", "o_b", "ff_w", "ff_b", "dn_w", "dn_b")]


class _Model(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int64) for n in ("n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab")]
                + [("eps", ctypes.c_float), ("scale", ctypes.c_float), ("rms", ctypes.c_int), ("gated", ctypes.c_int),
                   ("act", ctypes.c_int), ("bf16", ctypes.c_int), ("layers", ctypes.POINTER(_Layer))]
                + [(n, _P) for n in ("embed", "pos_embed", "norm_w", "norm_b", "lm_w", "lm_b")])


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeStep:
    """`step(input_ids [1, 1], positions [1, 1], cache) -> logits [1, 1, V]` for a `FusedDecoder`'s model."""

    @staticmethod
    def unsupported(fused) -> str | None:
        """Why the native step cannot run `fused`'s model (None: it can)."""
        if not ENABLED:
            return "turned off (LMKIT_NATIVE_STEP=0)"
        why = native_gemv.unavailable()
        if why is not None:
            return why
        cfg = fused.cfg
        dtype = fused.embed.dtype
        if dtype not in _DTYPES or fused.embed.device.type != "cpu":
            return "not an fp32 or bf16 CPU model"
        if cfg.activation not in _ACTIVATIONS:
            return f"{cfg.activation} activation"
        mats = [t for ts in fused.run_layers for t in ts[::2]] + [fused.run_lm_w]
        if any(not isinstance(t, NativeLinear) or t.dtype != dtype for t in mats):
            return "quantized or non-native projections"
        others = [fused.embed, fused.pos_embed, fused.norm_w, fused.norm_b, fused.lm_b, fused._cos, fused._sin]
        others += [b for ts in fused.run_layers for b in ts[1::2]]
        if any(t is not None and t.dtype != dtype for t in others):
            return "tensors of mixed dtypes"
        if any(t is not None and not t.is_contiguous() for t in others):
            return "non-contiguous embeddings, norm or bias tensors"
        if fused.h % fused.hkv:
            return "query heads not a multiple of the kv heads"
        return None

    def __init__(self, fused) -> None:
        self.fused = weakref.proxy(fused)
        self._lib = native_gemv.library()
        cfg = fused.cfg
        self._layers = (_Layer * len(fused.run_layers))()
        keep = [fused.embed, fused.pos_embed, fused.norm_w, fused.norm_b, fused.lm_b]
        for slot, (qkv, qkv_b, o, o_b, ff, ff_b, dn, dn_b) in zip(self._layers, fused.run_layers):
            for name, t in (("qkv_w", qkv.w), ("qkv_b", qkv_b), ("o_w", o.w), ("o_b", o_b), ("ff_w", ff.w),
                            ("ff_b", ff_b), ("dn_w", dn.w), ("dn_b", dn_b)):
                setattr(slot, name, _ptr(t))  # contiguous: NativeLinear's own copy, biases checked by unsupported()
                keep.append(t)
        self._keep = keep  # the step reads these tensors' memory: held as long as the step is
        self.dtype = fused.embed.dtype
        self._model = _Model(len(fused.run_layers), cfg.d_model, fused.h, fused.hkv, fused.d, fused.d_ff,
                             fused.run_lm_w.out_features, fused.eps, fused.scale, int(fused.rms), int(fused.gated),
                             _ACTIVATIONS[cfg.activation], int(self.dtype == torch.bfloat16), self._layers, _ptr(fused.embed), _ptr(fused.pos_embed),
                             _ptr(fused.norm_w), _ptr(fused.norm_b), _ptr(fused.run_lm_w.w), _ptr(fused.lm_b))
        self._model_ref = ctypes.byref(self._model)
        self.vocab = fused.run_lm_w.out_features
        self._scratch_base = cfg.d_model + (2 * fused.h + 2 * fused.hkv) * fused.d + 2 * fused.d_ff  # lmkit_step's
        self._per_thread = cfg.d_model + 2 * fused.d
        weight_bytes = sum(t.w.numel() * t.w.element_size() for ts in fused.run_layers for t in ts[::2])
        weight_bytes += fused.run_lm_w.w.numel() * fused.run_lm_w.w.element_size()
        self._parallel = weight_bytes >= _PARALLEL_BYTES
        self._caches: "weakref.WeakKeyDictionary[KVCache, tuple]" = weakref.WeakKeyDictionary()

    def accepts(self, cache, pad_bias) -> bool:
        """Whether this step can continue `cache` by one token (one unpadded sequence in the model's dtype, room
        left)."""
        if not ENABLED or pad_bias is not None or type(cache) is not KVCache or cache.batch_size != 1:
            return False
        past = cache.lengths[0]
        if past + 1 > cache.max_len or any(n != past for n in cache.lengths):
            return False
        k0 = cache.keys[0]
        return k0 is None or (k0.dtype == self.dtype and k0.device.type == "cpu")

    def _cache_pointers(self, cache: KVCache) -> tuple:
        """(keys, values) pointer arrays of `cache`'s layers, rebuilt when its buffers change."""
        hit = self._caches.get(cache)  # holds the buffers it points to, so `is` cannot meet a recycled id
        if hit is not None and len(hit[0]) == len(cache.keys) and all(a is b for a, b in zip(hit[0], cache.keys)) \
                and all(a is b for a, b in zip(hit[1], cache.values)):
            return hit[2], hit[3]
        for i, k in enumerate(cache.keys):
            if k is None:
                cache._allocate(i, self.dtype, torch.device("cpu"))
        for t in cache.keys + cache.values:
            if not t.is_contiguous():
                raise ValueError("native step: KV cache buffers are not contiguous")
        n = cache.n_layers
        keys = (_P * n)(*[k.data_ptr() for k in cache.keys])
        values = (_P * n)(*[v.data_ptr() for v in cache.values])
        self._caches[cache] = (list(cache.keys), list(cache.values), keys, values)
        return keys, values

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        fused = self.fused
        keys, values = self._cache_pointers(cache)
        pos = int(positions.view(-1)[0])
        slot = cache.lengths[0]
        token = int(input_ids.view(-1)[0])
        if not 0 <= token < fused.embed.shape[0]:
            raise IndexError(f"token id {token} is out of range for an embedding of {fused.embed.shape[0]} rows")
        if pos < 0:
            raise IndexError(f"position {pos} is negative")
        cos = sin = None
        if fused.rope:
            if fused._cos is None or fused._cos.shape[0] <= pos:
                fused.reserve(pos + 1)
            cos, sin = fused._cos[pos].data_ptr(), fused._sin[pos].data_ptr()
        elif not 0 <= pos < fused.pos_embed.shape[0]:
            raise IndexError(f"position {pos} is beyond the {fused.pos_embed.shape[0]} learned positions")
        threads = torch.get_num_threads() if self._parallel else 1
        scratch = torch.empty(self._scratch_base + threads * (self._per_thread + cache.max_len))
        logits = torch.empty((1, 1, self.vocab), dtype=self.dtype)
        self._lib.lmkit_step(self._model_ref, keys, values, cache.max_len, token, pos, slot, cos, sin,
                                 logits.data_ptr(), scratch.data_ptr(), threads)
        cache.lengths = [slot + 1] * cache.n_layers
        return logits
