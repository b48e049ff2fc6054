"""Greedy decoding throughput: `lmkit.infer.generate` vs `transformers` `generate`, same weights.

Model: Llama-style, hidden 384, 6 layers, 6 heads, intermediate 1024, vocab 8192, fp32, CPU,
randomly initialised by transformers, saved with save_pretrained and loaded by lmkit's
load_pretrained (so both run exactly the same weights). Prompt: 32 random tokens per row;
128 new tokens, greedy, EOS disabled so every run generates exactly 128 tokens per row.

Throughput = batch * 128 / wall time of one generate call (prefill included), in new
tokens per second. The two libraries alternate, --repeats times per batch size, and the
medians are compared (other jobs share the machine). Both outputs must be identical.

The last line is the throughput ratio ours/peer at batch 1 (> 1: lmkit is faster); the
line before gives batch 8.

    python3 bench/bench_generate.py [--repeats 7] [--batch-sizes 1 8] [--breakdown]

--breakdown additionally times lmkit's decode with cumulative in-process replacements of
model-layer methods (scratch versions, only inside this process) to show what in the
model forward costs time; it changes no file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

CONFIG = dict(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
              num_key_value_heads=6, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def build(seed: int = 0):
    import transformers

    from lmkit.hub import load_pretrained

    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_pretrained(d).eval()
    return hf, ours


def time_hf(hf, ids: torch.Tensor, new: int) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        t = time.perf_counter()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
        dt = time.perf_counter() - t
    return ids.shape[0] * new / dt, out


def time_ours(model, ids: torch.Tensor, new: int) -> tuple[float, torch.Tensor]:
    from lmkit.infer import generate

    t = time.perf_counter()
    out = generate(model, ids, max_new_tokens=new, eos_token_id=[], pad_token_id=0)
    dt = time.perf_counter() - t
    return ids.shape[0] * new / dt, out.sequences


# ---- --breakdown: what the model forward costs (in-process method replacements) ----------------
def _breakdown_patches():
    """Scratch versions of model-layer methods, each removing one source of per-step overhead."""
    from lmkit.models import attention, block, ffn, norms

    def rms(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def blk(self, x, *, attn_bias=None, rope=None, kv_cache=None, is_causal=False, encoder_states=None,
            cross_bias=None, return_weights=False):
        a, w = self.self_attn(self.attn_norm(x), attn_bias=attn_bias, rope=rope, kv_cache=kv_cache,
                              is_causal=is_causal, return_weights=return_weights)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), w

    def attn(self, x, *, attn_bias=None, rope=None, kv_cache=None, kv_input=None, is_causal=False,
             return_weights=False):
        b, t, _ = x.shape
        if not hasattr(self, "_bench_wqkv"):
            self._bench_wqkv = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        h, hk, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = F.linear(x, self._bench_wqkv).view(b, t, h + 2 * hk, hd).transpose(1, 2)
        qk, v = qkv[:, : h + hk], qkv[:, h + hk:]
        if rope is not None:
            cos, sin = rope[0][:, None], rope[1][:, None]
            qk = qk * cos + torch.cat([-qk[..., hd // 2:], qk[..., : hd // 2]], -1) * sin
        q, k = qk[:, :h], qk[:, h:]
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        causal = is_causal and attn_bias is None and t > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, is_causal=causal, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * hd)), None

    def mlp(self, x):
        if not hasattr(self, "_bench_wgu"):
            self._bench_wgu = torch.cat([self.gate_proj.weight, self.up_proj.weight])
        g, u = F.linear(x, self._bench_wgu).chunk(2, -1)
        return self.down_proj(F.silu(g) * u)

    from lmkit.models import decoder
    from lmkit.models.output import ModelOutput

    def straight(self, input_ids, attention_mask=None, position_ids=None, labels=None, kv_cache=None,
                 prefix_len=None, return_weights=False, num_logits_to_keep=0):
        """The whole Llama forward as straight-line functional code (no padding, no windows)."""
        cfg = self.config
        b, t = input_ids.shape
        past = kv_cache.seq_len
        if not hasattr(self, "_bench_w"):
            pos = torch.arange(cfg.max_seq_len * 2, dtype=torch.float32)[:, None] * self.rotary.inv_freq
            emb = torch.cat([pos, pos], -1)
            self._bench_rope = emb.cos(), emb.sin()
            self._bench_w = [(L.attn_norm.weight, torch.cat([L.self_attn.q_proj.weight, L.self_attn.k_proj.weight,
                                                            L.self_attn.v_proj.weight]), L.self_attn.o_proj.weight,
                              L.mlp_norm.weight, torch.cat([L.mlp.gate_proj.weight, L.mlp.up_proj.weight]),
                              L.mlp.down_proj.weight) for L in self.layers]
        h, hk, hd, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps
        cos, sin = (r[past: past + t] for r in self._bench_rope)
        x = F.embedding(input_ids, self.embed_tokens.weight)
        for i, (n1, wqkv, wo, n2, wgu, wd) in enumerate(self._bench_w):
            qkv = F.linear(F.rms_norm(x, (x.shape[-1],), n1, eps), wqkv).view(b, t, h + 2 * hk, hd).transpose(1, 2)
            qk, v = qkv[:, : h + hk], qkv[:, h + hk:]
            qk = qk * cos + torch.cat([-qk[..., hd // 2:], qk[..., : hd // 2]], -1) * sin
            k, v = kv_cache.update(i, qk[:, h:], v)
            o = F.scaled_dot_product_attention(qk[:, :h], k, v, is_causal=t > 1)
            x = x + F.linear(o.transpose(1, 2).reshape(b, t, h * hd), wo)
            g, u = F.linear(F.rms_norm(x, (x.shape[-1],), n2, eps), wgu).chunk(2, -1)
            x = x + F.linear(F.silu(g) * u, wd)
        x = F.rms_norm(x[:, -num_logits_to_keep:] if num_logits_to_keep else x, (x.shape[-1],), self.norm.weight, eps)
        return ModelOutput(logits=F.linear(x, self.lm_head.weight), kv_cache=kv_cache)

    targets = {"rms": (norms.RMSNorm, "forward"), "blk": (block.TransformerBlock, "forward"),
               "attn": (attention.Attention, "forward"), "mlp": (ffn.FeedForward, "forward"),
               "dec": (decoder.DecoderLM, "forward")}
    originals = {k: getattr(c, n) for k, (c, n) in targets.items()}
    stages = [
        ("lmkit as is", {}),
        ("+ RMSNorm as one F.rms_norm", {"rms": rms}),
        ("+ block without Dropout(p=0)/lambda calls", {"rms": rms, "blk": blk}),
        ("+ one fused QKV matmul, RoPE on q and k at once", {"rms": rms, "blk": blk, "attn": attn}),
        ("+ one fused gate/up matmul", {"rms": rms, "blk": blk, "attn": attn, "mlp": mlp}),
        ("whole forward as straight-line functional code", {"dec": straight}),
    ]

    def apply(patch: dict) -> None:
        for k, (c, n) in targets.items():
            setattr(c, n, patch.get(k, originals[k]))

    return stages, apply


def matmul_floor_ms(model, batch: int, repeats: int = 15) -> float:
    """Median time of the 43 weight matmuls of one decode step alone (the memory-bandwidth floor)."""
    mats = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(batch, w.shape[1]) for w in mats}
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            for w in mats:
                F.linear(xs[w.shape[1]], w)
            times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--breakdown", action="store_true", help="also time model-forward variants (see docstring)")
    args = ap.parse_args()

    import transformers

    hf, ours = build()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    print(f"model: Llama d=384 L=6 H=6 ffn=1024 V=8192 fp32 ({sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M "
          f"params), prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy")
    ratios = {}
    for b in args.batch_sizes:
        ids = torch.randint(3, CONFIG["vocab_size"], (b, args.prompt_len), generator=torch.Generator().manual_seed(b))
        time_hf(hf, ids, 4), time_ours(ours, ids, 4)  # warm-up
        hf_rates, our_rates = [], []
        for _ in range(args.repeats):
            r, ref = time_hf(hf, ids, args.new_tokens)
            hf_rates.append(r)
            r, seq = time_ours(ours, ids, args.new_tokens)
            our_rates.append(r)
            if not torch.equal(seq, ref):
                raise SystemExit(f"batch {b}: lmkit and transformers generated different tokens")
        h, o = statistics.median(hf_rates), statistics.median(our_rates)
        ratios[b] = o / h
        print(f"batch {b}: transformers {h:7.1f} tok/s ({1e3 * b / h:.2f} ms/step)  lmkit {o:7.1f} tok/s "
              f"({1e3 * b / o:.2f} ms/step)  ratio {o / h:.2f}  [runs: hf {[round(x) for x in hf_rates]}, "
              f"lmkit {[round(x) for x in our_rates]}]")
        if args.breakdown:
            stages, apply = _breakdown_patches()
            rates = {name: [] for name, _ in stages}
            try:
                for _ in range(args.repeats):
                    for name, patch in stages:
                        apply(patch)
                        r, seq = time_ours(ours, ids, args.new_tokens)
                        if not torch.equal(seq, ref):
                            raise SystemExit(f"breakdown stage {name!r} changed the output")
                        rates[name].append(r)
            finally:
                apply({})
            print(f"  breakdown (cumulative; medians; matmuls alone: {matmul_floor_ms(ours, b):.2f} ms/step):")
            for name, _ in stages:
                m = statistics.median(rates[name])
                print(f"    {name:50s} {m:7.1f} tok/s  {1e3 * b / m:.2f} ms/step  x{m / h:.2f} transformers")
    others = [b for b in args.batch_sizes if b != 1]
    for b in others:
        print(f"ratio ours/peer batch {b}: {ratios[b]:.2f}")
    if 1 in ratios:
        print(f"ratio ours/peer: {ratios[1]:.2f}")


if __name__ == "__main__":
    main()
