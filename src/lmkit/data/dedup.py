"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash + LSH + union-find).

Repeated text makes a model memorise and repeat itself; both kinds are removed here.

* **Exact** (`ExactDeduplicator`): a document (``level="doc"``) or each blank-line paragraph
  of it (``level="paragraph"``) is dropped when the 64-bit blake2b hash of its normalised
  text (`lmkit.data.shingles.normalize_text`) was seen before; a document left without
  paragraphs is dropped.
* **Near-duplicate** (`NearDuplicateFinder`): each surviving document's shingles (word or
  character n-grams) get a MinHash signature; LSH with (bands, rows) from the threshold
  (`lmkit.data.lsh.optimal_param`) makes candidate pairs; union-find joins them into
  clusters, and only each cluster's first document is kept. Signatures and band keys are
  written to disk one numpy ``.npy`` shard per `shard_docs` documents, and each band is then
  grouped from the key shards alone, so memory holds one band's keys (8 bytes a document)
  and a parent array, never the corpus or all signatures.

`deduplicate` runs both over records read twice (`lmkit.data.records`): the first pass
decides, the second writes what is kept. `DedupReport` says what was removed: the duplicate
rate and the sizes of the near-duplicate clusters.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from lmkit.atomic import atomic_path
from lmkit.data.lsh import band_edges, band_keys, optimal_param
from lmkit.data.minhash import SCHEMES, MinHasher
from lmkit.data.records import Record
from lmkit.data.shingles import UNITS, Shingler, normalize_text
from lmkit.data.union_find import UnionFind
from lmkit.errors import ConfigError
from lmkit.progress import Progress

