"""The cleaning pipeline: readers -> filters -> writers, shard by shard, resumable.

Each input file is one shard. Its documents (`lmkit.data.records`: JSON Lines, text, or
Parquet when pyarrow is installed) pass through the filters in order; the first filter that
drops a document stops it, and a filter may change the text it keeps (normalising, removing
lines, masking PII). Kept records are written to ``OUT/<shard name>`` (Parquet shards as
JSON Lines), dropped ones, with the filter and the reason, to ``DROPPED/<shard>.dropped.jsonl``
when a dropped folder is given.

Every output is written to a temporary file and renamed, and a finished shard leaves a state
file ``OUT/.clean-state/<shard>.json`` with its counts and the key of the filter settings: a
rerun (after a crash or Ctrl-C) skips the shards whose state matches and redoes the rest.
``OUT/clean_report.json`` sums the counts: documents and characters in and out, and per filter
the documents dropped (by reason), changed, and the filter's own counters (lines removed by
C4, PII masked by kind, languages seen).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from lmkit.atomic import atomic_write_text
from lmkit.data.filters import DocumentFilter, Dropped
from lmkit.data.records import Record, RecordWriter, is_jsonl, read_records
from lmkit.data.shards import CorpusError, corpus_files
from lmkit.errors import require

STATE_DIR = ".clean-state"
REPORT_NAME = "clean_report.json"
PARQUET_SUFFIXES = (".parquet", ".pq")
_COUNTER_ATTRS = ("line_drops", "counts", "label_counts")


def read_parquet_records(path: str | os.PathLike, field_name: str = "text") -> Iterator[Record]:
    """Records of a Parquet file, batch by batch (needs pyarrow)."""
    require("pyarrow", "data")
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(str(path))
    if field_name not in pf.schema_arrow.names:
        raise CorpusError(f"{path}: no column {field_name!r} (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            row += 1
            text = obj.get(field_name)
            if isinstance(text, str):
                yield Record(text, f"{path}:{row}", obj)


def shard_records(path: Path, field_name: str, split_by: str) -> Iterator[Record]:
    """The records of one shard of any supported format."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return read_parquet_records(path, field_name)
    return read_records(path, field_name, split_by)


def output_name(path: Path) -> str:
    """The output file name of a shard (Parquet is written back as JSON Lines)."""
    return path.stem + ".jsonl" if path.suffix.lower() in PARQUET_SUFFIXES else path.name


