"""Shared fixtures: the benchmark corpora (built deterministically by lmkit.corpus from the Python
install and the notes shipped with lmkit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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
def corpus_dir() -> Path:
    """en.txt, code.txt, zh.txt, mixed.txt from lmkit.corpus, cached in bench/corpus (git-ignored;
    the benchmarks read the same files). The first session builds them in about a minute."""
    from lmkit.corpus import write_corpora

    return write_corpora(ROOT / "bench" / "corpus")
