"""A lean decode step for `DecoderLM`: merged projections and no per-step bookkeeping.

At decode time a step processes one token per row, so the matrix products are small and
much of the time goes to everything around them: module calls, mask and position
construction, rotary tables, reshapes. `FusedDecoder` computes the model's forward for
the new tokens with far fewer operations, the way serving engines (vLLM, llama.cpp) do:

* q/k/v projections merged into one matrix, gate/up into another (one GEMM instead of
  three / two), with the preceding norm's gain (and LayerNorm bias) folded into them:
  (n(x) * g + beta) @ W^T + b = n(x) @ (W * g)^T + (W @ beta + b);
* off CPU (and where oneDNN is missing) o_proj, down_proj and lm_head are used in place (no
  copy) and every GEMM is `mm(x, W.t())` on [tokens, features] activations (the layout
  nn.Linear uses), with the residual add riding along (addmm's beta term); on CPU see the
  oneDNN point below; activations stay [tokens, features], so nothing is reshaped between GEMMs;
* rotary cos/sin read from a table built once (rotate_half(x) * sin is written as
  roll(x, D/2) * sin with the sign folded into the table);
* the padding mask turned into an additive bias once per generation and sliced per step;
  SDPA's native GQA (torch >= 2.5) instead of copying cached keys/values to every head;
* bf16/fp16 models attend in fp32 on CPU (q, k, v upcast): PyTorch's CPU SDPA in bf16 is
  10-15x slower than in fp32 at decode shapes (1 query over 80 keys: 259 us vs 21 us with
  the upcast, 2.6 ms vs 0.25 ms over 512 keys, 16 heads / 4 kv heads, 1 thread);
* RMSNorm as one `F.rms_norm` operator (computed in fp32);
* on CPU, fp32 and bf16 products of one or two rows run on lmkit's native GEMV (`NativeLinear`,
  lmkit/native_gemv.py: each thread streams a contiguous block of weight rows, 9-12 % faster
  than oneDNN's GEMV at a quarter of its per-call cost) over the [out, in] weights in place; more
  rows (prefill, batches), and every product where the native kernel cannot be built, run through
  oneDNN's linear on weights reordered once into its blocked layouts (`_OneDNNLinear`; 1.5x / 2x
  faster GEMVs in fp32 / bf16 than the plain layout). torch.mm and MKL's sgemv compute a one-row
  fp32 product on a single thread (and MKL takes a generic path on AMD CPUs); both of ours split
  it over the threads and stay exact fp32.

The merged matrices are copies (rebuilt automatically when a parameter changes): the
fused step holds a second copy of the attention-input and FFN-input weights (of every
weight for an fp32 or bf16 model on CPU, whose matrices are reordered for oneDNN); models over
2 GiB run unfused (at that size the
step is bandwidth-bound and the saved overhead matters little). It writes the model's own
`KVCache`, so prefill by `model.forward` and decode steps by `FusedDecoder` mix freely.
Quantized projections (quant/linear.py) run here too: their norm gain cannot be folded into
integer codes, so it multiplies the normed activations instead, and q/k/v (gate/up) of one
kind are stacked row-wise into one quantized module (`merge_rows`), whose fused weight-only
kernel (int8, int4) takes bf16 activations; the residual stream keeps the model's dtype.
Architectures it does not cover (MoE, ALiBi, T5 bias, post-norm, dynamic NTK and LongRoPE
(tables that depend on the sequence length), partial rotary, parallel residual, an active
sliding window, Gemma's (1 + w) norms / soft-capping / per-layer attention types, training
mode, adapted layers, forward hooks) are reported by
`FusedDecoder.unsupported(model)` and run through `model.forward` instead. `ModelRunner`
(runner.py) picks the step. A one-token step of one unpadded fp32 or bf16 sequence goes to `NativeStep`
(native_step.py), which runs these same matrices in one native call.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from lmkit import native_gemv
from lmkit.infer.native_step import NativeStep
from lmkit.native_gemv import NativeLinear
from lmkit.models.ffn import activation_fn
from lmkit.quant.linear import QUANT_LINEAR_TYPES, QuantLinearBase, merge_rows
from lmkit.quant.weight_kernels import KERNEL_DTYPE

MAX_FUSED_BYTES = 2 * 2**30  # larger models are bandwidth-bound anyway: not worth a second copy of the weights
_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)
_RMS_NORM = hasattr(F, "rms_norm")
_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, FusedDecoder]]" = weakref.WeakKeyDictionary()


class FusedDecoder:
    """Decode-time forward of a `DecoderLM`: __call__(ids [B, T], positions [B, T], cache, bias) -> logits."""

    @staticmethod
    def unsupported(model, max_len: int | None = None) -> str | None:
        """Why the fused step cannot run this model (None: it can)."""
        cfg = getattr(model, "config", None)
        if cfg is None or type(model).__name__ != "DecoderLM":
            return "not a DecoderLM"
        if model.training:
            return "model is in training mode (dropout)"
        if any(type(p).__name__ == "DTensor" for p in model.parameters()):
            return "tensor-parallel (DTensor) weights: model.forward runs their collectives"
        if cfg.n_experts:
            return "mixture-of-experts layers"
        if cfg.position not in ("rope", "learned"):
            return f"{cfg.position} positions"
        if cfg.position == "rope" and cfg.rope_scaling in ("dynamic", "longrope"):
            return f"{cfg.rope_scaling} rope scaling (its tables depend on the sequence length)"
        if cfg.position == "rope" and cfg.partial_rotary_factor != 1.0:
            return "partial rotary embedding"
        if cfg.parallel_residual:
            return "parallel residual"
        if cfg.norm_position != "pre":
            return f"{cfg.norm_position} norm placement"
        if cfg.qk_norm:
            return "q/k norm"
        if cfg.gemma_settings():  # (1 + w) norms, embedding scale, soft-capping, per-layer attention types
            return "Gemma settings: " + ", ".join(cfg.gemma_settings())
        if cfg.sliding_window is not None and (max_len is None or max_len > cfg.sliding_window):
            return "sliding-window attention"
        for layer in model.layers:
            if type(layer).__name__ != "TransformerBlock" or type(layer.self_attn).__name__ != "Attention":
                return f"custom layer {type(layer).__name__}"
            if type(layer.mlp).__name__ != "FeedForward":
                return f"feed-forward module {type(layer.mlp).__name__}"
            a, m = layer.self_attn, layer.mlp
            linears = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.up_proj, m.down_proj]
            linears += [m.gate_proj] if cfg.gated_ffn else []
            if any(type(lin) is not torch.nn.Linear and type(lin) not in QUANT_LINEAR_TYPES for lin in linears):
                return "adapted linear layers"
        if type(model.lm_head) is not torch.nn.Linear and type(model.lm_head) not in QUANT_LINEAR_TYPES:
            return "adapted lm_head"
        if type(model.embed_tokens) is not torch.nn.Embedding:
            return "adapted or quantized embeddings"
        if any(mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules()):
            return "forward hooks are registered"
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        size += sum(m.weight_bytes() for m in model.modules() if isinstance(m, QuantLinearBase))
        if size > MAX_FUSED_BYTES:
            return f"weights of {size / 2**30:.1f} GiB (the fused step keeps a second, transposed copy)"
        return None

    @classmethod
    def for_model(cls, model) -> "FusedDecoder":
        """The fused decoder of `model`, reused while no parameter has changed."""
        params = list(model.parameters()) + list(model.buffers())
        key = tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in params)
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        fused = cls(model)
        if fused.quantized:  # building the kernels may move int8 codes into huge pages (same values): key on what is there now
            params = list(model.parameters()) + list(model.buffers())
            key = tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in params)
        _CACHE[model] = (key, fused)
        return fused

    @torch.no_grad()
    def __init__(self, model) -> None:
        cfg = model.config
        self.model = weakref.proxy(model)
        self.cfg = cfg
        self.h, self.hkv, self.d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = 1.0 / self.d**0.5 if cfg.scale_attn else 1.0
        self.rms = cfg.norm == "rmsnorm"
        self.eps = cfg.norm_eps
        self.gated = cfg.gated_ffn
        self.d_ff = cfg.d_ff
        self.act = activation_fn(cfg.activation)
        self.rope = cfg.position == "rope"
        self.embed = model.embed_tokens.weight
        self.pos_embed = model.embed_positions.weight if cfg.position == "learned" else None
        self.layers = []
        for layer in model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv_w, qkv_b = _fold(layer.attn_norm, [a.q_proj, a.k_proj, a.v_proj])
            ff_w, ff_b = _fold(layer.mlp_norm, [m.gate_proj, m.up_proj] if self.gated else [m.up_proj])
            o_w, o_b = _plain(a.o_proj)
            dn_w, dn_b = _plain(m.down_proj)
            self.layers.append((qkv_w, qkv_b, o_w, o_b, ff_w, ff_b, dn_w, dn_b))
        self.norm_w, self.norm_b = model.norm.weight, getattr(model.norm, "bias", None)
        self.lm_w, self.lm_b = _plain(model.lm_head)
        # what __call__ runs: fp32/bf16 dense CPU weights through the native GEMV or oneDNN (the same products;
        # 1x1024 @ 1024x11264 bf16 2.3x faster than torch.mm, fp32 on both threads instead of one); else the tensors above
        self.run_layers = [tuple(_prepacked(t) if j % 2 == 0 else t for j, t in enumerate(ts)) for ts in self.layers]
        self.run_lm_w = _prepacked(self.lm_w)
        self.quantized = any(isinstance(t, _QuantProj) for ts in self.layers for t in ts) \
            or isinstance(self.lm_w, _QuantProj)
        self._cos = self._sin = None
        # the one-token step (`_decode_token`): each projection bound to one call, no type checks per step
        self.run_one = [(_in_call(qkv_w, qkv_b), _residual_call(o_w, o_b), _in_call(ff_w, ff_b), _residual_call(dn_w, dn_b))
                        for qkv_w, qkv_b, o_w, o_b, ff_w, ff_b, dn_w, dn_b in self.run_layers]
        # one unpadded fp32 or bf16 sequence: the whole step as one native call (native_step.py)
        self.native = NativeStep(self) if NativeStep.unsupported(self) is None else None

    def reserve(self, n: int) -> None:
        """Build the rotary tables (cos, sign-folded sin [n, head_dim]) for positions 0..n-1."""
        if self.rope and (self._cos is None or self._cos.shape[0] < n):
            grown = max(256, 2 * (0 if self._cos is None else self._cos.shape[0]))
            size = max(n, min(grown, self.cfg.max_seq_len))
            pos = torch.arange(size, device=self.embed.device)[None]
            cos, sin = self.model.rotary(pos, self.embed.dtype)
            half = self.d // 2
            self._cos = cos[0].contiguous()
            self._sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).contiguous()

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm without its gain/bias (those are folded into the next projection)."""
        if self.rms:
            if _RMS_NORM and x.device.type == "cpu":  # one operator; computes in fp32 for bf16/fp16 input
                return F.rms_norm(x, (x.shape[-1],), None, self.eps)  # (bitwise what the upcast below gives)
            xf = x.float()
            if _RMS_NORM:  # one operator instead of five, same formula
                return F.rms_norm(xf, (xf.shape[-1],), None, self.eps).to(x.dtype)
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(self.eps))).to(x.dtype)
        return F.layer_norm(x, (x.shape[-1],), None, None, self.eps)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, cache, pad_bias: torch.Tensor | None = None,
                 last_only: bool = True) -> torch.Tensor:
        """input_ids [B, T] continuing `cache`; positions [B, T]; pad_bias [B, 1, 1, >= past + T] additive.

        Returns logits [B, 1, V] (last position) or [B, T, V] with last_only=False.
        """
        b, t = input_ids.shape
        if t == 1 and b == 1 and self.native is not None and self.native.accepts(cache, pad_bias):
            return self.native(input_ids, positions, cache)
        if t == 1 and self.run_one is not None:
            return self._decode_token(input_ids, positions, cache, pad_bias)
        h, hkv, d = self.h, self.hkv, self.d
        past = cache.seq_len
        s = past + t
        x = F.embedding(input_ids, self.embed)
        if self.rope:
            if self._cos is None:
                self.reserve(int(positions.max()) + 1)
            cos = self._cos[positions][:, None]  # [B, 1, T, D]; positions must be < reserve()'d length
            sin = self._sin[positions][:, None]
        else:
            cos = sin = None
            x = x + F.embedding(positions, self.pos_embed)
        bias = None if pad_bias is None else pad_bias[..., :s]
        if t > 1:  # new tokens see the cache and each other causally (bottom-right aligned)
            keep = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(s - t)
            causal = torch.zeros(t, s, dtype=x.dtype, device=x.device).masked_fill(~keep, torch.finfo(x.dtype).min)
            bias = causal if bias is None else bias + causal
        attn_fp32 = x.dtype != torch.float32 and x.device.type == "cpu"
        if attn_fp32 and bias is not None:
            bias = bias.float()
        n = b * t
        x = x.view(n, -1)  # activations stay [tokens, features]: one GEMM per projection
        for i, (qkv_w, qkv_b, o_w, o_b, ff_w, ff_b, dn_w, dn_b) in enumerate(self.run_layers):
            qkv = _mm(self._norm(x), qkv_w, qkv_b).to(x.dtype).view(b, t, h + 2 * hkv, d).transpose(1, 2)
            o = self._attend(i, qkv, cos, sin, cache, bias, attn_fp32).to(x.dtype)
            x = _residual_mm(x, o.transpose(1, 2).reshape(n, h * d), o_w, o_b)
            f = _mm(self._norm(x), ff_w, ff_b).to(x.dtype)
            if self.gated:
                f = self.act(f[:, : self.d_ff]) * f[:, self.d_ff :]
            else:
                f = self.act(f)
            x = _residual_mm(x, f, dn_w, dn_b)
        x = x.view(b, t, -1)
        if last_only:
            x = x[:, -1]
        h = self._norm(x.reshape(-1, x.shape[-1])) * self.norm_w
        if self.norm_b is not None:
            h = h + self.norm_b
        logits = _mm(h, self.run_lm_w, self.lm_b).to(x.dtype)
        return logits.view(b, 1 if last_only else t, -1)

    def _attend(self, i: int, qkv: torch.Tensor, cos, sin, cache, bias: torch.Tensor | None,
                attn_fp32: bool) -> torch.Tensor:
        """qkv [B, heads + 2 kv_heads, T, d] -> attention output [B, heads, T, d]: RoPE on q and k,
        the new keys/values appended to layer i of the cache, SDPA over all of them."""
        h, hkv = self.h, self.hkv
        qk = qkv[:, : h + hkv]
        if self.rope:
            qk = qk * cos + qk.roll(self.d // 2, -1) * sin
        k_all, v_all = cache.update(i, qk[:, h:], qkv[:, h + hkv :])
        q = qk[:, :h]
        if attn_fp32:  # CPU SDPA in bf16/fp16 is ~10x slower than in fp32 at decode shapes
            q, k_all, v_all = q.float(), k_all.float(), v_all.float()
        if hkv != h and _GQA:
            return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias, scale=self.scale, enable_gqa=True)
        if hkv != h:
            rep = h // hkv
            k_all = k_all.repeat_interleave(rep, dim=1)
            v_all = v_all.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias, scale=self.scale)

    def _decode_token(self, input_ids: torch.Tensor, positions: torch.Tensor, cache,
                      pad_bias: torch.Tensor | None) -> torch.Tensor:
        """One new token per row (t == 1), the decode step proper: the same computation as the general
        path with fewer operator calls (a one-layer bf16 step: 45 instead of 52) and less Python between
        them (projections bound once, no type checks per call): activations stay
        [B, features] and are viewed as [B, heads, 1, d] (the same memory at one token), casts that do
        nothing are not made. Bitwise the same logits as the general path."""
        b = input_ids.shape[0]
        h, hkv, d = self.h, self.hkv, self.d
        s = cache.seq_len + 1
        x = F.embedding(input_ids.view(b), self.embed)
        dtype = x.dtype
        if self.rope:
            if self._cos is None:
                self.reserve(int(positions.max()) + 1)
            pos = positions.view(b)
            cos = self._cos[pos].view(b, 1, 1, d)
            sin = self._sin[pos].view(b, 1, 1, d)
        else:
            cos = sin = None
            x = x + F.embedding(positions.view(b), self.pos_embed)
        bias = None if pad_bias is None else pad_bias[..., :s]
        attn_fp32 = dtype != torch.float32 and x.device.type == "cpu"
        if attn_fp32 and bias is not None:
            bias = bias.float()
        hq = h + hkv
        norm = self._norm
        for i, (qkv_f, o_f, ff_f, dn_f) in enumerate(self.run_one):
            qkv = qkv_f(norm(x))
            if qkv.dtype != dtype:  # a quantized kernel's bf16 result
                qkv = qkv.to(dtype)
            qkv = qkv.reshape(b, hq + hkv, 1, d)  # a view (reshape only for an int4 kernel's padded slice)
            o = self._attend(i, qkv, cos, sin, cache, bias, attn_fp32).reshape(b, h * d)
            if o.dtype != dtype:
                o = o.to(dtype)
            x = o_f(x, o)
            f = ff_f(norm(x))
            if f.dtype != dtype:
                f = f.to(dtype)
            f = self.act(f[:, : self.d_ff]) * f[:, self.d_ff :] if self.gated else self.act(f)
            x = dn_f(x, f)
        hn = norm(x) * self.norm_w
        if self.norm_b is not None:
            hn = hn + self.norm_b
        logits = _mm(hn, self.run_lm_w, self.lm_b)
        if logits.dtype != dtype:
            logits = logits.to(dtype)
        return logits.view(b, 1, -1)


