"""LLM.int8()'s phenomenon: vector-wise int8 matmul error with planted outlier feature columns,
plain vector-wise int8 vs LLM.int8() (fp outlier columns, threshold 6), relative to fp64.

    OMP_NUM_THREADS=1 python3 bench/bench_quant_llm_int8.py

X [64, 512] ~ N(0, 1) with 4 feature columns of magnitude 0.5-1.5 x M; W [256, 512] ~ N(0, 0.05²).
Last line: error ratio plain / LLM.int8() at M = 60.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from lmkit.quant.llm_int8 import llm_int8_matmul, vectorwise_int8_matmul  # noqa: E402


def main() -> None:
    print("| outlier magnitude M | vector-wise int8 rel. error | LLM.int8() rel. error | ratio |")
    print("|---|---|---|---|")
    ratio = None
    for mag in (0.0, 10.0, 20.0, 60.0):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 512, generator=g)
        cols = [3, 100, 300, 411]
        if mag:
            x[:, cols] = torch.randn(64, 4, generator=g).sign() * mag * (0.5 + torch.rand(64, 4, generator=g))
        w = torch.randn(256, 512, generator=g) * 0.05
        ref = x.double() @ w.double().T
        e1 = float((vectorwise_int8_matmul(x, w).double() - ref).norm() / ref.norm())
        e2 = float((llm_int8_matmul(x, w).double() - ref).norm() / ref.norm())
        ratio = e1 / e2
        print(f"| {mag:g} | {e1:.4f} | {e2:.5f} | {ratio:.1f}× |")
    print(f"plain/llm_int8 error = {ratio:.2f}")


if __name__ == "__main__":
    main()
