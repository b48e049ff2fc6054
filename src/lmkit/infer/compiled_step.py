"""A `torch.compile`d decode step over a static-shape KV cache (like HF's "static cache").

`FusedDecoder` (infer/fused_step.py) already merges projections and folds norm gains, but in
eager mode every step still launches ~240 small operators, and their dispatch costs about as
much as the weight GEMMs at batch 1 on a CPU. Compiling the step removes that overhead: the
inductor fuses the norms, rotary embedding, bias arithmetic and activations into a few C++
loops, and with `freezing` it pre-packs the (constant) weights for the GEMM library.

A compiled graph must see the same shapes every step, or it would be recompiled for every
new sequence length. So this step never looks at "the keys so far": it

* writes the new key/value into the preallocated cache buffer [B, kv_heads, max_len, d] at
  the write position with `index_copy_` (the position is a tensor, not a Python int, so the
  graph does not depend on it);
* attends over the *whole* buffer with an additive bias that hides slots past the current
  position (and left padding): exp(min - max) underflows to exactly 0, so the unused slots
  contribute nothing — the same softmax as attending over the written prefix only;
* updates the cache's Python-side lengths after the call, so `KVCache` stays consistent and
  prefill by `model.forward`, eager fused steps and compiled steps mix freely.

Shapes then depend only on (batch, max_len): the step is compiled once per such pair and the
compiled function is cached (per model, per weight version, per shape) in this process, so a
server or a benchmark pays the compile time once (a few seconds up to a minute: see
docs/parts/infer-speed-benchmarks.md). Steps of more than one token (speculative decoding's
verification) and caches of another size go to the eager `FusedDecoder`.

Quantized models compile too: an int8 / int4 projection's fused weight-only kernel (lmkit's
native int8 GEMV `lmkit::int8_gemv` where it builds, else `torch._weight_int8pack_mm`;
`torch._weight_int4pack_mm_for_cpu`; quant/weight_kernels.py) is an extern call inside the graph,
with its norm-gain product and casts fused into the loops around it. w8a8 layers quantize their
input rows inside the graph, around an opaque int8 x int8 product (`lmkit::int8_mm`). Large
dense models (`MAX_COMPILED_FP32_BYTES`: fp32, and bf16 where the native GEMV runs) keep their
matrices out of the graph: frozen fp32 linears would run on MKL's one-thread sgemv, and the
native GEMV streams bf16 faster than the graph's oneDNN product, so the graph calls the eager
step's own GEMVs (`NativeLinear` / `_OneDNNLinear`) through `lmkit::prepacked_linear`. Figures
against llama.cpp are in docs/benchmarks.md.

`CompiledDecoder(model)(input_ids, positions, cache, pad_bias, last_only)` has the same
signature and result as `FusedDecoder.__call__`; `CompiledDecoder.unsupported(model,
max_len)` says when it cannot run (then use `FusedDecoder` / `model.forward`).
"""

from __future__ import annotations

import itertools
import shutil
import threading
import types
import weakref

import torch
import torch.nn.functional as F

from lmkit.graph_ops import define_graph_op
from lmkit.infer.fused_step import PACKED_TYPES, FusedDecoder
from lmkit.native_gemv import MAX_GEMV_ROWS, NativeLinear
from lmkit.quant.weight_kernels import (INT8_DENSE_ROWS, INT8_GEMV_OP, INT8_MM_OP, KERNEL_DTYPE, Int4Kernel,
                                        Int8DynamicKernel, Int8Kernel, int8_dynamic_mm)

# per model: {(fused decoder id, batch, max_len, dtype, options...): (fused, step, module)}; dropped with the model
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_RECOMPILE_LIMIT = 64
# fp32 models with more weight bytes than this keep their matrices out of the graph: a frozen graph
# would run them on MKL's one-thread sgemv (the 246M bench model, 2 threads: 35 ms per token against
# the eager step's 14 ms; an fp32 GEMV written as a reduction for the inductor: 41 ms), so the graph
# calls the eager fused step's GEMVs instead (`PREPACKED_LINEAR_OP`), which run on every thread; so do
# bf16 models where the native GEMV runs (`_prepacked_dense`). Below it (tiny models) the inductor's
# own packing is as fast and has no call overhead.
MAX_COMPILED_FP32_BYTES = 64 * 2**20


