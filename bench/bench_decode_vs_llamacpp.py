"""Batch-1 CPU decode and prompt processing: lmkit vs llama.cpp (llama-cpp-python), same weights.

A randomly initialised Llama (hidden 1024, 16 layers, GQA 16/4 heads, ffn 2816, vocab 32000)
is built in lmkit and exported to GGUF with lmkit's own exporter (`lmkit.hub.gguf`), with a
small byte-level BPE tokenizer (the GGUF vocabulary is padded to 32000). Precisions, side by side:

    lmkit fp32        vs  F32
    lmkit bf16        vs  F16     (model.to(torch.bfloat16))
    lmkit int8        vs  Q8_0    (quantize_model "int8", lm_head included, as Q8_0 does)
    lmkit w8a8        vs  Q8_0    (quantize_model "w8a8": the same int8 weights, activations quantized
                                   per token at run time, int8 x int8 products, as llama.cpp's Q8_0
                                   dot products quantize theirs, in blocks of 32)
    lmkit int4        vs  Q4_0    (quantize_model "int4" group 32 + int8 lm_head; llama.cpp's Q4_0
                                   files keep output.weight at higher precision too)

Decode: a 16-token prompt, then 64 new tokens greedily (the time of the whole call, prompt
included, for both). lmkit's figure is `generate(..., compile=True)` (`lmkit generate --compile`:
the static-cache step compiled by the inductor, the weight-only int8/int4 kernels called inside
the graph), compiled once per precision before timing, as llama.cpp's own kernels are built before
it runs; the eager fused step's figure is printed beside it. Prompt processing: one 512-token prompt, logits of the last position,
run as `generate` prefills it (`ModelRunner.prefill`: the fused step for an unpadded prompt;
`model.forward`'s figure is printed beside it).
Each configuration runs --repeats times, lmkit and llama.cpp alternately, and the medians
are printed with the ratio lmkit/llama.cpp (higher is better for lmkit). llama.cpp loads with
extra buffer types off (its AMX repack path crashes on Q8_0 on the benchmark CPU). Where
`llama_cpp` is not importable (pip install llama-cpp-python; it compiles, ~10-15 min on 2
cores) only lmkit's figures are printed. Also printed: the GEMV time of one 1024x11264
(gate+up) weight per precision.

Last line: `ours/peer <geometric mean of the decode ratios>` (or `ours/peer n/a`).

    python3 bench/bench_decode_vs_llamacpp.py [--repeats 3] [--threads 2] [--only fp32,int4]
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import os
import statistics
import tempfile
import time
import warnings

# as the `lmkit` command does (lmkit/cli.py): torch's allocator puts the weights in 2 MiB pages
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

PRECISIONS = {"fp32": "f32", "bf16": "f16", "int8": "q8_0", "w8a8": "q8_0", "int4": "q4_0"}
NEW = 64
PROMPT = 16
PP = 512


def build_model():
    from lmkit.models.build import build_model as build
    from lmkit.models.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32000, d_model=1024, n_layers=16, n_heads=16, n_kv_heads=4, d_ff=2816,
                      max_seq_len=2048, model_type="llama")
    return build(cfg).eval()


def tokenizer():
    from lmkit.corpus import english_text
    from lmkit.tokenizers.bpe import BPETokenizer

    return BPETokenizer.train(english_text()[:200_000], vocab_size=512)


def variant(base, name: str):
    from lmkit.quant.quantize_model import quantize_model

    if name == "fp32":
        return base
    m = copy.deepcopy(base)
    if name == "bf16":
        return m.to(torch.bfloat16)
    if name in ("int8", "w8a8"):
        return quantize_model(m, name, skip=[])
    quantize_model(m, "int4", group_size=32)
    quantize_model(m, "int8", skip=[], targets=["lm_head"])
    return m


# ---- lmkit ------------------------------------------------------------------------------------
def lmkit_decode(model, prompt: list[int], compile: bool = False) -> float:
    from lmkit.infer import generate

    t = time.perf_counter()
    out = generate(model, [prompt], max_new_tokens=NEW, do_sample=False, eos_token_id=[], compile=compile)
    dt = time.perf_counter() - t
    assert len(out.sequences[0]) == NEW
    return NEW / dt


def lmkit_prompt(model, ids: list[int], forward: bool = False) -> float:
    """tok/s of a prompt's prefill as `generate` runs it (the fused step when the prompt is unpadded),
    or of `model.forward` with forward=True."""
    from lmkit.infer.runner import ModelRunner

    x = torch.tensor([ids])
    with torch.inference_mode():
        t = time.perf_counter()
        if forward:
            model(x, num_logits_to_keep=1)
        else:
            ModelRunner(model, 1, len(ids), None).prefill(x, model.make_cache(1, len(ids)))
        return len(ids) / (time.perf_counter() - t)


# ---- llama.cpp ---------------------------------------------------------------------------------
def load_llama(path: str, threads: int):
    import llama_cpp

    kw = dict(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=PP, n_ubatch=PP,
              verbose=False, logits_all=False)
    if "use_extra_bufts" in inspect.signature(llama_cpp.Llama.__init__).parameters:
        kw["use_extra_bufts"] = False
        return llama_cpp.Llama(**kw)
    low = llama_cpp.llama_cpp
    default = low.llama_model_default_params
    if not hasattr(default(), "use_extra_bufts"):
        warnings.warn("this llama_cpp has no use_extra_bufts model parameter; extra buffer types stay on")
        return llama_cpp.Llama(**kw)

    def no_extra_bufts():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = no_extra_bufts  # Llama() reads its model params from here
    try:
        return llama_cpp.Llama(**kw)
    finally:
        low.llama_model_default_params = default


def llama_decode(llm, prompt: list[int]) -> float:
    import numpy as np

    t = time.perf_counter()
    llm.reset()
    llm.eval(prompt)
    for _ in range(NEW):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    return NEW / (time.perf_counter() - t)


def llama_prompt(llm, ids: list[int]) -> float:
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    return len(ids) / (time.perf_counter() - t)


def huge_page_mb() -> str:
    """AnonHugePages of this process (Linux): how much of lmkit's memory the kernel put in 2 MiB pages.
    The decode walk over the weights is several % slower on 4 KiB pages; a run where the kernel had
    none to give (fragmented memory) shows here."""
    try:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                return f"{int(line.split()[1]) // 1024:,}"
    except OSError:
        pass
    return "n/a"


def gemv_ms(threads: int) -> dict[str, float]:
    """ms for one [1, 1024] x [1024, 11264] product per precision (the merged gate+up weight)."""
    from lmkit.quant.linear import GroupQuantLinear, Int8DynamicLinear, Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(1024, 11264, bias=False)
    x = torch.randn(1, 1024)
    from lmkit.infer.fused_step import _prepacked

    fns = {"fp32": lambda: lin(x)}
    packed32 = _prepacked(lin.weight.t())
    fns["fp32 fused step"] = lambda: packed32(x)
    lb = copy.deepcopy(lin).to(torch.bfloat16)
    xb = x.bfloat16()
    fns["bf16"] = lambda: lb(xb)
    packed = _prepacked(lb.weight.t())
    fns["bf16 fused step"] = lambda: packed(xb)
    q8 = Int8Linear.from_linear(lin)
    fns["int8"] = lambda: q8(x)
    w8 = Int8DynamicLinear.from_linear(lin)
    fns["w8a8"] = lambda: w8(x)
    q4 = GroupQuantLinear.from_linear(lin, bits=4, group_size=32)
    fns["int4 g32"] = lambda: q4(x)
    q4b = GroupQuantLinear.from_linear(lin, bits=4, group_size=128)
    fns["int4 g128"] = lambda: q4b(x)
    out = {}
    with torch.inference_mode():
        for k, f in fns.items():
            for _ in range(5):
                f()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(20):
                    f()
                times.append((time.perf_counter() - t) / 20 * 1e3)
            out[k] = min(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(PRECISIONS), help="comma-separated subset of " + ",".join(PRECISIONS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        import llama_cpp  # noqa: F401

        peer = True
    except ImportError:
        peer = False
        print("llama_cpp is not importable (pip install llama-cpp-python): printing lmkit's figures only")
    from lmkit.hub.gguf import FILE_TYPES, export_gguf

    print(f"torch {torch.__version__}, {args.threads} threads")
    print("GEMV 1x1024 @ 1024x11264 (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in gemv_ms(args.threads).items()))
    base = build_model()
    tok = tokenizer() if peer else None
    n = sum(p.numel() for p in base.parameters())
    print(f"model: Llama hidden 1024, 16 layers, GQA 16/4, ffn 2816, vocab 32000: {n / 1e6:.0f}M parameters")
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 32000, (PROMPT,), generator=g).tolist()
    long = torch.randint(3, 32000, (PP,), generator=g).tolist()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            ftype = PRECISIONS[name]
            model = variant(base, name)
            llm = None
            if peer and ftype in FILE_TYPES:
                path = os.path.join(tmp, f"m-{ftype}.gguf")
                export_gguf(base, path, tok, ftype=ftype)
                llm = load_llama(path, args.threads)
            elif peer:
                print(f"{name}: lmkit's GGUF export has no {ftype.upper()} yet; llama.cpp side skipped")
            lmkit_decode(model, prompt)  # warm-up (kernel layouts, rotary tables)
            t = time.perf_counter()
            lmkit_decode(model, prompt, compile=True)  # compiles the static-cache step once for this shape
            print(f"{name}: compiling lmkit's decode step took {time.perf_counter() - t:.0f} s; "
                  f"{huge_page_mb()} MB of this process in 2 MiB pages", flush=True)
            if llm is not None:
                llama_decode(llm, prompt)
            lmkit_prompt(model, long)
            dec, ceager, pp, pfw, pdec, ppp = [], [], [], [], [], []
            for _ in range(args.repeats):
                ceager.append(lmkit_decode(model, prompt))
                dec.append(lmkit_decode(model, prompt, compile=True))
                pp.append(lmkit_prompt(model, long))
                pfw.append(lmkit_prompt(model, long, forward=True))
                if llm is not None:
                    pdec.append(llama_decode(llm, prompt))
                    ppp.append(llama_prompt(llm, long))
            d, p = statistics.median(dec), statistics.median(pp)
            e = statistics.median(ceager)
            line = f"{name:5s} decode lmkit {d:7.1f} tok/s (eager step {e:7.1f})"
            if llm is not None:
                pd, pq = statistics.median(pdec), statistics.median(ppp)
                ratios.append(d / pd)
                line += f"  llama.cpp {ftype.upper()} {pd:7.1f} tok/s  ratio {d / pd:.2f} (eager {e / pd:.2f})"
            line += f" | prompt {PP} lmkit {p:7.1f} tok/s (model.forward {statistics.median(pfw):7.1f})"
            if llm is not None:
                line += f"  llama.cpp {pq:7.1f} tok/s  ratio {p / pq:.2f}"
            print(line, flush=True)
            del llm, model
    if ratios:
        print(f"ours/peer {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")
    else:
        print("ours/peer n/a (llama_cpp missing)")


if __name__ == "__main__":
    main()
