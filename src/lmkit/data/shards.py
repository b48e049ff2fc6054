"""Corpus files -> token shards: the on-disk form of pretraining data.

A corpus (text files or folders of them) is split into documents, tokenized in parallel,
each document followed by an end-of-document id, and written as flat arrays of token ids
(``uint16`` when every id fits, else ``uint32``) plus a small JSON index. Training then
reads the shards through ``np.memmap`` without loading them into memory
(`TokenShards`), so a corpus far larger than RAM costs nothing but disk.

Layout of a shard directory::

    index.json          format, dtype, vocab size, eos id, tokenizer fingerprint, counts
    train_00000.bin     raw little-endian token ids (numpy ``tofile``)
    val_00000.bin

Each document goes to train or validation by a keyed hash of its text, so the split does
not depend on file order, worker count or run, and a duplicated document never lands on
both sides. The directory is built under a temporary name and renamed into place, so a
failed run (bad UTF-8, Ctrl-C) leaves nothing behind.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from lmkit.atomic import recover_directory, replace_directory
from lmkit.checksums import write_checksums
from lmkit.errors import ConfigError, LmkitError, TokenizerError
from lmkit.tokenizers.base import Tokenizer

FORMAT = "lmkit-token-shards"
VERSION = 1
INDEX_FILE = "index.json"
SPLITS = ("train", "val")
SPLIT_MODES = ("line", "paragraph", "file")
#: special tokens tried, in order, when no end-of-document token is named
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[EOS]", "<EOS>")


class CorpusError(LmkitError, ValueError):
    """The corpus cannot be read or is empty, or a shard directory is missing or corrupt."""


# ---- configuration ----------------------------------------------------------------------------
@dataclass
class ShardConfig:
    """How `prepare_shards` cuts and writes a corpus."""

    split_by: str = "line"  # "line", "paragraph" (blank-line separated) or "file"
    val_fraction: float = 0.0  # expected fraction of documents in the validation split
    seed: int = 0  # key of the split hash: change it to draw a different split
    workers: int = 1  # tokenizer processes; 1 = in this process
    shard_tokens: int = 1 << 28  # tokens per shard file (the last one holds the rest)
    chunk_bytes: int = 1 << 20  # text handed to a worker at a time
    eos_token: str | None = None  # special token ending each document; None: guess
    eos_id: int | None = None  # or its id directly (wins over eos_token)

    def __post_init__(self) -> None:
        if self.split_by not in SPLIT_MODES:
            raise ConfigError(f"split_by must be one of {SPLIT_MODES}, got {self.split_by!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.shard_tokens < 1:
            raise ConfigError(f"shard_tokens must be >= 1, got {self.shard_tokens}")
        if self.chunk_bytes < 1:
            raise ConfigError(f"chunk_bytes must be >= 1, got {self.chunk_bytes}")
        if self.eos_id is not None and self.eos_id < 0:
            raise ConfigError(f"eos_id must be >= 0, got {self.eos_id}")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every id of a vocabulary: uint16 up to 65536 ids."""
    if vocab_size <= 0:
        raise ConfigError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ConfigError(f"vocab_size {vocab_size} does not fit in uint32 token ids")


