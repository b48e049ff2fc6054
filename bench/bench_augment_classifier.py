#!/usr/bin/env python3
"""Does EDA help a small classifier trained on little data? (issue 19)

Task: which standard-library package a docstring sentence comes from (email, asyncio,
unittest, xml: 4 classes), sentences of >= 8 words from the docstrings of each package's
modules (`lmkit.corpus` reads the same standard library). Classifier: multinomial logistic
regression on hashed unigram + bigram counts (2^15 buckets), trained full-batch with Adam for
200 steps, the same for both arms. For each training size (5, 10, 20, 50 sentences a class) and
each of 10 seeds: train on the sample (baseline) and on the sample plus 8 EDA copies of each
sentence (`lmkit.data.augment`, sr/ri/rs/rd, alpha 0.1, labels kept); test on 200 held-out
sentences a class. Reported: mean accuracy of each arm, the mean paired gain and its standard
error over the seeds.

    OMP_NUM_THREADS=1 python3 bench/bench_augment_classifier.py
"""

from __future__ import annotations

import ast
import math
import random
import re
import statistics
import sys
import sysconfig
import zlib
from pathlib import Path

import torch

from lmkit.data.augment import EDAConfig, EDAugmenter

PACKAGES = ("email", "asyncio", "unittest", "xml")
BUCKETS = 1 << 15
_WORD = re.compile(r"[a-z0-9_]+")


def sentences_by_package() -> dict[str, list[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out: dict[str, list[str]] = {}
    for pkg in PACKAGES:
        seen: set[str] = set()
        for path in sorted((root / pkg).rglob("*.py")):
            if "test" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node) or ""
                    for sent in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                        if len(sent.split()) >= 8 and sent not in seen:
                            seen.add(sent)
        out[pkg] = sorted(seen)
    return out


def features(texts: list[str]) -> torch.Tensor:
    x = torch.zeros(len(texts), BUCKETS)
    for i, t in enumerate(texts):
        words = _WORD.findall(t.lower())
        for gram in words + [a + " " + b for a, b in zip(words, words[1:])]:
            x[i, zlib.crc32(gram.encode()) % BUCKETS] += 1.0
    return torch.log1p(x)


def train_eval(train: list[tuple[str, int]], test_x: torch.Tensor, test_y: torch.Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    x, y = features([t for t, _ in train]), torch.tensor([l for _, l in train])
    model = torch.nn.Linear(BUCKETS, len(PACKAGES))
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return (model(test_x).argmax(-1) == test_y).float().mean().item()


def main() -> None:
    torch.set_num_threads(1)
    data = sentences_by_package()
    print("sentences per package:", {k: len(v) for k, v in data.items()})
    augmenter = EDAugmenter(EDAConfig(num_aug=8, operations=("sr", "ri", "rs", "rd"), seed=0))
    print("| sentences a class | baseline accuracy | EDA accuracy | gain (mean ± s.e., 10 seeds) |")
    print("|---|---|---|---|")
    gains_all = []
    for n in (5, 10, 20, 50):
        base, aug, gains = [], [], []
        for seed in range(10):
            rng = random.Random(seed)
            train, test = [], []
            for label, pkg in enumerate(PACKAGES):
                pool = list(data[pkg])
                rng.shuffle(pool)
                test += [(s, label) for s in pool[:200]]
                train += [(s, label) for s in pool[200:200 + n]]
            test_x, test_y = features([t for t, _ in test]), torch.tensor([l for _, l in test])
            records = [{"text": t, "label": l} for t, l in train]
            augmented = [(r["text"], r["label"]) for r in augmenter.augment_records(records)]
            b = train_eval(train, test_x, test_y, seed)
            a = train_eval(augmented, test_x, test_y, seed)
            base.append(b)
            aug.append(a)
            gains.append(a - b)
        se = statistics.stdev(gains) / math.sqrt(len(gains))
        gains_all.append(statistics.mean(gains))
        print(f"| {n} | {statistics.mean(base):.3f} | {statistics.mean(aug):.3f} | {statistics.mean(gains):+.3f} ± {se:.3f} |")
    print(f"ours/peer: EDA/baseline mean gain over sizes {statistics.mean(gains_all):+.3f}")


if __name__ == "__main__":
    sys.exit(main())
