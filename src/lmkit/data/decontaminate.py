"""Decontamination: find training documents that contain evaluation items, and remove or report them.

A benchmark item seen in training inflates the score (a peer's C-Eval/CMMLU ≈ 97 % after
leakage). Three checks run between every training document and every evaluation item, all
on the normalised word units of `lmkit.data.shingles` (case, Unicode form, whitespace and
punctuation do not hide a copy):

* ``ngram``: the document contains one of the item's n-grams, with n = 13 (GPT-3's rule) or,
  for an item shorter than 13 words, n = its length, i.e. the whole item appears in order.
  Items shorter than `min_words` are too short to tell a copy from a common phrase: they are
  counted as ``too_short`` and left out.
* ``containment``: at least `containment` of the item's word `shingle`-grams (5-grams) occur
  in the document. This finds a lightly edited item inside a longer document (a word changed
  in the middle of a 15-word item leaves no 13-gram, but most of its 5-grams).
* ``minhash``: the MinHash estimate of the Jaccard similarity between the document's and the
  item's shingle sets is at least `threshold`, found through LSH (`lmkit.data.lsh`): a
  document that is a near copy of an item as a whole.

The evaluation side is held in memory (sorted hash tables; benchmarks are small); training
documents stream through in batches with vectorised look-ups (``np.searchsorted``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lmkit.data.lsh import band_keys, optimal_param
from lmkit.data.minhash import MinHasher
from lmkit.data.records import Record, is_jsonl
from lmkit.data.shards import CorpusError, read_documents
from lmkit.data.shingles import Shingler, ngram_hashes
from lmkit.errors import ConfigError
from lmkit.jsonl import iter_jsonl
from lmkit.progress import Progress

METHODS = ("ngram", "containment", "minhash")


@dataclass
class DecontamConfig:
    """Sizes and thresholds of the three checks (see the module docstring)."""

    ngram: int = 13
    min_words: int = 5
    shingle: int = 5
    containment: float = 0.5
    threshold: float = 0.7
    num_perm: int = 128
    seed: int = 1
    batch_docs: int = 2048

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.shingle < 1:
            raise ConfigError(f"ngram and shingle must be at least 1, got {self.ngram} and {self.shingle}")
        if self.min_words < 1:
            raise ConfigError(f"min_words must be at least 1, got {self.min_words}")
        if not 0.0 < self.containment <= 1.0:
            raise ConfigError(f"containment must be in (0, 1], got {self.containment}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if self.num_perm < 2 or self.batch_docs < 1:
            raise ConfigError("num_perm must be at least 2 and batch_docs at least 1")

    def item_ngram(self, words: int) -> int:
        """The n-gram size used for an item of `words` words: 13, or the item's length if shorter."""
        return min(self.ngram, words)


@dataclass(frozen=True)
class Match:
    """One evaluation item found in one training document."""

    item: int  # index into Decontaminator.items
    method: str
    score: float


@dataclass
class EvalItem:
    eval_set: str
    index: int
    text: str


