"""The documents of a task, read from local JSON / JSONL / CSV files as lm-eval's
``dataset_path: json|csv`` + ``dataset_kwargs: {data_files: ...}`` would load them (nothing is
downloaded). A relative data file is looked up next to the YAML file first, then in the
current directory (lm-eval/`datasets` only looks in the current directory).

Rows keep their JSON types; a CSV column whose every value is an integer (or a number) becomes
int (float), as pandas reads it for `datasets`; fields missing from a row are None.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lmkit.eval.harness.task_config import TaskConfig, TaskConfigError

_FORMATS = {"json": "json", "jsonl": "json", "csv": "csv"}


def _split_files(cfg: TaskConfig) -> dict[str, list[str]]:
    files = cfg.dataset_kwargs.get("data_files") if isinstance(cfg.dataset_kwargs, dict) else None
    if files is None:
        path = cfg.dataset_path
        if Path(path).suffix.lstrip(".") in _FORMATS:  # dataset_path names one file: every split is it
            return {"train": [path]}
        raise TaskConfigError(f"{cfg.source}: dataset_kwargs.data_files is missing (the harness reads local "
                              f"files only; dataset_path {path!r} would be a download)")
    if isinstance(files, (str, list)):
        files = {"train": files}
    if not isinstance(files, dict):
        raise TaskConfigError(f"{cfg.source}: dataset_kwargs.data_files must be a path, a list or a split mapping")
    return {split: [v] if isinstance(v, str) else list(v) for split, v in files.items()}


def _resolve(cfg: TaskConfig, name: str) -> Path:
    p = Path(name)
    candidates = [p] if p.is_absolute() else [Path(cfg.source).parent / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    raise TaskConfigError(f"{cfg.source}: data file {name!r} not found (looked in {[str(c) for c in candidates]})")


def _read_json(path: Path, field: str | None) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl" or (not text.lstrip().startswith(("[", "{")) or _looks_like_lines(text)):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskConfigError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskConfigError(f"{path}: invalid JSON ({exc.msg})") from None
    if field is not None:
        data = data.get(field) if isinstance(data, dict) else None
    if not isinstance(data, list):
        raise TaskConfigError(f"{path}: expected a list of records (or set dataset_kwargs.field)")
    return data


def _looks_like_lines(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
        return True
    except json.JSONDecodeError:
        return False


def _typed_column(values: list[str]) -> list:
    present = [v for v in values if v != ""]
    for cast in (int, float):
        try:
            converted = [cast(v) for v in present]
        except ValueError:
            continue
        it = iter(converted)
        return [next(it) if v != "" else None for v in values]
    return [v if v != "" else None for v in values]


def _read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return []
    columns = {k: _typed_column([r[k] for r in rows]) for k in rows[0]}
    return [{k: columns[k][i] for k in columns} for i in range(len(rows))]


def load_splits(cfg: TaskConfig) -> dict[str, list[dict]]:
    """split name -> list of documents (dicts with the same keys, missing ones None)."""
    fmt = _FORMATS.get(cfg.dataset_path, None)
    out: dict[str, list[dict]] = {}
    for split, names in _split_files(cfg).items():
        rows: list[dict] = []
        for name in names:
            path = _resolve(cfg, name)
            kind = fmt or _FORMATS.get(path.suffix.lstrip("."))
            if kind is None:
                raise TaskConfigError(f"{cfg.source}: cannot tell the format of {name!r} (json, jsonl or csv)")
            got = _read_csv(path) if kind == "csv" else _read_json(path, cfg.dataset_kwargs.get("field"))
            if not all(isinstance(r, dict) for r in got):
                raise TaskConfigError(f"{path}: every record must be a JSON object")
            rows.extend(got)
        keys: dict[str, None] = {}
        for r in rows:
            keys.update(dict.fromkeys(r))
        out[split] = [{k: r.get(k) for k in keys} for r in rows]
    return out


def split_docs(cfg: TaskConfig, splits: dict[str, list[dict]], name: str | None, what: str) -> list[dict] | None:
    if name is None:
        return None
    if name not in splits:
        raise TaskConfigError(f"{cfg.source}: {what} {name!r} is not among the data files' splits {sorted(splits)}")
    return splits[name]