_PREPACKED: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_HANDLES = itertools.count()


# x @ the eager step's GEMV registered under `handle` (`NativeLinear` / `_OneDNNLinear`): an opaque oneDNN
# tensor cannot be a graph constant (tracing needs a storage), and a native one must not be copied into
# the graph, so the graph holds an integer and the step module keeps the weight alive
PREPACKED_LINEAR_OP = define_graph_op(
    "prepacked_linear", "(Tensor x, int handle, int out_features) -> Tensor",
    lambda x, handle, n: _PREPACKED[handle](x.contiguous()), lambda x, handle, n: x.new_empty((x.shape[0], n)))


def _matrix_bytes(fused: FusedDecoder, dtypes: tuple = (torch.float32,)) -> int:
    """Bytes of the `dtypes` matrices a step multiplies by (the embedding only when it is the head)."""
    mats = [t for ts in fused.layers for t in ts[::2]] + [fused.lm_w]
    return sum(t.numel() * t.element_size() for t in mats if isinstance(t, torch.Tensor) and t.dtype in dtypes)


def _prepacked_dense(fused: FusedDecoder) -> bool:
    """Whether the step calls `fused`'s own dense GEMVs: a large fp32 model (native or oneDNN GEMV), or a
    large bf16 one where the native GEMV runs (it streams the weights faster than the frozen graph's
    oneDNN product: the 246M bench model at 2 threads, 85 against 81 tok/s)."""
    run = fused.run_lm_w
    if PREPACKED_LINEAR_OP is None or not isinstance(run, PACKED_TYPES):
        return False
    dtypes = (torch.float32, torch.bfloat16) if isinstance(run, NativeLinear) else (torch.float32,)
    return _matrix_bytes(fused, dtypes) > MAX_COMPILED_FP32_BYTES


