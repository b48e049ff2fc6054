"""Progress reporting that fits its reader: a bar on a terminal, sparse lines in a log file.

tqdm redraws its bar for every update; when stderr is a file (CI, ``nohup``, ``> log``),
each redraw becomes a line and one training run writes thousands of them. `Progress`
picks its form from the destination:

- ``"bar"``   a tqdm bar (the default when the stream is a terminal);
- ``"lines"`` a plain line at most every `every_percent` % of the total or every
  `every_seconds` seconds, plus one at the end (the default when it is not a terminal);
- ``"json"``  the same sparse schedule, one JSON object per line (``--log-json``);
- ``"off"``   nothing (``--quiet``).

Long loops take a ``progress`` option that is one of these names, ``True``/``None``
(``"auto"``: chosen from the stream) or ``False`` (``"off"``). The ``LMKIT_PROGRESS``
environment variable, when set to a mode, replaces ``"auto"`` (handy for a whole CI job).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO, TypeVar

MODES = ("auto", "bar", "lines", "json", "off")
ENV_VAR = "LMKIT_PROGRESS"
T = TypeVar("T")


def resolve_mode(progress: bool | str | None = None, stream: TextIO | None = None) -> str:
    """The concrete mode ("bar", "lines", "json" or "off") for a ``progress`` option."""
    if progress is False:
        return "off"
    mode = "auto" if progress is None or progress is True else str(progress)
    if mode not in MODES:
        from lmkit.errors import ConfigError

        raise ConfigError(f"progress={progress!r}: choose one of {', '.join(MODES)}")
    if mode == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env in MODES and env != "auto":
            return env
        stream = stream if stream is not None else sys.stderr
        try:
            return "bar" if stream.isatty() else "lines"
        except (AttributeError, ValueError):  # closed or odd streams
            return "lines"
    return mode


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


class Progress:
    """Count work done toward `total` and report it in the form `resolve_mode` chose.

    Used like a tqdm bar: ``update(n)``, ``set_postfix(**fields)``, ``close()`` (or a
    ``with`` block). `total` None means unknown: lines then come every `every_seconds`.
    """

    def __init__(
        self,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        progress: bool | str | None = None,
        *,
        initial: float = 0,
        every_percent: float = 5.0,
        every_seconds: float = 30.0,
        stream: TextIO | None = None,
        unit_scale: bool = False,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.mode = resolve_mode(progress, self.stream)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self.every_percent, self.every_seconds = every_percent, every_seconds
        self.postfix: dict[str, Any] = {}
        self.lines_written = 0
        self._start = self._last_time = time.monotonic()
        self._last_n = initial
        self._closed = False
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                             dynamic_ncols=True, file=self.stream)

    # ---- tqdm-like API --------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode in ("lines", "json") and self._due():
            self._emit()

    def track(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield the items of `iterable`, counting each one after the caller is done with it; closes at the end."""
        try:
            for item in iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, **fields: Any) -> None:
        self.postfix = fields
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in fields.items()})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode in ("lines", "json") and self.n != self._last_n:
            self._emit()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sparse lines ---------------------------------------------------------------------
    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last_time >= self.every_seconds:
            return True
        if self.total:
            step = self.total * self.every_percent / 100.0
            return int(self.n / step) > int(self._last_n / step) or self.n >= self.total > self._last_n
        return False

    def _emit(self) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        self._last_time, self._last_n = now, self.n
        if self.mode == "json":
            record: dict[str, Any] = {"event": "progress", "desc": self.desc, "n": self.n, "unit": self.unit,
                                      "elapsed_s": round(elapsed, 3)}
            if self.total:
                record["total"] = self.total
                record["percent"] = round(100.0 * self.n / self.total, 1)
            record.update({k: (v.item() if hasattr(v, "item") else v) for k, v in self.postfix.items()})
            text = json.dumps(record, default=str)
        else:
            done = f"{self.n:g}/{self.total:g} {self.unit}" if self.total else f"{self.n:g} {self.unit}"
            pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
            extra = "".join(f" {k}={_fmt(v)}" for k, v in self.postfix.items())
            text = f"{self.desc}: {done}{pct} in {elapsed:.0f} s{extra}".lstrip(": ")
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the work
            return
        self.lines_written += 1
