"""Shared fixtures: the benchmark corpora (built deterministically from the Python install)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE_CORPUS = ROOT.parent / "shared" / "bench" / "make_corpus.py"

# Nothing in the tests may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Results must not depend on the CPU the tests run on: precision="auto" trains in fp32 here
# unless a test asks for bf16 (tests/test_precision.py forces both ways).
os.environ.setdefault("LMKIT_CPU_BF16", "0")

# Tests use tiny models: one intra-op thread is as fast, and two processes that each spin
# two OpenMP threads on a 2-core machine slow each other down by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """en.txt, code.txt, zh.txt, mixed.txt from ../shared/bench/make_corpus.py."""
    cached = ROOT / "bench" / "corpus"
    if all((cached / f).exists() for f in ("en.txt", "code.txt", "zh.txt")):
        return cached
    out = tmp_path_factory.mktemp("corpus")
    if not MAKE_CORPUS.exists():
        pytest.skip(f"{MAKE_CORPUS} not found (shared/ must sit beside the checkout)")
    subprocess.run([sys.executable, str(MAKE_CORPUS), str(out)], check=True, capture_output=True)
    return out
