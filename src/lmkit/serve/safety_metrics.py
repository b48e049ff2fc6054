"""Counters of the server's safety layer, rendered into /metrics beside the others.

    lmkit_moderation_checks_total{side}                  texts moderated (side: input, output)
    lmkit_moderation_flagged_total{side,category}        texts flagged, per category hit
    lmkit_content_filter_finishes_total{path}            choices ended with finish_reason content_filter
    lmkit_rate_limited_total{key,limit}                  requests refused with 429 (limit: requests, tokens)

A key is named by the first 8 hex digits of its SHA-256, never by the key itself.
"""

from __future__ import annotations

import threading
from collections import defaultdict


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class SafetyCounters:
    """Thread-safe labelled counters; `render()` gives Prometheus text lines."""

    HELP = {
        "lmkit_moderation_checks_total": ("side", "Texts moderated (input: prompts, output: generated text)."),
        "lmkit_moderation_flagged_total": ("side,category", "Texts flagged by moderation, per category."),
        "lmkit_content_filter_finishes_total": ("path", "Choices ended by moderation (finish_reason content_filter)."),
        "lmkit_rate_limited_total": ("key,limit", "Requests refused with 429 by the per-key rate limits."),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, dict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))

    def inc(self, name: str, *labels: str, by: int = 1) -> None:
        if name not in self.HELP:
            raise KeyError(f"unknown safety counter {name}")
        with self._lock:
            self.values[name][tuple(str(v) for v in labels)] += by

    def get(self, name: str, *labels: str) -> int:
        with self._lock:
            return self.values[name].get(tuple(labels), 0)

    def render(self) -> list[str]:
        out = []
        with self._lock:
            for name, (label_names, help_) in self.HELP.items():
                out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
                names = [n for n in label_names.split(",") if n]
                series = self.values.get(name) or ({(): 0} if not names else {})
                for labels, n in sorted(series.items()):
                    lab = ",".join(f'{k}="{_esc(v)}"' for k, v in zip(names, labels))
                    out.append(f"{name}{{{lab}}} {n}" if lab else f"{name} {n}")
        return out