class _QuantProj:
    """Quantized projection(s) of one input: y = (x * gain + beta) @ W^T + b, W quantized.

    The gain (and LayerNorm bias) of the preceding norm multiplies the activations, since it
    cannot be folded into integer codes; the layers are merged into one module when they are
    of one kind (`merge_rows`), else called one by one and concatenated. Layers with a fused
    kernel on this device are called through their `kernel_fn()` (bf16 result; callers cast)."""

    def __init__(self, linears, norm=None) -> None:
        merged = merge_rows(list(linears))
        mods = [merged] if merged is not None else list(linears)
        # a kernel function holds only the kernel's layout: a merged module's own storage is dropped;
        # a float Linear among them (a GGUF Q4_K_M layer mixes Q4_K and Q6_K-as-float) is called as it is
        self.calls = [m.kernel_fn() if isinstance(m, QuantLinearBase) and m.kernel_reason(_device_of(m)) is None
                      and type(m).make_kernel is not QuantLinearBase.make_kernel else m for m in mods]
        self.gain = None if norm is None else norm.weight
        self.beta = None if norm is None else getattr(norm, "bias", None)
        # every call a kernel (bf16 input): the gain product is written straight in bf16, one kernel
        # instead of a product and a cast (the same fp32 product, rounded once: the same bits)
        self.kernel_input = all(getattr(f, "input_dtype", None) == KERNEL_DTYPE for f in self.calls)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.gain is not None:
            out = None
            if self.kernel_input and x.dtype != KERNEL_DTYPE:
                out = torch.empty(x.shape, dtype=KERNEL_DTYPE, device=x.device)
            x = torch.mul(x, self.gain, out=out) if self.beta is None else torch.addcmul(self.beta, x, self.gain, out=out)
        if len(self.calls) == 1:
            return self.calls[0](x)
        outs = [f(x) for f in self.calls]
        return torch.cat([o.to(outs[0].dtype) for o in outs], dim=-1)