class _StaticStep(torch.nn.Module):
    """One decode token per row over the full preallocated cache; weights held as buffers.

    forward(ids [B,1], pos [B,1], cur [1] (write slot), bias [B,1,1,L], *keys, *values) -> logits [B,1,V]
    The cache buffers are written in place (index_copy_ at `cur`).
    """

    def __init__(self, fused: FusedDecoder, manual_attention: bool = True) -> None:
        super().__init__()
        self.h, self.hkv, self.d = fused.h, fused.hkv, fused.d
        self.scale = fused.scale
        self.rms, self.eps, self.gated, self.d_ff = fused.rms, fused.eps, fused.gated, fused.d_ff
        self.act = fused.act
        self.rope = fused.rope
        self.n_layers = len(fused.layers)
        self.manual_attention = manual_attention
        self.register_buffer("embed", fused.embed.detach())
        if fused.pos_embed is not None:
            self.register_buffer("pos_embed", fused.pos_embed.detach())
        if self.rope:
            self.register_buffer("cos", fused._cos.detach())
            self.register_buffer("sin", fused._sin.detach())
        self.kernels: dict[str, tuple] = {}  # projection name -> ("int8", native) / ("w8a8",) / ("int4", group, out_features)
        self.prepacked: dict[str, tuple[int, int]] = {}  # projection name -> (handle, out_features)
        self._prepacked_refs: list = []  # keeps the weights behind the handles alive
        use_prepacked = _prepacked_dense(fused)
        names = ("qkv", "o", "ff", "dn")
        for i, tensors in enumerate(fused.layers):
            for j, name in enumerate(names):
                packed = fused.run_layers[i][2 * j] if use_prepacked else None
                self._add_projection(f"{name}{i}", tensors[2 * j], tensors[2 * j + 1], packed)
        self.register_buffer("norm_w", fused.norm_w.detach())
        self.register_buffer("norm_b", None if fused.norm_b is None else fused.norm_b.detach())
        self._add_projection("lm", fused.lm_w, fused.lm_b, fused.run_lm_w if use_prepacked else None)

    @staticmethod
    def unsupported_projection(w) -> str | None:
        """Why one of the fused step's projections cannot be compiled here (None: it can)."""
        if isinstance(w, torch.Tensor):
            return None
        calls = getattr(w, "calls", None)
        if not calls or len(calls) != 1 or not isinstance(calls[0], (Int8Kernel, Int4Kernel, Int8DynamicKernel)):
            return "quantized layers without a fused kernel, or of mixed kinds in one projection"
        if isinstance(calls[0], Int8DynamicKernel) and INT8_MM_OP is None:
            return f"torch {torch.__version__} has no torch.library.register_fake to call the int8 x int8 kernel in a graph"
        return None

    def _add_projection(self, name: str, w, bias, packed=None) -> None:
        """Buffers of one projection: a dense weight as [out, in] (what F.linear / the frozen packer
        expect), a handle to the eager step's GEMV on it (`packed`), or a quantized one's kernel layout
        with the norm gain it multiplies its input by."""
        if isinstance(packed, PACKED_TYPES) and isinstance(w, torch.Tensor):
            handle = next(_HANDLES)
            _PREPACKED[handle] = packed
            self._prepacked_refs.append(packed)
            self.prepacked[name] = (handle, w.shape[1])  # w is the [in, out] view
            self.register_buffer(f"{name}_b", None if bias is None else bias.detach())
            return
        if isinstance(w, torch.Tensor):
            self.register_buffer(f"{name}_w", w.t().contiguous().detach())
            self.register_buffer(f"{name}_b", None if bias is None else bias.detach())
            return
        why = self.unsupported_projection(w)
        if why is not None:
            raise ValueError(f"{name}: {why}")
        kernel = w.calls[0]
        self.register_buffer(f"{name}_gain", None if w.gain is None else w.gain.detach())
        self.register_buffer(f"{name}_beta", None if w.beta is None else w.beta.detach())
        self.register_buffer(f"{name}_b", kernel.bias)
        if isinstance(kernel, Int8Kernel):
            self.register_buffer(f"{name}_q", kernel.w_int8)
            self.register_buffer(f"{name}_s", kernel.scales)
            self.register_buffer(f"{name}_s32", kernel.scales_fp32)
            self.kernels[name] = ("int8", kernel.native and INT8_GEMV_OP is not None)
        elif isinstance(kernel, Int8DynamicKernel):
            self.register_buffer(f"{name}_q", kernel.w_int8)
            self.register_buffer(f"{name}_s", kernel.w_scale)
            self.kernels[name] = ("w8a8",)
        else:
            self.register_buffer(f"{name}_q", kernel.packed)
            self.register_buffer(f"{name}_s", kernel.scales_and_zeros)
            self.kernels[name] = ("int4", kernel.group, kernel.out_features)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x [B, in] @ the projection `name` -> [B, out] in x's dtype."""
        bias = getattr(self, f"{name}_b")
        if name in self.prepacked:
            y = PREPACKED_LINEAR_OP(x, *self.prepacked[name])
            return y if bias is None else y + bias
        kind = self.kernels.get(name)
        if kind is None:
            return F.linear(x, getattr(self, f"{name}_w"), bias)
        gain, beta = getattr(self, f"{name}_gain"), getattr(self, f"{name}_beta")
        xk = x if gain is None else (x * gain if beta is None else torch.addcmul(beta, x, gain))
        if kind[0] == "w8a8":  # quantized per row inside the graph (fused with the loops around it)
            y = int8_dynamic_mm(xk, getattr(self, f"{name}_q"), getattr(self, f"{name}_s"), INT8_MM_OP)
            return (y if bias is None else y + bias).to(x.dtype)
        if kind[0] == "int8" and kind[1] and x.shape[0] <= MAX_GEMV_ROWS:  # the native GEMV, fp32 activations
            y = INT8_GEMV_OP(xk.float(), getattr(self, f"{name}_q"), getattr(self, f"{name}_s32"))
            return (y if bias is None else y + bias).to(x.dtype)
        xk = xk.to(KERNEL_DTYPE)
        if kind[0] == "int8" and x.shape[0] >= INT8_DENSE_ROWS:
            y = F.linear(xk, getattr(self, f"{name}_q").to(KERNEL_DTYPE) * getattr(self, f"{name}_s")[:, None])
        elif kind[0] == "int8":
            y = torch.ops.aten._weight_int8pack_mm(xk, getattr(self, f"{name}_q"), getattr(self, f"{name}_s"))
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xk, getattr(self, f"{name}_q"), kind[1],
                                                           getattr(self, f"{name}_s"))[:, : kind[2]]
        if bias is not None:
            y = y + bias
        return y.to(x.dtype)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return F.layer_norm(x, (x.shape[-1],), None, None, self.eps)

    def _attend(self, q, k, v, bias):
        """q [B, h, 1, d] over the whole buffer k, v [B, hkv, L, d] with bias [B, 1, 1, L] -> [B, h, 1, d]."""
        if not self.manual_attention:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale, enable_gqa=self.hkv != self.h)
        # written as broadcast multiply + reductions: the inductor turns this into a few fused loops
        # (no library call per head), which is faster than SDPA for one query row
        b, h, _, d = q.shape
        g = h // self.hkv
        qg = q.view(b, self.hkv, g, 1, d) * self.scale
        s = (qg * k[:, :, None]).sum(-1) + bias  # [B, hkv, g, L] + [B, 1, 1, L]
        p = torch.softmax(s, dim=-1)
        o = (p[..., None] * v[:, :, None]).sum(-2)  # [B, hkv, g, d]
        return o.view(b, h, 1, d)

    def forward(self, ids, pos, cur, bias, *kv):
        b = ids.shape[0]
        h, hkv, d = self.h, self.hkv, self.d
        keys, values = kv[: self.n_layers], kv[self.n_layers :]
        length = kv[0].shape[2]
        # hide the slots after the one written now (the padding part of the bias comes in `bias`)
        slots = torch.arange(length, device=ids.device)
        bias = torch.where(slots > cur, torch.finfo(bias.dtype).min, bias)
        x = F.embedding(ids.view(b), self.embed)  # [B, D]
        if self.rope:
            cos = self.cos[pos][:, None]  # [B, 1, 1, d]
            sin = self.sin[pos][:, None]
        else:
            x = x + F.embedding(pos.view(b), self.pos_embed)
        half = d // 2
        for i in range(self.n_layers):
            qkv = self._linear(self._norm(x), f"qkv{i}")
            qkv = qkv.view(b, 1, h + 2 * hkv, d).transpose(1, 2)  # [B, heads, 1, d]
            qk = qkv[:, : h + hkv]
            if self.rope:
                qk = qk * cos + torch.cat([qk[..., half:], qk[..., :half]], dim=-1) * sin
            k_buf, v_buf = keys[i], values[i]
            k_buf.index_copy_(2, cur, qk[:, h:])
            v_buf.index_copy_(2, cur, qkv[:, h + hkv :])
            o = self._attend(qk[:, :h], k_buf, v_buf, bias)
            x = x + self._linear(o.reshape(b, h * d), f"o{i}")
            f = self._linear(self._norm(x), f"ff{i}")
            f = self.act(f[:, : self.d_ff]) * f[:, self.d_ff :] if self.gated else self.act(f)
            x = x + self._linear(f, f"dn{i}")
        x = self._norm(x) * self.norm_w
        if self.norm_b is not None:
            x = x + self.norm_b
        return self._linear(x, "lm").view(b, 1, -1)