# ---- reading the corpus -----------------------------------------------------------------------
def corpus_files(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Files named directly, plus every non-hidden file below each named folder (sorted)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise CorpusError(f"corpus path {str(p)!r} does not exist")
    if not files:
        raise CorpusError(f"no corpus files found in {[str(p) for p in paths]}")
    return files


def _text_blocks(path: Path, block_bytes: int = 1 << 23) -> Iterator[str]:
    """Decode `path` as strict UTF-8 in blocks; a bad byte raises with its file offset."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    first = True
    with open(path, "rb") as f:
        while True:
            raw = f.read(block_bytes)
            final = not raw
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=final)
            except UnicodeDecodeError as exc:
                where = offset - pending + exc.start
                bad = exc.object[exc.start : exc.start + 4]
                raise CorpusError(
                    f"{path}: not valid UTF-8 at byte offset {where} (bytes {bad!r}: {exc.reason}); "
                    "convert the file to UTF-8 (e.g. iconv -f GBK -t UTF-8) or leave it out"
                ) from None
            offset += len(raw)
            if first and text:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not content
                first = False
            if text:
                yield text
            if final:
                return


def _lines(path: Path) -> Iterator[str]:
    """Lines of `path` without their line ending ("\\n" or "\\r\\n")."""
    carry = ""
    for block in _text_blocks(path):
        parts = (carry + block).split("\n")
        carry = parts.pop()
        for line in parts:
            yield line.removesuffix("\r")
    if carry:
        yield carry.removesuffix("\r")


def read_documents(path: str | os.PathLike, split_by: str = "line") -> Iterator[str]:
    """The documents of one file: non-blank lines, blank-line separated paragraphs, or the file.

    Blank (whitespace-only) documents are skipped; text is otherwise kept exactly
    (paragraph lines are joined with "\\n").
    """
    path = Path(path)
    if split_by == "line":
        for line in _lines(path):
            if line.strip():
                yield line
    elif split_by == "paragraph":
        para: list[str] = []
        for line in _lines(path):
            if line.strip():
                para.append(line)
            elif para:
                yield "\n".join(para)
                para = []
        if para:
            yield "\n".join(para)
    elif split_by == "file":
        text = "".join(_text_blocks(path))
        if text.strip():
            yield text
    else:
        raise ConfigError(f"split_by must be one of {SPLIT_MODES}, got {split_by!r}")


def iter_documents(paths: Sequence[str | os.PathLike] | str | os.PathLike, split_by: str = "line") -> Iterator[str]:
    """Documents of every corpus file in order (see `corpus_files`, `read_documents`)."""
    for f in corpus_files(paths):
        yield from read_documents(f, split_by)


def is_validation(text: str, val_fraction: float, seed: int = 0) -> bool:
    """Whether a document belongs to the validation split: a keyed hash of its text < fraction."""
    if val_fraction <= 0.0:
        return False
    key = str(seed).encode()[:64]
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < val_fraction


# ---- tokenizers -------------------------------------------------------------------------------
def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer file with the loader `lmkit.tokenizers` provides for it."""
    import importlib

    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
    tk = importlib.import_module("lmkit.tokenizers")
    for name in ("load_tokenizer", "load"):
        fn = getattr(tk, name, None)
        if callable(fn):
            return fn(path)
    try:  # fall back on the byte-level BPE file format
        from lmkit.tokenizers.bpe import BPETokenizer  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TokenizerError(
            f"cannot load {str(path)!r}: lmkit.tokenizers has no loader for tokenizer files yet"
        ) from exc
    return BPETokenizer.load(path)


def _as_tokenizer(tok: Tokenizer | str | os.PathLike) -> Tokenizer:
    return tok if isinstance(tok, Tokenizer) else load_tokenizer(tok)


def tokenizer_fingerprint(tok: Tokenizer | str | os.PathLike) -> str:
    """sha256 of the tokenizer's saved file: shards made with another tokenizer are refused."""
    if not isinstance(tok, Tokenizer):
        return "sha256:" + hashlib.sha256(Path(tok).read_bytes()).hexdigest()
    with tempfile.TemporaryDirectory() as d:
        try:
            target = Path(d) / "tokenizer.json"
            tok.save(target)
            return "sha256:" + hashlib.sha256(target.read_bytes()).hexdigest()
        except NotImplementedError:
            pass
    h = hashlib.sha256(type(tok).__qualname__.encode())  # no save(): hash the vocabulary
    for i in range(tok.vocab_size):
        h.update(tok.id_to_token(i).encode("utf-8", "surrogatepass") + b"\0")
    h.update(json.dumps(sorted(tok.special_tokens.items())).encode())
    return "sha256:" + h.hexdigest()


def resolve_eos_id(tok: Tokenizer, eos_token: str | None = None, eos_id: int | None = None) -> int:
    """The end-of-document id: given directly, by token text, or the first usual name found."""
    if eos_id is not None:
        if not 0 <= eos_id < tok.vocab_size:
            raise ConfigError(f"eos_id={eos_id} is outside the vocabulary [0, {tok.vocab_size})")
        return eos_id
    if eos_token is not None:
        idx = tok.special_tokens.get(eos_token, tok.token_to_id(eos_token))
        if idx is None:
            raise ConfigError(f"eos_token {eos_token!r} is not in the tokenizer's vocabulary")
        return int(idx)
    for name in EOS_CANDIDATES:
        if name in tok.special_tokens:
            return int(tok.special_tokens[name])
    raise ConfigError(
        "the tokenizer has no end-of-document token (looked for "
        f"{', '.join(EOS_CANDIDATES)}; it has {sorted(tok.special_tokens)}); "
        "name one with eos_token / --eos-token"
    )


# ---- tokenizing in workers --------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(tok: Tokenizer | str, eos_id: int, dtype: str, val_fraction: float, seed: int) -> None:
    _WORKER.update(tok=_as_tokenizer(tok), eos=eos_id, dtype=np.dtype(dtype), val=val_fraction, seed=seed)


def _encode_chunk(docs: list[str]) -> tuple[np.ndarray, int, np.ndarray, int, int]:
    """(train ids, train docs, val ids, val docs, utf-8 bytes) for a chunk of documents."""
    tok, eos, dtype = _WORKER["tok"], _WORKER["eos"], _WORKER["dtype"]
    out: dict[bool, list[int]] = {False: [], True: []}
    ndocs = {False: 0, True: 0}
    nbytes = 0
    for text in docs:
        side = is_validation(text, _WORKER["val"], _WORKER["seed"])
        ids = tok.encode(text)
        out[side].extend(ids)
        out[side].append(eos)
        ndocs[side] += 1
        nbytes += len(text.encode("utf-8"))
    arrays = []
    for side in (False, True):
        a = np.asarray(out[side], dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= np.iinfo(dtype).max + 1):
            raise TokenizerError(f"the tokenizer produced id {int(a.max())}, which does not fit {dtype.name}")
        arrays.append(a.astype(dtype))
    return arrays[0], ndocs[False], arrays[1], ndocs[True], nbytes


def _chunks(docs: Iterable[str], chunk_bytes: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for d in docs:
        chunk.append(d)
        size += len(d)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encoded_chunks(chunks: Iterator[list[str]], tok: Tokenizer | str, init_args: tuple, workers: int) -> Iterator[tuple]:
    """Encode chunks in order; with workers > 1 a bounded window of chunks is in flight."""
    if workers <= 1:
        _init_worker(tok, *init_args)
        try:
            for c in chunks:
                yield _encode_chunk(c)
        finally:
            _WORKER.clear()
        return
    import multiprocessing as mp

    with mp.get_context().Pool(workers, initializer=_init_worker, initargs=(tok, *init_args)) as pool:
        pending: collections.deque = collections.deque()
        for c in chunks:
            pending.append(pool.apply_async(_encode_chunk, (c,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _SplitWriter:
    """Appends token arrays to ``{split}_NNNNN.bin`` files of at most `shard_tokens` ids."""

    def __init__(self, directory: Path, split: str, shard_tokens: int) -> None:
        self.dir, self.split, self.limit = directory, split, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self._f = None

    def write(self, ids: np.ndarray, ndocs: int) -> None:
        self.documents += ndocs
        while ids.size:
            if self._f is None or self.shards[-1]["tokens"] >= self.limit:
                self._open()
            room = self.limit - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            part.tofile(self._f)
            self.shards[-1]["tokens"] += int(part.size)

    def _open(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._f = open(self.dir / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def summary(self) -> dict[str, Any]:
        return {"tokens": sum(s["tokens"] for s in self.shards), "documents": self.documents, "shards": self.shards}


def prepare_shards(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    tokenizer: Tokenizer | str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ShardConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool | str = True,
) -> dict[str, Any]:
    """Tokenize a corpus into a shard directory; returns the index written to ``index.json``.

    `tokenizer` is a Tokenizer (pickled to the workers) or a tokenizer file (each worker
    loads it). Output is identical for any number of workers.
    """
    from lmkit.progress import Progress

    config = config or ShardConfig()
    out = Path(out_dir)
    recover_directory(out)
    if out.exists() and not overwrite:
        raise CorpusError(f"{out} already exists; choose another directory or pass overwrite=True (--overwrite)")
    files = corpus_files(paths)
    tok = _as_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    eos_id = resolve_eos_id(tok, config.eos_token, config.eos_id)
    worker_tok = tok if isinstance(tokenizer, Tokenizer) else str(tokenizer)  # workers load a path

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    writers = {s: _SplitWriter(tmp, s, config.shard_tokens) for s in SPLITS}
    try:
        total = sum(f.stat().st_size for f in files)
        bar = Progress(total=total, unit="B", unit_scale=True, desc="tokenizing", progress=progress)
        with bar:
            docs = (d for f in files for d in read_documents(f, config.split_by))
            init = (eos_id, dtype.name, config.val_fraction, config.seed)
            for tr, ntr, va, nva, nbytes in _encoded_chunks(_chunks(docs, config.chunk_bytes), worker_tok, init, config.workers):
                writers["train"].write(tr, ntr)
                writers["val"].write(va, nva)
                bar.update(nbytes)
            bar.update(total - bar.n)
        for w in writers.values():
            w.close()
        splits = {s: w.summary() for s, w in writers.items()}
        if splits["train"]["documents"] + splits["val"]["documents"] == 0:
            raise CorpusError(
                f"the corpus has no documents (every file is empty or blank): {[str(f) for f in files]}"
            )
        index = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype.name,
            "vocab_size": tok.vocab_size,
            "eos_id": eos_id,
            "tokenizer": type(tok).__name__,
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "config": {k: v for k, v in asdict(config).items() if k not in ("workers", "chunk_bytes")},
            "sources": [{"path": str(f), "bytes": f.stat().st_size} for f in files],
            "splits": splits,
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        write_checksums(tmp)
        replace_directory(tmp, out)  # overwrite: one atomic swap, then the old directory is dropped
        return index
    finally:
        for w in writers.values():
            w.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---- reading shards ---------------------------------------------------------------------------
def read_index(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``index.json`` of a shard directory (checked for format)."""
    recover_directory(directory)
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise CorpusError(f"{directory} is not a shard directory (no {INDEX_FILE}); create one with `lmkit data prepare`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path} is corrupt ({exc}); re-run `lmkit data prepare`") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise CorpusError(f"{path} is not a {FORMAT} v{VERSION} index")
    return index


class TokenShards:
    """One split of a shard directory as a single read-only token stream (memmap-backed).

    ``stream[a:b]`` returns the ids a..b-1 as a numpy array even across shard files;
    `documents()` yields each document (ending with its eos id).
    """

    def __init__(self, directory: str | os.PathLike, split: str = "train") -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        self.directory = Path(directory)
        self.split = split
        self.index = read_index(directory)
        self.dtype = np.dtype(self.index["dtype"])
        self.vocab_size: int = self.index["vocab_size"]
        self.eos_id: int = self.index["eos_id"]
        info = self.index["splits"][split]
        self.num_documents: int = info["documents"]
        self._arrays: list[np.ndarray] = []
        for shard in info["shards"]:
            path = self.directory / shard["file"]
            n = shard["tokens"]
            expect = n * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expect:
                got = path.stat().st_size if path.is_file() else "missing"
                raise CorpusError(
                    f"shard {path} is {got} bytes but the index says {expect}; the directory is "
                    "damaged: re-run `lmkit data prepare`"
                )
            if n:
                self._arrays.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(n,)))
        sizes = [a.size for a in self._arrays]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        if len(self) == 0:
            raise CorpusError(
                f"the {split!r} split of {directory} is empty"
                + (" (prepare with val_fraction > 0 / --val-fraction)" if split == "val" else "")
            )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Ids [start, start+length) as a fresh numpy array of the shard dtype."""
        n = len(self)
        if start < 0 or length < 0 or start + length > n:
            raise IndexError(f"range [{start}, {start + length}) outside a stream of {n} tokens")
        out = np.empty(length, dtype=self.dtype)
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        done = 0
        while done < length:
            a = self._arrays[k]
            lo = start + done - int(self._starts[k])
            take = min(length - done, a.size - lo)
            out[done : done + take] = a[lo : lo + take]
            done += take
            k += 1
        return out

    def __getitem__(self, key: int | slice) -> np.ndarray | int:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("TokenShards slices must have step 1")
            return self.read(start, max(0, stop - start))
        i = key + len(self) if key < 0 else key
        return int(self.read(i, 1)[0])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.read(0, len(self))
        return arr if dtype is None else arr.astype(dtype)

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's ids (its eos id last), in order; one shard in memory at a time."""
        carry: list[np.ndarray] = []  # a document running over a shard boundary
        for a in self._arrays:
            begin = 0
            for e in np.flatnonzero(a == self.eos_id) + 1:
                piece = np.asarray(a[begin:e])
                if carry:
                    piece, carry = np.concatenate([*carry, piece]), []
                yield piece
                begin = int(e)
            if begin < a.size:
                carry.append(np.asarray(a[begin:]))
        if carry:
            yield np.concatenate(carry)

    def __repr__(self) -> str:
        return f"TokenShards({str(self.directory)!r}, split={self.split!r}, tokens={len(self)}, dtype={self.dtype.name})"
