"""Training throughput: lmkit DecoderLM vs transformers LlamaForCausalLM (same weights).

Both models get the same Llama configuration (vocab 8192, hidden 384, 6 layers, 6 heads,
intermediate 1024; batch 8 x 256 tokens, CPU) and identical weights (copied from the HF
model by name mapping). One training step = forward + backward + torch's fused AdamW step
(the kernel lmkit's Trainer uses). After warm-up, steps of all measured variants are
interleaved (to share any machine drift); the best step time is the headline (least
disturbed by other processes on a shared machine), the median is printed beside it.

--precision bf16 runs both models' forward/backward under the same
`torch.autocast("cpu", dtype=torch.bfloat16)` (fp32 master weights, as lmkit's Trainer
with precision "auto" on a CPU with AVX512-BF16 or AMX), and also times lmkit in fp32 in
the same interleaved run: the ratio lmkit bf16 / lmkit fp32 is the speed-up of autocast.

Reported: tokens/s for each, MFU = (6 * N_matmul + 12 * L * s * h) * tokens/s divided by
a measured matmul peak in the run's precision (2 n^3 flops of a 2048^3 torch.matmul, best
of several), and the ratio ours/HF of tokens/s (higher is better for us). Optional
--compile adds torch.compile'd runs of both (compile time printed).

--cpu-time times each step by the process's CPU time instead of wall time (with --threads 1),
which leaves out time spent waiting for a core on a machine shared with other jobs.

    python3 bench/bench_train_throughput.py [--steps 6] [--precision bf16] [--compile] [--threads 2]
                                            [--threads 1 --cpu-time]

The last line is `ratio ours/peer: X` (throughput ratio, eager mode).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

VOCAB, HIDDEN, LAYERS, HEADS, FFN, BATCH, SEQ = 8192, 384, 6, 6, 1024, 8, 256
CLOCK = time.perf_counter  # --cpu-time: time.process_time


def hf_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=FFN, max_position_embeddings=SEQ, rms_norm_eps=1e-5,
        tie_word_embeddings=False, attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    return model


def our_model(hf) -> torch.nn.Module:
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    cfg = ModelConfig(
        vocab_size=VOCAB, d_model=HIDDEN, n_layers=LAYERS, n_heads=HEADS, d_ff=FFN, max_seq_len=SEQ,
        norm="rmsnorm", norm_eps=1e-5, activation="silu", gated_ffn=True, position="rope",
        tie_embeddings=False,
    )
    model = DecoderLM(cfg)
    renames = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
    state = {}
    for name, t in hf.state_dict().items():
        if "rotary_emb" in name:
            continue
        name = name.removeprefix("model.")
        for a, b in renames.items():
            name = name.replace(a, b)
        state[name] = t.clone()
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [m for m in missing if "rope" not in m and "rotary" not in m]
    if real_missing or unexpected:
        raise SystemExit(f"weight mapping failed: missing {real_missing}, unexpected {unexpected}")
    return model


def matmul_peak_flops(n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Best observed GEMM rate (2 n^3 flops per n x n x n matmul) in `dtype` after warm-up."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):  # wake the thread pool and let the clock settle
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = CLOCK()
        torch.matmul(a, b)
        best = min(best, CLOCK() - t)
    return 2 * n**3 / best


def flops_per_token(model: torch.nn.Module) -> float:
    """6 N_matmul (forward 2N, backward 4N) + attention scores/values 12 L s h (PaLM, App. B)."""
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * n_matmul + 12 * LAYERS * SEQ * HIDDEN


def make_step(model, ids, bf16: bool = False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    return step


def timed(step) -> float:
    t = CLOCK()
    step()
    return CLOCK() - t


def run(models: dict, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """tokens/s from the best and the median step time of each model (steps interleaved)."""
    for name, step in models.items():
        for _ in range(warmup):
            step()
    times = {name: [] for name in models}
    for _ in range(steps):
        for name, step in models.items():
            times[name].append(timed(step))
    return {
        name: {"best": BATCH * SEQ / min(ts), "median": BATCH * SEQ / statistics.median(ts)}
        for name, ts in times.items()
    }


def report(label: str, results: dict, fpt: float, peaks: dict) -> None:
    for name, r in results.items():
        peak = peaks["fp32" if name.endswith("fp32") else "run"]
        print(
            f"{label} {name:9s}: {r['best']:8.1f} tokens/s (best step; median {r['median']:.1f})"
            f"   MFU {fpt * r['best'] / peak:6.1%}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: both models under the same CPU bf16 autocast (and lmkit fp32 beside them)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time steps by the process's CPU time, not wall time: on a machine shared with other "
                         "jobs the time spent waiting for a core is left out (use with --threads 1, where "
                         "no OpenMP thread spins waiting for another)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    import transformers

    bf16 = args.precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    hf = hf_model()
    ours = our_model(hf)
    hf.train()
    ours.train()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # same weights -> same loss
        l_ours, l_hf = ours(input_ids=ids, labels=ids).loss.item(), hf(input_ids=ids, labels=ids).loss.item()
    assert abs(l_ours - l_hf) < (2e-2 if bf16 else 1e-4), (l_ours, l_hf)

    peaks = {"fp32": matmul_peak_flops(), "run": matmul_peak_flops(dtype=dtype)}
    fpt = flops_per_token(hf)
    ours_fpt = flops_per_token(ours)
    assert ours_fpt == fpt, (ours_fpt, fpt)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"{'CPU' if args.cpu_time else 'wall'} time per step, load average {os.getloadavg()}")
    print(f"config: vocab {VOCAB}, hidden {HIDDEN}, layers {LAYERS}, heads {HEADS}, ffn {FFN}, batch {BATCH}x{SEQ}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}")
    print(f"initial loss ours {l_ours:.5f} / HF {l_hf:.5f}")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, {args.precision} {peaks['run'] / 1e9:.1f} GFLOP/s; "
          f"model flops/token (train): {fpt / 1e6:.1f} MFLOP")
    steps = {"ours": make_step(ours, ids, bf16), "hf": make_step(hf, ids, bf16)}
    if bf16:
        steps["ours fp32"] = make_step(ours, ids, False)
    eager = run(steps, args.steps, args.warmup)
    peaks = {"fp32": max(peaks["fp32"], matmul_peak_flops()),  # measured again after the runs: keep the best
             "run": max(peaks["run"], matmul_peak_flops(dtype=dtype))}
    print(f"matmul peak (best of before/after): fp32 {peaks['fp32'] / 1e9:.1f}, "
          f"{args.precision} {peaks['run'] / 1e9:.1f} GFLOP/s")
    report("eager", eager, fpt, peaks)
    ratio = eager["ours"]["best"] / eager["hf"]["best"]
    print(f"eager ratio ours/HF ({args.precision}): {ratio:.3f} "
          f"(median steps: {eager['ours']['median'] / eager['hf']['median']:.3f})")
    if bf16:
        print(f"lmkit bf16 / lmkit fp32: {eager['ours']['best'] / eager['ours fp32']['best']:.3f} "
              f"(median steps: {eager['ours']['median'] / eager['ours fp32']['median']:.3f})")
    if args.compile:
        t0 = time.perf_counter()
        comp = run(
            {"ours": make_step(torch.compile(ours), ids, bf16), "hf": make_step(torch.compile(hf), ids, bf16)},
            args.steps, args.warmup,
        )
        print(f"(compile + warm-up took {time.perf_counter() - t0:.0f} s in total)")
        report("compiled", comp, fpt, peaks)
        print(f"compiled ours / eager ours: {comp['ours']['best'] / eager['ours']['best']:.3f}")
        print(f"compiled ours / eager HF: {comp['ours']['best'] / eager['hf']['best']:.3f}")
        print(f"compiled ratio ours/HF: {comp['ours']['best'] / comp['hf']['best']:.3f}")
    print(f"ratio ours/peer: {ratio:.3f}")


if __name__ == "__main__":
    main()
