"""The speedrun's report card: card.md, card.html (loss curves and per-stage bars as inline
SVG, drawn here: no plotting dependency), card.json (every number), and the two pictures as
loss_curves.svg and stages.svg (the Markdown card shows those files)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lmkit.atomic import atomic_write_text

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
_STATUS_COLOR = {"ok": "#2ca02c", "regressed": "#d62728", "failed": "#d62728", "skipped": "#999999"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def _mb(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def loss_curves_svg(curves: dict[str, list[tuple[float, float]]], width: int = 720, height: int = 220) -> str:
    """One small panel per curve (their steps differ): loss against optimizer step."""
    names = [n for n, pts in curves.items() if pts]
    if not names:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="8" y="24">no curves</text></svg>'
    pw = width / len(names)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">']
    for k, name in enumerate(names):
        pts = curves[name]
        x0, y0, w, h = k * pw + 44, 24, pw - 60, height - 58
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xmin, xmax, ymin, ymax = min(xs), max(xs), min(ys), max(ys)
        xr, yr = (xmax - xmin) or 1.0, (ymax - ymin) or 1.0
        line = " ".join(f"{x0 + (x - xmin) / xr * w:.1f},{y0 + h - (y - ymin) / yr * h:.1f}" for x, y in pts)
        parts += [
            f'<text x="{x0 + w / 2:.0f}" y="14" text-anchor="middle" font-weight="bold">{html.escape(name)}</text>',
            f'<rect x="{x0:.1f}" y="{y0}" width="{w:.1f}" height="{h}" fill="none" stroke="#bbb"/>',
            f'<polyline points="{line}" fill="none" stroke="{_COLORS[k % len(_COLORS)]}" stroke-width="1.5"/>',
            f'<text x="{x0 - 4:.1f}" y="{y0 + 8}" text-anchor="end">{ymax:.2f}</text>',
            f'<text x="{x0 - 4:.1f}" y="{y0 + h}" text-anchor="end">{ymin:.2f}</text>',
            f'<text x="{x0:.1f}" y="{y0 + h + 14}">{xmin:.0f}</text>',
            f'<text x="{x0 + w:.1f}" y="{y0 + h + 14}" text-anchor="end">{xmax:.0f}</text>',
            f'<text x="{x0 + w / 2:.0f}" y="{y0 + h + 28}" text-anchor="middle">step (loss)</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts)


def stage_bars_svg(stages: list[dict[str, Any]], width: int = 720) -> str:
    """Horizontal bars per stage: wall time (left) and peak RSS (right), coloured by status."""
    row, top = 22, 26
    height = top + row * len(stages) + 10
    half = (width - 100) / 2
    tmax = max([s["seconds"] for s in stages] + [1e-9])
    mmax = max([s["peak_rss_bytes"] or 0 for s in stages] + [1])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             '<text x="90" y="14" font-weight="bold">wall time (s)</text>',
             f'<text x="{100 + half:.0f}" y="14" font-weight="bold">peak RSS (MB)</text>']
    for i, s in enumerate(stages):
        y = top + i * row
        color = _STATUS_COLOR.get(s["status"], "#999")
        tw = (half - 60) * s["seconds"] / tmax
        mw = (half - 60) * (s["peak_rss_bytes"] or 0) / mmax
        parts += [
            f'<text x="84" y="{y + 13}" text-anchor="end">{html.escape(s["name"])}</text>',
            f'<rect x="90" y="{y}" width="{tw:.1f}" height="{row - 6}" fill="{color}"/>',
            f'<text x="{94 + tw:.1f}" y="{y + 13}">{s["seconds"]:.1f}</text>',
            f'<rect x="{100 + half:.1f}" y="{y}" width="{mw:.1f}" height="{row - 6}" fill="{color}" opacity="0.6"/>',
            f'<text x="{104 + half + mw:.1f}" y="{y + 13}">{_mb(s["peak_rss_bytes"])}</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts)


def _checks(s: dict[str, Any]) -> str:
    return "; ".join(f"{c['metric']} = {_fmt(c['value'])} (needs {c['op']} {c['limit']:g})"
                     + ("" if c["passed"] else " FAIL") for c in s["checks"]) or "-"


def _overlap_lines(decon: dict[str, Any]) -> list[str]:
    if not decon:
        return ["(not measured: the data stage did not run)"]
    lines = [f"Method: {decon['method']}. The pretraining corpus had {decon['corpus_paragraphs']} paragraphs; "
             f"{decon['paragraphs_removed']} were removed because they contain an evaluation item; "
             f"{decon.get('train_terms_dropped', 0)} training definitions were dropped for quoting one."]
    for name, s in decon["sets"].items():
        lines.append(f"{name}: {s['items']} items, {s['found_before']} found in the raw training data "
                     f"(by method: {', '.join(f'{k} {v}' for k, v in s['by_method'].items())}), "
                     f"{s['left_after']} left after decontamination.")
    return lines


def card_dict(result, profile) -> dict[str, Any]:
    return {"profile": profile.to_dict(), "total_s": result.total_s, "budget_s": result.budget_s,
            "budget_ratio": round(result.total_s / result.budget_s, 4), "ok": result.ok,
            "summary": result.summary(), "stages": [s.to_dict() for s in result.stages],
            "decontamination": result.decontamination,
            "curves": {k: [list(p) for p in v] for k, v in result.curves.items()}}


def card_markdown(card: dict[str, Any]) -> str:
    p = card["profile"]
    lines = [f"# lmkit speedrun report card ({p['name']} profile)", "",
             f"**{card['summary']}**", "",
             f"Total {card['total_s']:.1f} s against a budget of {card['budget_s']:.0f} s "
             f"(ratio {card['budget_ratio']:.3f}). Model: d_model {p['model']['d_model']}, "
             f"{p['model']['n_layers']} layers, vocabulary {p['vocab_size']}.", "",
             "| # | stage | status | time (s) | CPU (s) | peak RSS (MB) | checks (threshold) | against the previous stage |",
             "|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(card["stages"], 1):
        change = s["error"] or s["change"] or "-"
        lines.append(f"| {i} | {s['name']} | {s['status']} | {s['seconds']:.1f} | {s.get('cpu_seconds', 0):.1f} | "
                     f"{_mb(s['peak_rss_bytes'])} | "
                     f"{_checks(s)} | {change.replace('|', '/')} |")
    lines += ["", "![loss curves](loss_curves.svg)", "", "![time and memory per stage](stages.svg)", "",
              "## Overlap between evaluation items and training data", ""]
    lines += [f"- {x}" for x in _overlap_lines(card["decontamination"])]
    lines += ["", "## Every number", ""]
    for s in card["stages"]:
        if s["metrics"]:
            lines.append(f"- **{s['name']}**: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in s["metrics"].items()))
    kind = next((s["memory_kind"] for s in card["stages"] if s["memory_kind"]), "")
    cpu = sum(s.get("cpu_seconds", 0) for s in card["stages"])
    lines += ["", f"Peak memory: {kind}. CPU (s): this process's user + system time in the stage "
              f"({cpu:.1f} s in all; the server's own CPU time is not in it): on a busy machine, a closer "
              "estimate of the idle wall time than the wall time."]
    return "\n".join(lines) + "\n"


def card_html(card: dict[str, Any], curves_svg: str, bars_svg: str) -> str:
    e = html.escape
    rows = []
    for i, s in enumerate(card["stages"], 1):
        color = _STATUS_COLOR.get(s["status"], "#999")
        rows.append(f"<tr><td>{i}</td><td>{e(s['name'])}</td><td style='color:{color};font-weight:bold'>"
                    f"{e(s['status'])}</td><td>{s['seconds']:.1f}</td><td>{s.get('cpu_seconds', 0):.1f}</td>"
                    f"<td>{_mb(s['peak_rss_bytes'])}</td>"
                    f"<td>{e(_checks(s))}</td><td>{e(s['error'] or s['change'] or '-')}</td></tr>")
    overlap = "".join(f"<li>{e(x)}</li>" for x in _overlap_lines(card["decontamination"]))
    numbers = "".join(
        f"<li><b>{e(s['name'])}</b>: {e(', '.join(f'{k} = {_fmt(v)}' for k, v in s['metrics'].items()))}</li>"
        for s in card["stages"] if s["metrics"])
    p = card["profile"]
    verdict = "#2ca02c" if card["ok"] else "#d62728"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmkit speedrun ({e(p['name'])})</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:1100px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 6px;vertical-align:top}} th{{background:#f4f4f4}}</style></head>
<body><h1>lmkit speedrun report card ({e(p['name'])} profile)</h1>
<p id="verdict" style="color:{verdict};font-weight:bold">{e(card['summary'])}</p>
<p>Total {card['total_s']:.1f} s against a budget of {card['budget_s']:.0f} s (ratio {card['budget_ratio']:.3f}).
Model: d_model {p['model']['d_model']}, {p['model']['n_layers']} layers, vocabulary {p['vocab_size']}.</p>
<table id="stages"><tr><th>#</th><th>stage</th><th>status</th><th>time (s)</th><th>CPU (s)</th><th>peak RSS (MB)</th>
<th>checks (threshold)</th><th>against the previous stage</th></tr>
{''.join(rows)}</table>
<h2>Loss curves</h2>
{curves_svg}
<h2>Time and memory per stage</h2>
{bars_svg}
<h2>Overlap between evaluation items and training data</h2><ul>{overlap}</ul>
<h2>Every number</h2><ul>{numbers}</ul>
</body></html>
"""


def write_card(result, profile) -> dict[str, Path]:
    """Write card.json, card.md, card.html, loss_curves.svg and stages.svg under result.out."""
    card = card_dict(result, profile)
    out = Path(result.out)
    curves = loss_curves_svg(result.curves)
    bars = stage_bars_svg(card["stages"])
    paths = {"json": out / "card.json", "md": out / "card.md", "html": out / "card.html",
             "curves": out / "loss_curves.svg", "bars": out / "stages.svg"}
    atomic_write_text(paths["json"], json.dumps(card, indent=1, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(paths["curves"], curves + "\n")
    atomic_write_text(paths["bars"], bars + "\n")
    atomic_write_text(paths["md"], card_markdown(card))
    atomic_write_text(paths["html"], card_html(card, curves, bars))
    return paths