class _HashTable:
    """Sorted (hash, item) pairs: which items own a given n-gram hash."""

    def __init__(self, hashes: np.ndarray, items: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        self.hashes, self.items = hashes[order], items[order]

    def lookup(self, hashes: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(owner, item, hash) for every query hash found in the table (one row per item holding it)."""
        if not len(self.hashes) or not len(hashes):
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0, np.uint64)
        left = np.searchsorted(self.hashes, hashes, side="left")
        right = np.searchsorted(self.hashes, hashes, side="right")
        hit = right > left
        left, right, owners, hashes = left[hit], right[hit], owners[hit], hashes[hit]
        counts = right - left
        rep = np.repeat(np.arange(len(left)), counts)
        pos = left[rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(counts) - counts, counts))
        return owners[rep].astype(np.int64), self.items[pos].astype(np.int64), hashes[rep]


class Decontaminator:
    """Index evaluation items once, then `scan` batches of training texts for them."""

    def __init__(self, eval_sets: dict[str, Sequence[str]], config: DecontamConfig | None = None) -> None:
        self.config = config = config or DecontamConfig()
        self.items = [EvalItem(name, i, text) for name, texts in eval_sets.items() for i, text in enumerate(texts)]
        self.units = Shingler(1, "word")
        units, starts = self.units.unit_hashes([it.text for it in self.items])
        self.words = np.diff(starts)
        usable = self.words >= config.min_words
        self.too_short = ~usable
        ids = np.arange(len(self.items))
        # n-gram tables, one per n in use (13, or an item's own shorter length)
        sizes = np.where(usable, np.minimum(self.words, config.ngram), 0)
        self.ngram_tables: dict[int, _HashTable] = {}
        for n in sorted(set(sizes[usable].tolist())):
            hashes, offsets = ngram_hashes(units, starts, n)
            owner = np.repeat(ids, np.diff(offsets))
            keep = sizes[owner] == n
            self.ngram_tables[n] = _HashTable(hashes[keep], owner[keep])
        # shingle table for containment, and MinHash LSH over the same shingle sets
        hashes, offsets = ngram_hashes(units, starts, config.shingle)
        owner = np.repeat(ids, np.diff(offsets))
        pairs = np.unique(np.stack([owner.astype(np.uint64), hashes]), axis=1) if len(hashes) else np.zeros((2, 0), np.uint64)
        pairs = pairs[:, usable[pairs[0].astype(np.int64)]] if pairs.size else pairs
        self.shingle_counts = np.bincount(pairs[0].astype(np.int64), minlength=len(self.items))
        self.shingle_table = _HashTable(pairs[1], pairs[0].astype(np.int64))
        self.hasher = MinHasher(config.num_perm, config.seed)
        self.bands, self.rows = optimal_param(config.threshold, config.num_perm)
        self.item_signatures = self.hasher.signatures(hashes, offsets)
        usable_ids = np.flatnonzero(usable & (np.diff(offsets) > 0))
        self.band_tables = [_HashTable(band_keys(self.item_signatures[usable_ids], b, self.rows), usable_ids)
                            for b in range(self.bands)]

    def scan(self, texts: Sequence[str]) -> list[list[Match]]:
        """For each text, the evaluation items it contains (each item once, best method first)."""
        cfg = self.config
        units, starts = self.units.unit_hashes(list(texts))
        found: list[dict[int, Match]] = [dict() for _ in texts]

        def note(docs: np.ndarray, items: np.ndarray, method: str, scores: np.ndarray) -> None:
            for d, it, s in zip(docs.tolist(), items.tolist(), scores.tolist()):
                found[d].setdefault(it, Match(it, method, round(float(s), 4)))

        for n, table in self.ngram_tables.items():
            hashes, offsets = ngram_hashes(units, starts, n)
            owners = np.repeat(np.arange(len(texts)), np.diff(offsets))
            docs, items, _ = table.lookup(hashes, owners)
            if len(docs):
                pairs = np.unique(np.stack([docs, items]), axis=1)
                note(pairs[0], pairs[1], "ngram", np.ones(pairs.shape[1]))
        hashes, offsets = ngram_hashes(units, starts, cfg.shingle)
        owners = np.repeat(np.arange(len(texts)), np.diff(offsets))
        docs, items, hits = self.shingle_table.lookup(hashes, owners)
        if len(docs):
            triples = np.unique(np.stack([docs.astype(np.uint64), items.astype(np.uint64), hits]), axis=1)
            pairs, counts = np.unique(triples[:2].astype(np.int64), axis=1, return_counts=True)
            share = counts / np.maximum(self.shingle_counts[pairs[1]], 1)
            ok = share >= cfg.containment
            note(pairs[0][ok], pairs[1][ok], "containment", share[ok])
        sigs = self.hasher.signatures(hashes, offsets)
        has = np.flatnonzero(np.diff(offsets) > 0)
        cand: set[tuple[int, int]] = set()
        for b, table in enumerate(self.band_tables):
            docs, items, _ = table.lookup(band_keys(sigs[has], b, self.rows), has)
            cand.update(zip(docs.tolist(), items.tolist()))
        if cand:
            pairs = np.array(sorted(cand), dtype=np.int64).T
            est = np.mean(sigs[pairs[0]] == self.item_signatures[pairs[1]], axis=1)
            ok = est >= cfg.threshold
            note(pairs[0][ok], pairs[1][ok], "minhash", est[ok])
        return [sorted(f.values(), key=lambda m: (METHODS.index(m.method), m.item)) for f in found]


def read_eval_set(path: str | os.PathLike, field: str | None = None) -> list[str]:
    """The items of one evaluation file: one per line of text, or per JSON Lines record.

    A record's text is its `field`; with no `field`, its "text" field if it has one, else all
    its string values (and lists of strings, such as choices) joined by spaces.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"evaluation file {str(path)!r} does not exist")
    items: list[str] = []
    if not is_jsonl(path):
        items = list(read_documents(path, "line"))
    for lineno, obj in iter_jsonl(path, error=CorpusError) if is_jsonl(path) else ():
        if not isinstance(obj, dict):
            raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if field is not None:
            if not isinstance(obj.get(field), str):
                raise CorpusError(f"{path}:{lineno}: no text field {field!r} (fields: {', '.join(sorted(obj)) or 'none'})")
            items.append(obj[field])
        elif isinstance(obj.get("text"), str):
            items.append(obj["text"])
        else:
            parts = []
            for value in obj.values():
                if isinstance(value, str):
                    parts.append(value)
                elif isinstance(value, list):
                    parts.extend(v for v in value if isinstance(v, str))
            if not parts:
                raise CorpusError(f"{path}:{lineno}: no text in this record; name the field with --eval-field")
            items.append(" ".join(parts))
    if not items:
        raise CorpusError(f"evaluation file {path} has no items")
    return items


@dataclass
class DecontamReport:
    """Training documents flagged and removed, and per evaluation set the items found."""

    documents: int = 0
    contaminated_documents: int = 0
    removed: int = 0
    kept: int = 0
    eval_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decontaminate(read: Callable[[], Iterator[Record]], eval_sets: dict[str, Sequence[str]],
                  write: Callable[[Record], None] | None = None, config: DecontamConfig | None = None,
                  remove: bool = True, progress: bool | str | None = None, max_listed: int = 5) -> DecontamReport:
    """Scan the training records `read()` yields for the evaluation items; `write` those kept.

    With `remove` False every record is written (report only). Returns the report.
    """
    start = time.perf_counter()
    config = config or DecontamConfig()
    index = Decontaminator(eval_sets, config)
    report = DecontamReport(config=asdict(config))
    item_docs: dict[int, list[str]] = {}
    item_hits: dict[int, int] = {}
    item_method: dict[int, str] = {}

    def flush(batch: list[Record]) -> None:
        for record, matches in zip(batch, index.scan([r.text for r in batch])):
            report.documents += 1
            if matches:
                report.contaminated_documents += 1
                for m in matches:
                    item_hits[m.item] = item_hits.get(m.item, 0) + 1
                    item_method.setdefault(m.item, m.method)
                    if len(item_docs.setdefault(m.item, [])) < max_listed:
                        item_docs[m.item].append(record.source)
            if matches and remove:
                report.removed += 1
            else:
                report.kept += 1
                if write is not None:
                    write(record)

    with Progress(desc="decontaminating", unit="doc", progress=progress) as bar:
        batch: list[Record] = []
        for record in read():
            batch.append(record)
            if len(batch) >= config.batch_docs:
                flush(batch)
                bar.update(len(batch))
                batch = []
        flush(batch)
        bar.update(len(batch))
    for name in eval_sets:
        ids = [i for i, it in enumerate(index.items) if it.eval_set == name]
        found = [i for i in ids if i in item_hits]
        by_method = {m: sum(1 for i in found if item_method[i] == m) for m in METHODS}
        report.eval_sets[name] = {
            "items": len(ids),
            "too_short": int(index.too_short[ids].sum()) if ids else 0,
            "contaminated_items": len(found),
            "contamination_rate": round(len(found) / len(ids), 6) if ids else 0.0,
            "by_method": by_method,
            "found": [{"index": index.items[i].index, "text": index.items[i].text[:120], "method": item_method[i],
                       "training_documents": item_hits[i], "examples": item_docs[i]} for i in found],
        }
    report.seconds = round(time.perf_counter() - start, 3)
    return report