LEVELS = ("doc", "paragraph")
MODES = ("exact", "near", "both")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass
class DedupConfig:
    """What counts as a duplicate and how the search runs.

    `threshold` is the Jaccard similarity of shingle sets above which two documents are near
    duplicates; `bands`/`rows` override the parameters `optimal_param` derives from it.
    """

    mode: str = "both"
    level: str = "doc"
    threshold: float = 0.7
    ngram: int = 5
    unit: str = "word"
    num_perm: int = 128
    seed: int = 1
    scheme: str = "affine32"
    bands: int | None = None
    rows: int | None = None
    batch_docs: int = 4096
    shard_docs: int = 1 << 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.level not in LEVELS:
            raise ConfigError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.unit not in UNITS:
            raise ConfigError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if self.ngram < 1:
            raise ConfigError(f"ngram must be at least 1, got {self.ngram}")
        if self.num_perm < 2:
            raise ConfigError(f"num_perm must be at least 2, got {self.num_perm}")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("give both bands and rows, or neither (then they follow from the threshold)")
        if self.bands is not None and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise ConfigError(f"bands * rows must be at most num_perm ({self.num_perm}), got {self.bands} x {self.rows}")
        if self.batch_docs < 1 or self.shard_docs < 1:
            raise ConfigError("batch_docs and shard_docs must be at least 1")

    def band_rows(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return optimal_param(self.threshold, self.num_perm)


def text_key(text: str) -> int:
    """64-bit blake2b hash of the normalised text: equal for texts that differ only in case,
    Unicode form or whitespace."""
    return int.from_bytes(hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=8).digest(), "little")


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of a document (blank ones dropped)."""
    return [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


class ExactDeduplicator:
    """Drop documents (or paragraphs) whose normalised text was seen before, in stream order."""

    def __init__(self, level: str = "doc") -> None:
        if level not in LEVELS:
            raise ConfigError(f"level must be one of {LEVELS}, got {level!r}")
        self.level = level
        self.seen: set[int] = set()
        self.documents_dropped = 0
        self.paragraphs_total = 0
        self.paragraphs_dropped = 0

    def filter(self, text: str) -> str | None:
        """The text to keep (paragraph level: without repeated paragraphs), or None to drop it."""
        if self.level == "doc":
            key = text_key(text)
            if key in self.seen:
                self.documents_dropped += 1
                return None
            self.seen.add(key)
            return text
        kept, parts = [], paragraphs(text)
        for para in parts:
            self.paragraphs_total += 1
            key = text_key(para)
            if key in self.seen:
                self.paragraphs_dropped += 1
                continue
            self.seen.add(key)
            kept.append(para)
        if not kept:
            self.documents_dropped += 1
            return None
        return text if len(kept) == len(parts) else "\n\n".join(kept)


class SignatureShards:
    """MinHash signatures and LSH band keys on disk, one ``.npy`` pair per shard.

    ``sig_00000.npy`` holds uint32 ``[docs, num_perm]``; ``keys_00000.npy`` uint64
    ``[bands, docs]`` (band-major, so reading one band of a shard is one contiguous slice).
    """

    def __init__(self, directory: str | os.PathLike, bands: int, rows: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bands, self.rows = bands, rows
        self.sizes: list[int] = []

    def __len__(self) -> int:
        return sum(self.sizes)

    def _save(self, name: str, array: np.ndarray) -> None:
        with atomic_path(self.directory / name) as tmp, open(tmp, "wb") as f:
            np.save(f, array)

    def append(self, signatures: np.ndarray) -> None:
        """Store one shard of signatures and their band keys."""
        k = len(self.sizes)
        keys = np.stack([band_keys(signatures, b, self.rows) for b in range(self.bands)]) if len(signatures) else \
            np.zeros((self.bands, 0), np.uint64)
        self._save(f"sig_{k:05d}.npy", signatures)
        self._save(f"keys_{k:05d}.npy", keys)
        self.sizes.append(len(signatures))

    def band(self, band: int) -> np.ndarray:
        """The keys of every document for one band, in document order."""
        parts = [np.load(self.directory / f"keys_{k:05d}.npy", mmap_mode="r")[band] for k in range(len(self.sizes))]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def signatures(self) -> np.ndarray:
        """All signatures (for small corpora and tests; the dedup itself never needs this)."""
        parts = [np.load(self.directory / f"sig_{k:05d}.npy") for k in range(len(self.sizes))]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.uint32)


@dataclass
class NearDuplicates:
    """The outcome of the near-duplicate search over `documents` documents."""

    roots: np.ndarray  # root (first document) of each document's cluster; itself if unique
    valid: np.ndarray  # False for documents with no shingles (never near duplicates)
    bands: int
    rows: int
    candidate_edges: int

    @property
    def keep(self) -> np.ndarray:
        return self.roots == np.arange(len(self.roots))

    def cluster_sizes(self) -> np.ndarray:
        counts = np.bincount(self.roots, minlength=len(self.roots))
        return np.sort(counts[counts > 1])[::-1]


class NearDuplicateFinder:
    """Stream documents in (`add`), then `finish` to cluster them; see the module docstring."""

    def __init__(self, config: DedupConfig, work_dir: str | os.PathLike, progress: bool | str | None = None) -> None:
        self.config = config
        self.bands, self.rows = config.band_rows()
        self.shingler = Shingler(config.ngram, config.unit)
        self.hasher = MinHasher(config.num_perm, config.seed, config.scheme)
        self.store = SignatureShards(work_dir, self.bands, self.rows)
        self.progress = progress
        self._pending: list[str] = []
        self._shard: list[np.ndarray] = []
        self._shard_len = 0
        self._valid: list[np.ndarray] = []

    def add(self, text: str) -> None:
        self._pending.append(text)
        if len(self._pending) >= self.config.batch_docs:
            self._flush_batch()

    def add_many(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(text)

    def _flush_batch(self) -> None:
        if not self._pending:
            return
        hashes, offsets = self.shingler.hashes(self._pending)
        self._pending = []
        self._valid.append(np.diff(offsets) > 0)
        sigs = self.hasher.signatures(hashes, offsets)
        self._shard.append(sigs)
        self._shard_len += len(sigs)
        if self._shard_len >= self.config.shard_docs:
            self._flush_shard()

    def _flush_shard(self) -> None:
        if self._shard:
            self.store.append(np.concatenate(self._shard))
        self._shard, self._shard_len = [], 0

    def finish(self) -> NearDuplicates:
        """Group every band's keys, join the candidates, and return the clusters."""
        self._flush_batch()
        self._flush_shard()
        valid = np.concatenate(self._valid) if self._valid else np.zeros(0, bool)
        ids = np.flatnonzero(valid)
        uf = UnionFind(len(valid))
        edges = 0
        with Progress(total=self.bands, desc="LSH bands", unit="band", progress=self.progress) as bar:
            for band in range(self.bands):
                a, b = band_edges(self.store.band(band)[ids], ids)
                edges += len(a)
                uf.union_edges(a, b)
                bar.update(1)
        return NearDuplicates(uf.roots(), valid, self.bands, self.rows, edges)


