"""Whether a run goes through `torch.compile`: `compile="auto"` compiles long runs only.

Compiling costs a fixed time up front (the training graph, and the eval graph again) and then
saves a fraction of every step. Measured on the 2-core AMD EPYC development machine, one thread,
bf16 autocast, the quickstart model (llama-tiny, batch 16 x 128): compile ~40 CPU s, the
compiled step 1.32x the eager one, 0.038 s saved per step -> ~1 050 steps to break even on the
training graph alone (docs/benchmarks.md). "auto" therefore compiles from AUTO_MIN_STEPS steps
on (a margin for the eval graph's compile and recompiles on new shapes), and only where inductor
can build code: a C++ compiler on CPU, Triton on CUDA. `lmkit quickstart` (1 200 steps) stays
eager: there compiling would not pay back.
"""

from __future__ import annotations

import shutil
import sys

import torch

AUTO_MIN_STEPS = 5000

_announced: set[tuple] = set()


def _can_build(device: torch.device) -> tuple[bool, str]:
    if device.type == "cpu":
        found = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
        return (True, f"C++ compiler {found}") if found else (False, "no C++ compiler on PATH")
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return False, "no Triton"
        return (True, "Triton") if has_triton() else (False, "no Triton")
    return False, f"device type {device.type!r}"


def resolve_compile(requested: bool | str, max_steps: int, device: torch.device) -> tuple[bool, str]:
    """(compile or not, why) for `TrainConfig.compile` = True / False / "auto"."""
    if requested != "auto":
        return bool(requested), "set in the config"
    if max_steps < AUTO_MIN_STEPS:
        return False, f"max_steps {max_steps} < {AUTO_MIN_STEPS}: the compile time would not pay back"
    ok, why = _can_build(device)
    if not ok:
        return False, f"{why}: inductor cannot build code here"
    return True, f"max_steps {max_steps} >= {AUTO_MIN_STEPS} and {why} found"


def announce_compile(requested: bool | str, chosen: bool, reason: str, max_steps: int) -> None:
    """Print an "auto" choice for a long run once per process (explicit choices and short
    runs, which never compile, need no explanation)."""
    key = (requested, chosen, reason)
    if requested != "auto" or max_steps < AUTO_MIN_STEPS or key in _announced:
        return
    _announced.add(key)
    print(f"compile: auto -> {'on' if chosen else 'off'} ({reason})", file=sys.stderr, flush=True)
