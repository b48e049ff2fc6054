"""The `lmkit` command turns on torch's huge-page allocations (THP_MEM_ALLOC_ENABLE) before torch starts:
batch-1 decoding streams every weight once per token, and on the benchmark VM 4 KiB pages made that
walk a third slower in some processes (docs/benchmarks.md, session 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import lmkit.cli, os, torch
x = torch.ones(64 * 2**20 // 4)  # 64 MiB: torch's allocator madvises it for 2 MiB pages
huge = 0
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages"):
        huge = int(line.split()[1])
print(os.environ["THP_MEM_ALLOC_ENABLE"], huge)
"""


def _probe(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    flag, huge = r.stdout.split()
    return flag, int(huge)


def _thp_mode() -> str:
    p = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    text = p.read_text() if p.exists() else "[never]"
    return text[text.index("[") + 1:text.index("]")]


def test_the_cli_sets_it_and_a_user_setting_wins():
    assert _probe(None)[0] == "1"
    flag, huge = _probe("0")
    assert flag == "0"
    if _thp_mode() == "madvise":  # off: nothing asks for huge pages (under "always" every mapping may get them)
        assert huge == 0


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists() or _thp_mode() == "never",
                    reason="needs Linux with transparent huge pages not set to 'never'")
def test_large_tensors_land_in_huge_pages():
    assert _probe(None)[1] >= 2048  # at least one 2 MiB page (kB)
