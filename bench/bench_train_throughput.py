"""Training throughput: lmkit DecoderLM vs transformers LlamaForCausalLM (same weights).

Both models get the same Llama configuration (vocab 8192, hidden 384, 6 layers, 6 heads,
intermediate 1024; batch 8 x 256 tokens, fp32, CPU) and identical weights (copied from
the HF model by name mapping). One training step = forward + backward + torch AdamW step.
After warm-up, steps of the two models are interleaved (to share any machine drift); the
best step time is the headline (least disturbed by other processes on a shared machine),
the median is printed beside it.

Reported: tokens/s for each, MFU = (6 * N_matmul + 12 * L * s * h) * tokens/s divided by
a measured fp32 matmul peak (2 n^3 flops of a 2048^3 torch.matmul, best of several), and
the ratio ours/HF of tokens/s (higher is better for us). Optional --compile adds
torch.compile'd runs of both.

    python3 bench/bench_train_throughput.py [--steps 6] [--compile] [--threads 2]

The last line is `ratio ours/peer: X` (throughput ratio, eager mode).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

VOCAB, HIDDEN, LAYERS, HEADS, FFN, BATCH, SEQ = 8192, 384, 6, 6, 1024, 8, 256


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


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Best observed fp32 GEMM rate (2 n^3 flops per n x n x n matmul) after warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):  # wake the thread pool and let the clock settle
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_token(model: torch.nn.Module) -> float:
    """6 N_matmul (forward 2N, backward 4N) + attention scores/values 12 L s h (PaLM, App. B)."""
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * n_matmul + 12 * LAYERS * SEQ * HIDDEN


def make_step(model, ids):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    return step


def timed(step) -> float:
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    hf = hf_model()
    ours = our_model(hf)
    hf.train()
    ours.train()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # same weights -> same loss (sanity check of the mapping)
        l_ours, l_hf = ours(input_ids=ids, labels=ids).loss.item(), hf(input_ids=ids, labels=ids).loss.item()
    assert abs(l_ours - l_hf) < 1e-4, (l_ours, l_hf)

    peak = matmul_peak_flops()
    fpt = flops_per_token(hf)
    ours_fpt = flops_per_token(ours)
    assert ours_fpt == fpt, (ours_fpt, fpt)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    print(f"config: vocab {VOCAB}, hidden {HIDDEN}, layers {LAYERS}, heads {HEADS}, ffn {FFN}, batch {BATCH}x{SEQ}, fp32")
    print(f"initial loss ours {l_ours:.5f} / HF {l_hf:.5f}")
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s; model flops/token (train): {fpt / 1e6:.1f} MFLOP")
    eager = run({"ours": make_step(ours, ids), "hf": make_step(hf, ids)}, args.steps, args.warmup)
    peak = max(peak, matmul_peak_flops())  # measured again after the runs: keep the best
    print(f"fp32 matmul peak (best of before/after): {peak / 1e9:.1f} GFLOP/s")
    for name, r in eager.items():
        print(
            f"eager {name:4s}: {r['best']:8.1f} tokens/s (best step; median {r['median']:.1f})"
            f"   MFU {fpt * r['best'] / peak:6.1%}"
        )
    ratio = eager["ours"]["best"] / eager["hf"]["best"]
    print(f"eager ratio ours/HF: {ratio:.3f} (median steps: {eager['ours']['median'] / eager['hf']['median']:.3f})")
    if args.compile:
        t0 = time.perf_counter()
        comp = run(
            {"ours": make_step(torch.compile(ours), ids), "hf": make_step(torch.compile(hf), ids)},
            args.steps, args.warmup,
        )
        print(f"(compile + warm-up took {time.perf_counter() - t0:.0f} s in total)")
        for name, r in comp.items():
            print(
                f"compiled {name:4s}: {r['best']:8.1f} tokens/s (best step; median {r['median']:.1f})"
                f"   MFU {fpt * r['best'] / peak:6.1%}"
            )
        print(f"compiled ours / eager HF: {comp['ours']['best'] / eager['hf']['best']:.3f}")
        print(f"compiled ratio ours/HF: {comp['ours']['best'] / comp['hf']['best']:.3f}")
    print(f"ratio ours/peer: {ratio:.3f}")


if __name__ == "__main__":
    main()