@dataclass
class CleanStats:
    """Counts of one shard or of a whole run."""

    documents_in: int = 0
    documents_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # filter -> reason -> documents
    changed: dict[str, int] = field(default_factory=dict)  # filter -> documents whose text it changed
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # filter -> its own counters

    def drop_counts(self) -> dict[str, int]:
        """Documents dropped per filter."""
        return {name: sum(reasons.values()) for name, reasons in self.dropped.items()}

    def add(self, other: "CleanStats") -> None:
        self.documents_in += other.documents_in
        self.documents_out += other.documents_out
        self.chars_in += other.chars_in
        self.chars_out += other.chars_out
        for target, source in ((self.dropped, other.dropped), (self.counters, other.counters)):
            for name, table in source.items():
                mine = target.setdefault(name, {})
                for key, n in table.items():
                    mine[key] = mine.get(key, 0) + n
        for name, n in other.changed.items():
            self.changed[name] = self.changed.get(name, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {"documents_in": self.documents_in, "documents_out": self.documents_out, "chars_in": self.chars_in,
                "chars_out": self.chars_out, "drop_counts": self.drop_counts(), "dropped": self.dropped,
                "changed": self.changed, "counters": self.counters}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CleanStats":
        return cls(d["documents_in"], d["documents_out"], d["chars_in"], d["chars_out"], d.get("dropped", {}),
                   d.get("changed", {}), d.get("counters", {}))


def _snapshot(f: DocumentFilter) -> dict[str, int]:
    for attr in _COUNTER_ATTRS:
        table = getattr(f, attr, None)
        if isinstance(table, dict):
            return dict(table)
    return {}


class CleanPipeline:
    """Run `filters` over documents; `run` does it for files, shard by shard."""

    def __init__(self, filters: Sequence[DocumentFilter], field_name: str = "text", split_by: str = "line",
                 progress: bool | str | None = None) -> None:
        self.filters = list(filters)
        self.field_name, self.split_by, self.progress = field_name, split_by, progress

    def config_key(self) -> str:
        """A hash of the filters and their settings: a shard done under another key is redone."""
        spec = [[type(f).__name__, f.config()] for f in self.filters] + [self.field_name, self.split_by]
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def process(self, text: str, stats: CleanStats | None = None) -> tuple[str | None, str, str]:
        """(kept text or None, the filter that dropped it, the reason); counts into `stats`."""
        for f in self.filters:
            out = f.apply(text)
            if isinstance(out, Dropped):
                if stats is not None:
                    table = stats.dropped.setdefault(f.name, {})
                    table[out.reason] = table.get(out.reason, 0) + 1
                return None, f.name, out.reason
            if out != text and stats is not None:
                stats.changed[f.name] = stats.changed.get(f.name, 0) + 1
            text = out
        return text, "", ""

    def clean(self, records: Iterable[Record], keep: Callable[[Record], None],
              drop: Callable[[Record, str, str], None] | None = None) -> CleanStats:
        """Filter `records`: kept ones (with their new text) go to `keep`, the others to `drop`."""
        stats = CleanStats()
        before = [_snapshot(f) for f in self.filters]
        for record in records:
            stats.documents_in += 1
            stats.chars_in += len(record.text)
            text, name, reason = self.process(record.text, stats)
            if text is None:
                if drop is not None:
                    drop(record, name, reason)
                continue
            stats.documents_out += 1
            stats.chars_out += len(text)
            keep(record if text == record.text else record.with_text(text, self.field_name))
        for f, old in zip(self.filters, before):
            new = _snapshot(f)
            diff = {k: v - old.get(k, 0) for k, v in new.items() if v - old.get(k, 0)}
            if diff:
                stats.counters[f.name] = diff
        return stats

    def clean_texts(self, texts: Iterable[str]) -> tuple[list[str], CleanStats]:
        """In memory: the kept texts and the counts."""
        kept: list[str] = []
        stats = self.clean((Record(t, "") for t in texts), lambda r: kept.append(r.text))
        return kept, stats

    def run(self, inputs: Sequence[str | os.PathLike] | str | os.PathLike, out_dir: str | os.PathLike,
            dropped_dir: str | os.PathLike | None = None, resume: bool = True) -> CleanStats:
        """Clean every input file into `out_dir`; skip shards a previous run finished (`resume`)."""
        from lmkit.progress import Progress

        out, state_dir = Path(out_dir), Path(out_dir) / STATE_DIR
        state_dir.mkdir(parents=True, exist_ok=True)
        if dropped_dir is not None:
            Path(dropped_dir).mkdir(parents=True, exist_ok=True)
        files = corpus_files(inputs)
        names: dict[str, int] = {}
        total, key = CleanStats(), self.config_key()
        skipped = 0
        with Progress(total=len(files), desc="clean", unit="shard", progress=self.progress) as bar:
            for path in files:
                name = output_name(path)
                if name in names:  # the same file name in two folders
                    names[name] += 1
                    name = f"{Path(name).stem}.{names[name]}{Path(name).suffix}"
                names.setdefault(name, 0)
                state_path = state_dir / f"{name}.json"
                target = out / name
                if resume and state_path.exists() and target.exists():
                    state = json.loads(state_path.read_text(encoding="utf-8"))
                    if state.get("config_key") == key and state.get("source") == str(path):
                        total.add(CleanStats.from_dict(state["stats"]))
                        skipped += 1
                        bar.update(1)
                        continue
                stats = self._run_shard(path, target, dropped_dir, name)
                atomic_write_text(state_path, json.dumps({"source": str(path), "config_key": key, "done": True,
                                                          "stats": stats.to_dict()}, ensure_ascii=False) + "\n")
                total.add(stats)
                bar.update(1)
                bar.set_postfix(kept=total.documents_out, dropped=total.documents_in - total.documents_out)
        report = {"shards": len(files), "shards_skipped": skipped, "config_key": key,
                  "filters": [{"name": f.name, "class": type(f).__name__, "config": f.config()} for f in self.filters],
                  **total.to_dict()}
        atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
        self.last_report = report
        return total

    def _run_shard(self, path: Path, target: Path, dropped_dir: str | os.PathLike | None, name: str) -> CleanStats:
        records = shard_records(path, self.field_name, self.split_by)
        if path.suffix.lower() in PARQUET_SUFFIXES:
            records = (r if r.obj is None else Record(r.text, r.source, _jsonable(r.obj)) for r in records)
        with RecordWriter(target, self.split_by) as writer:
            if dropped_dir is None:
                return self.clean(records, writer.write)
            with RecordWriter(Path(dropped_dir) / f"{name}.dropped.jsonl") as dropped:
                def drop(record: Record, filter_name: str, reason: str) -> None:
                    dropped.write(Record(record.text, record.source, {"text": record.text, "source": record.source,
                                                                      "filter": filter_name, "reason": reason}))
                return self.clean(records, writer.write, drop)


def _jsonable(obj: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row with its non-JSON values (dates, bytes) as strings."""
    return json.loads(json.dumps(obj, default=str))


__all__ = ["CleanPipeline", "CleanStats", "is_jsonl", "read_parquet_records"]
