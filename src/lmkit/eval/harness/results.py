"""Results in lm-eval's results.json layout, and the table `lmkit eval run` prints."""

from __future__ import annotations

import time
from typing import Any

from lmkit.eval.harness.evaluator import TaskResult


def results_document(task_results: list[TaskResult], model: str, extra: dict | None = None,
                     log_samples: bool = False) -> dict[str, Any]:
    """{"results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config", ...}."""
    doc: dict[str, Any] = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
                           "higher_is_better": {}, "n-samples": {}}
    for r in task_results:
        name = r.config.task
        doc["results"][name] = {"name": name, "alias": name, "sample_len": len(r.samples), **r.metrics}
        doc["group_subtasks"][name] = []
        doc["configs"][name] = {**r.config.to_dict(), "num_fewshot": r.num_fewshot}
        version = (r.config.metadata or {}).get("version")
        doc["versions"][name] = version
        doc["n-shot"][name] = r.num_fewshot
        doc["higher_is_better"][name] = r.higher_is_better
        doc["n-samples"][name] = {"original": r.n_original, "effective": len(r.samples)}
    doc["config"] = {"model": model, **(extra or {})}
    doc["date"] = time.time()
    doc["harness"] = "lmkit.eval.harness"
    if log_samples:
        doc["samples"] = {r.config.task: r.samples for r in task_results}
    return doc


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e6 else f"{v:.4e}"
    return str(v)


def results_table(doc: dict[str, Any]) -> str:
    """A Markdown table like lm-eval's: Tasks | Version | Filter | n-shot | Metric | | Value | | Stderr."""
    rows = [["Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr"]]
    for task, res in doc["results"].items():
        hib = doc["higher_is_better"].get(task, {})
        for key, value in res.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, _, filt = key.partition(",")
            err = res.get(f"{metric}_stderr,{filt}", "N/A")
            arrow = "↑" if hib.get(metric, True) else "↓"
            rows.append([task, str(doc["versions"].get(task) or "none"), filt, str(doc["n-shot"].get(task, 0)),
                         metric, arrow, _fmt(value), "±" if err != "N/A" else "", _fmt(err)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["|" + "|".join(c.ljust(w) for c, w in zip(r, widths)) + "|" for r in rows]
    lines.insert(1, "|" + "|".join("-" * w for w in widths) + "|")
    return "\n".join(lines)