def _static_bias(pad_bias: torch.Tensor | None, b: int, max_len: int, dtype, device) -> torch.Tensor:
    """[B, 1, 1, max_len] padding bias (zeros when there is no padding), materialised once."""
    if pad_bias is None:
        return torch.zeros(b, 1, 1, max_len, dtype=dtype, device=device)
    bias = pad_bias[..., :max_len]
    if bias.shape[-1] < max_len:  # pad bias shorter than the cache: slots past it are hidden by `step_bias`
        bias = F.pad(bias, (0, max_len - bias.shape[-1]))
    return bias.expand(b, 1, 1, max_len).contiguous()


class CompiledDecoder:
    """Decode step compiled with the inductor over a static cache; same call as `FusedDecoder`.

    __call__(input_ids [B, T], positions [B, T], cache, pad_bias [B,1,1,>=S] or None, last_only)
    -> logits [B, 1, V] (or [B, T, V]). One-token steps on a full-size `KVCache` run compiled;
    anything else runs the eager `FusedDecoder`.

    compile=False runs the same static-cache computation eagerly (for tests and for checking
    what the compiler buys); mode is torch.compile's mode (None = default, or
    "max-autotune-no-cudagraphs"); freezing folds the weights in as constants and pre-packs them.
    """

    def __init__(self, model, compile: bool = True, mode: str | None = None, freezing: bool = True,
                 cpp_wrapper: bool = True, manual_attention: bool = True) -> None:
        self.fused = FusedDecoder.for_model(model)
        self._model_ref = weakref.ref(model)
        self.compile, self.mode, self.freezing, self.cpp_wrapper = compile, mode, freezing, cpp_wrapper
        self.manual_attention = manual_attention
        self._bias_src = None  # (pad_bias identity, static bias) for the current generation
        self._slots: dict[tuple[int, str], torch.Tensor] = {}
        self._memo = None  # (shape, compiled step) of the last call

    @staticmethod
    def unsupported(model, max_len: int | None = None) -> str | None:
        """Why the compiled step cannot run this model (None: it can)."""
        why = FusedDecoder.unsupported(model, max_len)
        if why is not None:
            return why
        p = next(model.parameters())
        if p.device.type != "cpu":
            return f"compiled step is built and measured for CPU only (model on {p.device.type})"
        if not p.dtype.is_floating_point:
            return f"{p.dtype} weights"
        if not hasattr(torch, "compile"):
            return "torch.compile is not available"
        if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
            return "no C++ compiler found (the inductor CPU backend needs one)"
        if model.config.position == "rope" and max_len is not None and max_len > model.config.max_seq_len:
            return f"max_len {max_len} exceeds the model's max_seq_len"
        fused = FusedDecoder.for_model(model)
        fp32 = _matrix_bytes(fused)
        if fp32 > MAX_COMPILED_FP32_BYTES and not _prepacked_dense(fused):
            return (f"{fp32 / 2**20:.0f} MB of fp32 weights and no oneDNN here: the eager fused step is faster than "
                    "a compiled graph (see MAX_COMPILED_FP32_BYTES)")
        if fused.quantized:  # their kernels run inside the graph
            for w in [t for ts in fused.layers for t in ts[::2]] + [fused.lm_w]:
                why = _StaticStep.unsupported_projection(w)
                if why is not None:
                    return why
        return None

    def reserve(self, n: int) -> None:
        self.fused.reserve(n)

    # ---- the compiled function, cached per (weights, shape) --------------------------------
    def _step_fn(self, b: int, max_len: int, dtype, device):
        model = self._model_ref()
        fused = FusedDecoder.for_model(model)  # rebuilt (new key) when a weight changed
        if fused is not self.fused:
            self.fused = fused
        if fused.rope:
            fused.reserve(max_len)
        key = (id(fused), b, max_len, str(dtype), self.compile, self.mode, self.freezing, self.cpp_wrapper,
               self.manual_attention)
        with _LOCK:
            per_model = _COMPILED.setdefault(model, {})
            hit = per_model.get(key)
            if hit is not None and hit[0] is fused:
                return hit[1]
            # one fused decoder per model is live at a time: drop steps built from stale weights
            for k in [k for k, v in per_model.items() if v[0] is not fused]:
                del per_model[k]
            module = _StaticStep(fused, self.manual_attention).eval()
            fn = module
            if self.compile:
                fn = _compile(module, self.mode, self.freezing, self.cpp_wrapper)
            per_model[key] = (fused, fn, module)
            return fn

    def _slot(self, past: int, device) -> torch.Tensor:
        """The write position `past` as a 1-element long tensor (views of one table, no allocation per step)."""
        table = self._slots.get(str(device))
        if table is None or table.numel() <= past:
            table = torch.arange(max(past + 1, 4096), device=device)
            self._slots[str(device)] = table
        return table[past : past + 1]

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, cache, pad_bias: torch.Tensor | None = None,
                 last_only: bool = True) -> torch.Tensor:
        b, t = input_ids.shape
        native = self.fused.native  # one native call per token: no graph to gain over it
        if t == 1 and b == 1 and native is not None and native.accepts(cache, pad_bias):
            return native(input_ids, positions, cache)
        past = cache.seq_len
        k0 = cache.keys[0] if cache.keys else None
        if (t != 1 or k0 is None or past + 1 > cache.max_len or k0.shape[0] != b
                or any(n != past for n in cache.lengths)):
            return self.fused(input_ids, positions, cache, pad_bias, last_only)
        max_len = cache.max_len
        shape = (b, max_len, k0.dtype, k0.device)
        if self._memo is None or self._memo[0] != shape:  # weights are checked once per shape per decoder
            self._memo = (shape, self._step_fn(*shape))
        fn = self._memo[1]
        bias = self._bias(pad_bias, b, max_len, k0.dtype, k0.device)
        slot = self._slot(past, k0.device)
        logits = fn(input_ids, positions, slot, bias, *cache.keys, *cache.values)
        cache.lengths = [past + 1] * cache.n_layers
        return logits

    def _bias(self, pad_bias, b, max_len, dtype, device) -> torch.Tensor:
        """The padding part of the static bias [B,1,1,max_len], built once per generation (per pad_bias)."""
        src = self._bias_src
        if src is None or src[0] is not pad_bias or src[1].shape != (b, 1, 1, max_len) or src[1].dtype != dtype:
            src = self._bias_src = (pad_bias, _static_bias(pad_bias, b, max_len, dtype, device))
        return src[1]


