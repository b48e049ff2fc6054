"""Greedy generation throughput: lmkit.infer.generate vs transformers.generate, same weights.

A randomly initialised Llama (hidden 384, 6 layers, 6 heads, intermediate 1024, vocab
8192, fp32) is built with transformers, saved, and loaded into lmkit. Both generate 128
new tokens greedily after a 32-token prompt, on CPU, at batch 1 and batch 8 (EOS disabled
so every run produces all 128 tokens; the token ids are checked to be identical).
Each configuration is timed --repeats times, alternating lmkit and transformers so that
load from other processes hits both alike; the medians are reported.

Also printed: where lmkit's time per decode step goes (the weight GEMMs alone, the fused
step, the plain module forward), to show how much is arithmetic and how much overhead.

--compile runs lmkit's decode steps through the compiled static-cache step
(`generate(..., compile=True)`, infer/compiled_step.py). Its first call per (batch, cache
length) compiles; that time is printed separately and the timed runs reuse the compiled step.
--mode / --no-freezing / --no-cpp-wrapper change the compile options.

Ratio = new tokens/s of lmkit / new tokens/s of transformers (higher is better for lmkit).
Last line: `ratio ours/HF batch1: X`.

    python3 bench/bench_generate.py [--repeats 5] [--threads N] [--compile [--mode M]]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import warnings

import torch


def build(tmp: str):
    import transformers

    from lmkit.hub import load_pretrained

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                                   num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                                   bos_token_id=1, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.generation_config.eos_token_id = None  # run all 128 steps
    hf.generation_config.pad_token_id = 0
    hf.save_pretrained(tmp)
    return hf, load_pretrained(tmp)


def run_hf(hf, ids: torch.Tensor, new: int) -> tuple[float, torch.Tensor]:
    mask = torch.ones_like(ids)
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False)
    return time.perf_counter() - start, out[:, ids.shape[1] :]


def run_ours(model, ids: torch.Tensor, new: int, compile: bool = False) -> tuple[float, torch.Tensor]:
    from lmkit.infer import generate

    start = time.perf_counter()
    out = generate(model, ids, max_new_tokens=new, eos_token_id=[], compile=compile)
    return time.perf_counter() - start, torch.tensor(out.sequences)


def step_breakdown(model, batch: int, prompt_len: int, steps: int = 64, compile: bool = False) -> dict[str, float]:
    """ms per decode step: weight GEMMs alone, lmkit's (compiled and) fused step, lmkit's module forward."""
    import torch.nn.functional as F

    from lmkit.infer.runner import ModelRunner

    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(batch, 1, m.in_features) for m in lins]
    ids = torch.randint(3, 8192, (batch, prompt_len))
    out = {}
    with torch.inference_mode():
        for _ in range(3):
            for m, x in zip(lins, xs):
                F.linear(x, m.weight)
        start = time.perf_counter()
        for _ in range(steps):
            for m, x in zip(lins, xs):
                F.linear(x, m.weight)
        out["GEMMs only"] = (time.perf_counter() - start) / steps * 1e3
        kinds = [("fused step", True, False), ("module forward", False, False)]
        for name, fused, compiled in ([("compiled step", True, True)] if compile else []) + kinds:
            cache = model.make_cache(batch, prompt_len + steps + 8)
            runner = ModelRunner(model, batch, prompt_len + steps + 8, None, fused, compiled=compiled)
            runner.prefill(ids, cache)
            tok = ids[:, -1:]
            for _ in range(4):
                runner.step(tok, cache)
            start = time.perf_counter()
            for _ in range(steps):
                runner.step(tok, cache)
            out[name] = (time.perf_counter() - start) / steps * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--compile", action="store_true", help="lmkit: generate(..., compile=True)")
    ap.add_argument("--mode", default=None, help="torch.compile mode (e.g. max-autotune-no-cudagraphs)")
    ap.add_argument("--no-freezing", action="store_true")
    ap.add_argument("--no-cpp-wrapper", action="store_true")
    args = ap.parse_args()
    if args.mode or args.no_freezing or args.no_cpp_wrapper:  # ModelRunner looks use_compiled up at each call
        import lmkit.infer.compiled_step as cs

        cs.use_compiled = functools.partial(cs.use_compiled, mode=args.mode, freezing=not args.no_freezing,
                                            cpp_wrapper=not args.no_cpp_wrapper)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    from lmkit.infer.fused_step import FusedDecoder

    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build(tmp)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"fused step: {FusedDecoder.unsupported(ours) or 'yes'}")
    g = torch.Generator().manual_seed(1)
    ratios = {}
    for batch in (1, 8):
        ids = torch.randint(3, 8192, (batch, args.prompt_len), generator=g)
        run_hf(hf, ids, 8)
        if args.compile:
            first, _ = run_ours(ours, ids, args.new_tokens, True)  # compiles the step for (batch, prompt + new)
            second, _ = run_ours(ours, ids, args.new_tokens, True)
            print(f"batch {batch}: compile: first generate call {first:.2f} s, second {second:.3f} s "
                  f"(compile cost ~{first - second:.1f} s, paid once per process and shape)")
        else:
            run_ours(ours, ids, 8)
        t_hf, t_ours = [], []
        for r in range(args.repeats):
            th, ref = run_hf(hf, ids, args.new_tokens)
            to, mine = run_ours(ours, ids, args.new_tokens, args.compile)
            if r == 0 and not torch.equal(ref, mine):
                diverge = (ref != mine).float().argmax(-1).tolist()
                print(f"  note: token ids differ from transformers (first difference at steps {diverge})")
            t_hf.append(th)
            t_ours.append(to)
        tps_hf = batch * args.new_tokens / statistics.median(t_hf)
        tps_ours = batch * args.new_tokens / statistics.median(t_ours)
        ratios[batch] = tps_ours / tps_hf
        print(f"batch {batch}: lmkit {tps_ours:8.1f} new tok/s | transformers {tps_hf:8.1f} new tok/s | "
              f"ratio {ratios[batch]:.2f}  (median of {args.repeats}; runs lmkit "
              f"{', '.join(f'{t:.3f}' for t in t_ours)} s; HF {', '.join(f'{t:.3f}' for t in t_hf)} s)")
        parts = step_breakdown(ours, batch, args.prompt_len, compile=args.compile)
        print("  ms per decode step: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    print(f"ratio ours/HF batch8: {ratios[8]:.2f}")
    print(f"ratio ours/HF batch1: {ratios[1]:.2f}")


if __name__ == "__main__":
    main()