def _device_of(module: torch.nn.Module) -> torch.device:
    t = next(module.buffers(), None)
    return t.device if t is not None else next(module.parameters()).device


class _OneDNNLinear:
    """A CPU weight reordered once into oneDNN's blocked layout: y = x @ w_t (+ bias).

    oneDNN's fp32 GEMV splits the output over the intra-op threads, whereas torch.mm / MKL's
    sgemv run a one-row fp32 product on one thread (the second OpenMP thread stays idle), and
    it stays exact fp32 (no reduced-precision math). The layouts, measured on the benchmark
    CPU (AMD EPYC, AVX-512) over the 185M model's weights, 1 thread: bf16 AB16b64a2b 15.3 ms
    vs 30.1 ms unreordered (a plain sum over the same bytes: 14.3 ms); fp32 AB16b64a (batch
    hint 2; hint 1 keeps the plain layout and an AVX2 kernel) 26.5 ms vs 38.4 ms (sum: 23.5 ms,
    torch.mv 44.0 ms). (The residual add as oneDNN's binary post-op measured 35 us per call
    slower than a separate add.)"""

    def __init__(self, w_t: torch.Tensor) -> None:
        hint = 1 if w_t.dtype == torch.bfloat16 else 2
        self.w = torch.ops.mkldnn._reorder_linear_weight(w_t.detach().t().contiguous(), hint)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.w, bias, "none", [], "")