def _fresh_entry(module: torch.nn.Module):
    """`lambda *a: module(*a)` with a code object of its own.

    Dynamo keeps its compiled graphs per code object. Compiling the module itself would key
    every step of every model on `Module.__call__`'s one code object, told apart only by guards
    on the module (which we skip, see `_compile`, and which count towards dynamo's limit of 8
    graphs per code object). A fresh code object per compiled step keeps exactly one graph
    each: no guard on the module is needed, and no step can run another's frozen weights.
    """

    def entry(*args):
        return module(*args)

    code = entry.__code__.replace(co_name=f"lmkit_compiled_step_{id(module):x}")
    return types.FunctionType(code, entry.__globals__, code.co_name, None, entry.__closure__)


def _compile(module: torch.nn.Module, mode: str | None, freezing: bool, cpp_wrapper: bool = True):
    """torch.compile(fullgraph, static shapes) with inductor options set while it compiles.

    freezing: weights become constants, pre-packed for MKL; cpp_wrapper: the generated code that
    calls the kernels is C++ instead of Python (saves ~0.2 ms per step at batch 1 on the bench CPU).
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    options = {}
    skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
    if skip is not None:
        # the step module's weights never change after it is built (a weight change builds a new
        # module and compiles again), so dynamo need not re-check ~50 buffers on every call
        options["guard_filter_fn"] = skip
    if mode is not None:  # torch.compile takes a mode or options, not both: spell the mode out as options
        from torch._inductor import list_mode_options

        options = {**list_mode_options(mode), **options}
    compiled = torch.compile(_fresh_entry(module), fullgraph=True, dynamic=False, options=options or None)
    options = {"freezing": freezing, "cpp_wrapper": cpp_wrapper}
    state = {"first": True}

    def run(*args):
        if state["first"]:  # compilation happens on the first call: the options must be on then
            # every (model, batch, max_len) is another graph of the same forward's code object:
            # raise dynamo's per-code-object limit (8) so a server with many shapes keeps compiling
            with inductor_config.patch(options), dynamo_config.patch(recompile_limit=_RECOMPILE_LIMIT):
                out = compiled(*args)
            state["first"] = False
            return out
        return compiled(*args)

    return run


STATIC_CACHE_MIN = 64


def static_cache_length(model, total: int) -> int:
    """The KV cache length a compiled generation of `total` tokens allocates: the next power of two
    (at least STATIC_CACHE_MIN), capped at the model's max_seq_len (`total` itself when it does not fit). The step
    is compiled per (batch, cache length), so generations whose prompt and budget add up differently
    reuse one compiled step (a few compiles per batch size in all, not one per length: each takes
    3-20 s). The price is attention over up to twice the slots, masked: on the 246M bench model 80
    tokens' cache of 128 slots reads 4 MB more per token than one of 80, against 213-852 MB of weights."""
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if limit and total > limit:  # past what the model was built for: no room to round into
        return total
    n = max(STATIC_CACHE_MIN, 1 << max(total - 1, 0).bit_length())
    return min(n, limit) if limit else n


def use_compiled(runner, model, total: int, **options) -> bool:
    """Swap `runner`'s eager fused step (a `ModelRunner`) for the compiled one when the model allows.

    This is the one change `ModelRunner` needs to use the compiled step; returns whether it did.
    """
    if runner.fused is None or CompiledDecoder.unsupported(model, total) is not None:
        return False
    runner.fused = CompiledDecoder(model, **options)
    return True
