"""AdapterDrop speed-up: Houlsby adapters in every layer vs adapters dropped from the lowest k layers.

Inference: forward latency (eval, no grad) of the same adapter model with k = 0 (the full
adapter model, the peer), k = L/2 and k = L (no adapter runs: the base model's cost), and of
the base model without any adapter hooks. Training: one AdamW step of the full adapter model
vs specialised AdapterDrop (adapters only in layers k..L-1, so back-propagation stops at
layer k). Median of repeated runs, 1 thread. Last line: inference time with k = L/2 /
full adapters (ours/peer).

    OMP_NUM_THREADS=1 flock /tmp/lmkit-bench.lock python3 bench/bench_peft_methods_adapterdrop.py
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from lmkit.models.config import ModelConfig  # noqa: E402
from lmkit.models.decoder import DecoderLM  # noqa: E402
from lmkit.peft.adapter import AdapterConfig, apply_adapter  # noqa: E402
from lmkit.peft.adapter_drop import AdapterDropConfig, apply_adapterdrop, set_adapter_drop  # noqa: E402

L, D, B, T = 8, 256, 8, 128


def model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=512, d_model=D, n_layers=L, n_heads=8, d_ff=4 * D, max_seq_len=T))


def main() -> None:
    torch.set_num_threads(1)
    ids = torch.randint(0, 512, (B, T))
    cfg = AdapterConfig(bottleneck=64)
    print(f"torch {torch.__version__}; decoder d_model={D}, {L} layers, batch {B} x {T} tokens, adapters m=64, 1 thread")

    base = model().eval()
    m = apply_adapterdrop(apply_adapter(model(), cfg).eval(), AdapterDropConfig(drop_layers=0, stochastic=True))
    # interleaved rounds: every configuration is timed once per round, so load changes on a
    # shared machine hit all of them alike; the median over rounds is reported
    ks = (0, L // 4, L // 2, L)
    samples: dict = {k: [] for k in ks}
    samples["base"] = []
    with torch.no_grad():
        for r in range(21):
            for k in ks:
                set_adapter_drop(m, k)
                t0 = time.perf_counter()
                m(ids)
                if r:
                    samples[k].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            base(ids)
            if r:
                samples["base"].append(time.perf_counter() - t0)
    res = {k: statistics.median(samples[k]) for k in ks}
    t_base = statistics.median(samples["base"])
    print("| inference | forward (ms) | vs full adapters |")
    print("|---|---:|---:|")
    print(f"| base model, no adapters | {1e3 * t_base:.1f} | {t_base / res[0]:.3f} |")
    for k, t in res.items():
        print(f"| adapters, drop lowest k={k} | {1e3 * t:.1f} | {t / res[0]:.3f} |")

    def step_fn(mod):
        opt = torch.optim.AdamW([p for p in mod.parameters() if p.requires_grad], lr=1e-3)

        def step():
            loss = mod(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    steps = {0: step_fn(apply_adapter(model(), cfg).train())}
    for k in (L // 4, L // 2):
        steps[k] = step_fn(apply_adapterdrop(model(), AdapterDropConfig(drop_layers=k, adapter=cfg)).train())
    tsamples: dict = {k: [] for k in steps}
    for r in range(8):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            if r:
                tsamples[k].append(time.perf_counter() - t0)
    tt = {k: statistics.median(v) for k, v in tsamples.items()}
    print()
    print("| training step | time (ms) | vs full adapters |")
    print("|---|---:|---:|")
    print(f"| adapters in all {L} layers | {1e3 * tt[0]:.1f} | 1.000 |")
    for k in (L // 4, L // 2):
        print(f"| specialised AdapterDrop, k={k} | {1e3 * tt[k]:.1f} | {tt[k] / tt[0]:.3f} |")
    print(f"AdapterDrop k={L // 2} inference / full adapters (ours/peer): {res[L // 2] / res[0]:.3f}")


if __name__ == "__main__":
    main()