PACKED_TYPES = (_OneDNNLinear, NativeLinear)


def _prepacked(w_t):
    """`w_t` as a `NativeLinear` (where the native GEMV builds) or an `_OneDNNLinear` (where oneDNN is there)
    when it is a bf16 / fp32 CPU weight; else `w_t` itself."""
    if isinstance(w_t, torch.Tensor) and w_t.dtype in (torch.bfloat16, torch.float32) and w_t.device.type == "cpu":
        if native_gemv.unavailable() is None:
            return NativeLinear(w_t)
        if _MKLDNN:
            return _OneDNNLinear(w_t)
    return w_t


def _plain(linear) -> tuple[object, torch.Tensor | None]:
    """(weight as its [in, out] view, bias) of an nn.Linear, or (_QuantProj, None) of a quantized one."""
    if isinstance(linear, QuantLinearBase):
        return _QuantProj([linear]), None
    return linear.weight.t(), linear.bias


def _fold(norm, linears) -> tuple[object, torch.Tensor | None]:
    """Merge `linears` (same input) into one [in, out] matrix with the norm's gain and bias folded in.

    (n(x) * g + beta) @ W^T + b  =  n(x) @ (W * g)^T + (W @ beta + b)
    Quantized layers give a `_QuantProj` (gain applied to the activations) and no separate bias.
    """
    if any(isinstance(lin, QuantLinearBase) for lin in linears):
        return _QuantProj(linears, norm), None
    w = torch.cat([lin.weight for lin in linears])
    biases = [lin.bias for lin in linears]
    b = torch.cat(biases) if biases[0] is not None else None
    beta = getattr(norm, "bias", None)
    if beta is not None:
        extra = w @ beta
        b = extra if b is None else b + extra
    return (w * norm.weight[None, :]).t(), b  # stored [out, in] like nn.Linear; used as its [in, out] view


