"""What `lmkit speedrun` records for each stage: wall time, peak memory, checks against thresholds.

Peak memory is the process's resident-set high-water mark during the stage: on Linux the mark
(VmHWM) is reset to the current RSS before the stage (writing 5 to /proc/self/clear_refs) and
read after it. Where that is not possible the lifetime peak (ru_maxrss) is reported instead,
and the card says so (`memory_kind`).

A stage can be made to fail on purpose, to prove that the run notices: `LMKIT_SPEEDRUN_INJECT`
= ``STAGE`` or ``STAGE:raise`` makes the stage raise, ``STAGE:regress`` adds a failing check to
its results (the tests use both).
"""

from __future__ import annotations

import operator
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from lmkit.errors import LmkitError

INJECT_ENV = "LMKIT_SPEEDRUN_INJECT"
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}


class SpeedrunError(LmkitError):
    """A speedrun stage raised or regressed; the message names the stage(s)."""


class InjectedFailure(SpeedrunError):
    """The failure a test asked for through LMKIT_SPEEDRUN_INJECT."""


@dataclass
class Check:
    """One metric against its threshold: `value op limit` must hold."""

    metric: str
    value: float
    op: str
    limit: float

    @property
    def passed(self) -> bool:
        return bool(_OPS[self.op](self.value, self.limit))

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.limit:g}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class StageOutcome:
    """What a stage function returns: its numbers, its checks, and what it changed vs the stage before."""

    metrics: dict[str, Any]
    checks: list[Check]
    change: str
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


@dataclass
class StageResult:
    name: str
    status: str = "skipped"  # ok | regressed | failed | skipped
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process (user + system): the wall time of an idle machine, roughly
    peak_rss_bytes: int | None = None
    memory_kind: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    change: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [c.to_dict() for c in self.checks]
        return d


def _status_bytes(key: str, pid: str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def process_peak_rss(pid: int) -> int | None:
    """VmHWM of another process (the server), or None where /proc is not available."""
    return _status_bytes("VmHWM", str(pid))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _lifetime_peak() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def injected(stage: str, inject: str | None) -> str | None:
    """'raise' or 'regress' when `inject` (or LMKIT_SPEEDRUN_INJECT) names `stage`, else None."""
    spec = inject if inject is not None else os.environ.get(INJECT_ENV, "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, mode = item.partition(":")
        if name == stage:
            return mode or "raise"
    return None


def run_stage(name: str, fn: Callable[[], StageOutcome], inject: str | None = None) -> tuple[StageResult, StageOutcome | None]:
    """Run one stage, measured; an exception becomes status 'failed' (the run stops there)."""
    result = StageResult(name)
    hwm = _reset_peak()
    result.memory_kind = "RSS high-water mark of the stage" if hwm else "process peak RSS so far (ru_maxrss)"
    mode = injected(name, inject)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    outcome = None
    try:
        if mode == "raise":
            raise InjectedFailure(f"failure injected into stage {name!r} ({INJECT_ENV})")
        outcome = fn()
    except Exception as exc:  # noqa: BLE001 - the card records any stage's failure, then the run stops
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
    result.seconds = round(time.perf_counter() - t0, 3)
    result.cpu_seconds = round(_cpu_seconds() - c0, 3)
    result.peak_rss_bytes = _status_bytes("VmHWM") if hwm else _lifetime_peak()
    if outcome is not None:
        result.metrics, result.checks, result.change = outcome.metrics, list(outcome.checks), outcome.change
        if mode == "regress":
            result.checks.append(Check("injected_regression", 1.0, "<=", 0.0))
        result.status = "ok" if all(c.passed for c in result.checks) else "regressed"
    return result, outcome
