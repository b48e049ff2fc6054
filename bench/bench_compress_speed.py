"""Does pruning make the forward pass faster? Forward time of a dense Llama-style model vs the
same model with 50% unstructured zeros (magnitude) and with 50% of every FFN's channels removed
(structured, `prune_ffn_neurons`). The peer is the dense model itself; the last line is
"neurons-50% / dense time <r>" (and the unstructured ratio before it).

    OMP_NUM_THREADS=1 flock /tmp/lmkit-bench.lock python3 bench/bench_compress_speed.py
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch


def timed(model, x, repeats: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    from lmkit.compress import magnitude_prune, prune_ffn_neurons
    from lmkit.models.decoder import DecoderLM
    from lmkit.models.presets import preset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = preset("llama-small", vocab_size=8192, d_model=384, n_layers=6, n_heads=6, d_ff=1024)
    dense = DecoderLM(cfg).eval()
    unstructured = copy.deepcopy(dense)
    magnitude_prune(unstructured, 0.5)
    narrow = copy.deepcopy(dense)
    prune_ffn_neurons(narrow, 0.5)
    x = torch.randint(0, 8192, (4, 256))
    count = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # noqa: E731
    rows = []
    for name, m in [("dense", dense), ("50% unstructured zeros", unstructured), ("FFN channels halved", narrow)]:
        rows.append((name, count(m), timed(m, x, 7)))
    print(f"torch {torch.__version__}, one thread, forward of 4 x 256 tokens, llama-small (d 384, 6 layers, d_ff 1024)")
    print("| model | parameters | nonzero | forward ms (median of 7) | time / dense |")
    print("|---|---|---|---|---|")
    for (name, n, t), m in zip(rows, (dense, unstructured, narrow)):
        nz = sum(int((p != 0).sum()) for p in {id(p): p for p in m.parameters()}.values())
        print(f"| {name} | {n:,} | {nz:,} | {t * 1e3:.1f} | {t / rows[0][2]:.3f} |")
    print(f"unstructured-50% / dense time {rows[1][2] / rows[0][2]:.3f}")
    print(f"neurons-50% / dense time {rows[2][2] / rows[0][2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