def near_duplicates(texts: Iterable[str], config: DedupConfig | None = None, work_dir: str | os.PathLike | None = None,
                    progress: bool | str | None = False) -> NearDuplicates:
    """Near-duplicate clusters of `texts` (signature shards in `work_dir`, or a temporary folder)."""
    config = config or DedupConfig(mode="near")
    with tempfile.TemporaryDirectory(prefix="lmkit-dedup-", dir=work_dir) as tmp:
        finder = NearDuplicateFinder(config, tmp, progress)
        finder.add_many(texts)
        return finder.finish()


@dataclass
class DedupReport:
    """What deduplication found: counts, duplicate rate, cluster sizes, parameters, time."""

    documents: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    paragraphs: int = 0
    paragraphs_removed: int = 0
    clusters: int = 0
    cluster_size_histogram: dict[str, int] = field(default_factory=dict)
    largest_clusters: list[int] = field(default_factory=list)
    candidate_edges: int = 0
    empty_documents: int = 0
    bands: int = 0
    rows: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def duplicate_rate(self) -> float:
        return (self.documents - self.kept) / self.documents if self.documents else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["duplicate_rate"] = round(self.duplicate_rate, 6)
        return out


def _histogram(sizes: np.ndarray) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(sizes.tolist()).items())}


def deduplicate(read: Callable[[], Iterator[Record]], write: Callable[[Record], None] | None = None,
                config: DedupConfig | None = None, work_dir: str | os.PathLike | None = None,
                progress: bool | str | None = None, field_name: str = "text") -> DedupReport:
    """Deduplicate the records `read()` yields (called twice) and `write` each one kept.

    Pass one applies exact dedup and computes signatures of what survives; pass two
    re-applies the (deterministic) exact step and writes the records that are not near
    duplicates of an earlier one. Returns the report.
    """
    config = config or DedupConfig()
    start = time.perf_counter()
    report = DedupReport(config=asdict(config))
    do_exact, do_near = config.mode in ("exact", "both"), config.mode in ("near", "both")
    with tempfile.TemporaryDirectory(prefix="lmkit-dedup-", dir=work_dir) as tmp:
        exact = ExactDeduplicator(config.level) if do_exact else None
        finder = NearDuplicateFinder(config, tmp, progress) if do_near else None
        survived = bytearray()  # 1 byte a document: did it survive the exact step
        with Progress(desc="hashing", unit="doc", progress=progress) as bar:
            for record in read():
                text = exact.filter(record.text) if exact else record.text
                survived.append(text is not None)
                if finder is not None and text is not None:
                    finder.add(text)
                bar.update(1)
        report.documents = len(survived)
        if exact is not None:
            report.exact_duplicates = exact.documents_dropped
            report.paragraphs, report.paragraphs_removed = exact.paragraphs_total, exact.paragraphs_dropped
            exact.seen.clear()  # memory back before the LSH pass
        keep_near = np.ones(survived.count(1), dtype=bool)
        if finder is not None:
            found = finder.finish()
            keep_near = found.keep
            sizes = found.cluster_sizes()
            report.near_duplicates = int((~keep_near).sum())
            report.clusters = len(sizes)
            report.cluster_size_histogram = _histogram(sizes)
            report.largest_clusters = sizes[:10].tolist()
            report.candidate_edges = found.candidate_edges
            report.empty_documents = int((~found.valid).sum())
            report.bands, report.rows = found.bands, found.rows
    report.kept = int(keep_near.sum())
    if write is not None:
        exact = ExactDeduplicator(config.level) if do_exact else None
        j = seen = 0
        with Progress(total=report.documents, desc="writing", unit="doc", progress=progress) as bar:
            for record in read():
                seen += 1
                text = exact.filter(record.text) if exact else record.text
                if text is not None:
                    if j < len(keep_near) and keep_near[j]:
                        write(record if text is record.text else record.with_text(text, field_name))
                    j += 1
                bar.update(1)
        if seen != report.documents:
            raise ConfigError("the input changed between the two passes of deduplication; run it again")
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def dedup_texts(texts: list[str], config: DedupConfig | None = None) -> tuple[list[str], DedupReport]:
    """Deduplicate an in-memory list of texts: (kept texts, report)."""
    kept: list[str] = []
    records = lambda: (Record(t, str(i)) for i, t in enumerate(texts))  # noqa: E731
    report = deduplicate(records, lambda r: kept.append(r.text), config, progress=False)
    return kept, report