def _in_call(w_t, bias: torch.Tensor | None):
    """`_mm(x, w_t, bias)` as one bound callable x -> y (chosen once instead of per call)."""
    if isinstance(w_t, _QuantProj):
        return w_t
    if isinstance(w_t, PACKED_TYPES):
        return w_t if bias is None else (lambda x: w_t(x, bias))
    return (lambda x: torch.mm(x, w_t)) if bias is None else (lambda x: torch.addmm(bias, x, w_t))


def _residual_call(w_t, bias: torch.Tensor | None):
    """`_residual_mm(x, a, w_t, bias)` as one bound callable (x, a) -> x + a @ w_t + bias."""
    if isinstance(w_t, NativeLinear):  # the residual add inside the kernel
        return lambda x, a: w_t(a, bias, x)
    if isinstance(w_t, (_QuantProj, _OneDNNLinear)):
        return (lambda x, a: x + w_t(a)) if bias is None else (lambda x, a: x + w_t(a, bias))
    return (lambda x, a: torch.addmm(x, a, w_t)) if bias is None else (lambda x, a: torch.addmm(x + bias, a, w_t))


def _mm(x: torch.Tensor, w_t, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(w_t, _QuantProj):
        return w_t(x)
    if isinstance(w_t, PACKED_TYPES):
        return w_t(x, bias)
    return torch.mm(x, w_t) if bias is None else torch.addmm(bias, x, w_t)


def _residual_mm(x: torch.Tensor, a: torch.Tensor, w_t, bias: torch.Tensor | None) -> torch.Tensor:
    """x + (a @ w_t + bias): the residual add rides along in the GEMM (addmm's beta term)."""
    if isinstance(w_t, NativeLinear):
        return w_t(a, bias, x)
    if isinstance(w_t, (_QuantProj, _OneDNNLinear)):
        return x + (w_t(a) if bias is None else w_t(a, bias))
    return torch.addmm(x, a, w_t) if bias is None else torch.addmm(x + bias, a, w_t)


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1/0 mask [B, S] -> additive bias [B, 1, 1, S] (0 where visible, the dtype's minimum where not)."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask.bool(), zero, torch.finfo(dtype).min)[:, None, None, :]
