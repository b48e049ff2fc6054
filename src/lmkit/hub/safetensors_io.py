"""Read and write state dicts as safetensors, single-file or sharded with Hugging Face's index.

safetensors is a flat format: 8 bytes little-endian header length N, N bytes of JSON
({name: {dtype, shape, data_offsets}}), then raw tensor bytes. Loading it runs no code,
unlike pickle (`pytorch_model.bin`), which can execute anything on load — so lmkit reads
only safetensors and refuses .bin files with a message saying how to convert them.

lmkit reads the format itself (`MappedWeights`): each file is memory-mapped and every tensor
is a view of the mapping, so nothing is read until it is used and a loader can copy (and
cast) tensor after tensor, dropping each one's pages as it goes. Writing uses the
`safetensors` package.

Sharded checkpoints: `model.safetensors.index.json` = {"metadata": {"total_size": bytes},
"weight_map": {tensor name: shard file}} with shards `model-00001-of-0000K.safetensors`.

Writes are atomic: everything goes into a temporary directory beside the target, files
already in the target that this write does not replace (tokenizer files, ...) are linked
in, and the temporary directory is then renamed over the target. An interruption leaves
the previous checkpoint untouched and no half-written one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import torch

from lmkit.atomic import recover_directory, replace_directory
from lmkit.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
WEIGHT_PATTERNS = (
    SINGLE_FILE,
    INDEX_FILE,
    "model-*-of-*.safetensors",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


# ---- reading ----------------------------------------------------------------------------
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


def _read_header(path: Path) -> tuple[dict, int]:
    """(header, byte offset of the data) of a safetensors file; CheckpointError if corrupt."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short to be a safetensors file (corrupt or truncated)")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise CheckpointError(
                f"{path}: header says {n} bytes of metadata but the file holds {size - 8}; "
                "the file is corrupt or truncated — download or save it again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    data_len = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise CheckpointError(f"{path}: entry {name!r} of the safetensors header is malformed") from exc
    if end > data_len:
        raise CheckpointError(
            f"{path}: tensors need {end} bytes of data but the file holds {data_len}; "
            "the file is truncated — download or save it again"
        )
    return header, 8 + n


def read_header(path: str | os.PathLike) -> dict:
    """Parse and validate a safetensors header without loading tensors (CheckpointError if corrupt)."""
    return _read_header(Path(path))[0]


class MappedWeights:
    """The tensors of safetensors file(s), memory-mapped: a tensor's bytes are read from disk
    only when it is used, and `release` hands them back once they have been copied.

    Each file is one private (copy-on-write) mapping; every tensor is a view of it. Pages a
    process has read count towards its RSS while mapped, so a loader that copies tensor after
    tensor calls `release(t)` after each copy: the pages are dropped from this process (the
    kernel's page cache keeps them; touching `t` again re-reads them, so releasing is always
    safe). The mappings close when the last view is gone.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._maps: list[tuple[int, int, mmap.mmap]] = []  # (address, length, mapping)

    def add_file(self, path: Path) -> dict[str, torch.Tensor]:
        """Map `path` and add its tensors; returns them (CheckpointError if corrupt)."""
        header, start = _read_header(path)
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        whole = torch.frombuffer(mm, dtype=torch.uint8)
        self._maps.append((whole.data_ptr(), len(mm), mm))
        out: dict[str, torch.Tensor] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            out[name] = self._view(path, name, info, whole, start)
        dup = sorted(set(out) & set(self.tensors))
        if dup:
            raise CheckpointError(f"{path}: tensors also found in another shard: {dup[:5]}")
        self.tensors.update(out)
        return out

    @staticmethod
    def _view(path: Path, name: str, info: dict, whole: torch.Tensor, start: int) -> torch.Tensor:
        try:
            dtype = DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: entry {name!r} of the safetensors header is malformed "
                                  f"(dtype {info.get('dtype') if isinstance(info, dict) else None!r})") from exc
        size = dtype.itemsize
        numel = 1
        for d in shape:
            numel *= d
        if min(shape, default=0) < 0 or begin < 0 or end - begin != numel * size:
            raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape} "
                                  f"of {info['dtype']}; the file is corrupt")
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        raw = whole[start + begin: start + end]
        if (start + begin) % size:  # misaligned for its type: copy (only odd hand-made files)
            raw = raw.clone()
        return raw.view(dtype).reshape(shape)

    def release(self, t: torch.Tensor) -> None:
        """Drop the pages under `t` (a view of a mapping, possibly transposed or sliced) from
        this process; a tensor that is not a view of these mappings is left alone."""
        if not t.numel() or not hasattr(mmap, "MADV_DONTNEED"):  # (no madvise: pages stay until unmapped)
            return
        ptr = t.data_ptr()
        extent = (sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + 1) * t.element_size()
        for base, length, mm in self._maps:
            if base <= ptr < base + length:
                page = mmap.PAGESIZE
                lo = (ptr - base) // page * page
                hi = min(length, ptr - base + extent)
                if hi > lo:
                    mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
                return


def _map_file(weights: MappedWeights, path: Path) -> None:
    try:
        weights.add_file(path)
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc


def map_state_dict(directory: str | os.PathLike) -> MappedWeights:
    """The tensors of a checkpoint directory (model.safetensors or an index + shards),
    memory-mapped: nothing is read yet. `read_state_dict` is the copying version."""
    directory = Path(directory)
    recover_directory(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    single = directory / SINGLE_FILE
    index = directory / INDEX_FILE
    weights = MappedWeights()
    if single.exists():
        _map_file(weights, single)
        return weights
    if index.exists():
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
            weight_map = meta["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            raise CheckpointError(f"{index}: shard file(s) missing from {directory}: {', '.join(missing)}")
        for shard in shards:
            _map_file(weights, directory / shard)
        absent = [k for k, s in weight_map.items() if k not in weights.tensors]
        if absent:
            raise CheckpointError(
                f"{index}: {len(absent)} tensor(s) listed in the index are in no shard: "
                + ", ".join(f"{k} (expected in {weight_map[k]})" for k in absent[:10])
            )
        return weights
    if list(directory.glob("*.bin")) or list(directory.glob("*.pt")) or list(directory.glob("*.pth")):
        raise CheckpointError(
            f"{directory}: only pickle weights (.bin/.pt) found. lmkit reads only safetensors, because "
            "unpickling a file can run arbitrary code; convert it once in a trusted environment "
            "(e.g. transformers' model.save_pretrained(dir, safe_serialization=True))"
        )
    raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} found")


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, each copied into its own memory (the files may
    be deleted or rewritten afterwards). Peak memory: the tensors plus one of them."""
    weights = map_state_dict(directory)
    out: dict[str, torch.Tensor] = {}
    for name in list(weights.tensors):
        t = weights.tensors.pop(name)
        out[name] = t.clone()
        weights.release(t)
    return out


# ---- writing ----------------------------------------------------------------------------
def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def staged_directory(directory: str | os.PathLike, replaces: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it becomes `directory`.

    Files of an existing `directory` whose names match none of the `replaces` glob patterns
    (and that the new contents do not provide) are carried over.
    """
    directory = Path(directory)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    recover_directory(directory)  # a crash between the two renames of an earlier save
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
    patterns = tuple(replaces)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # mkstemp-style writers create 0600 files; use the usual mode
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if directory.exists():
            os.chmod(tmp, directory.stat().st_mode & 0o7777)
            for f in directory.iterdir():
                if (tmp / f.name).exists() or any(fnmatch.fnmatch(f.name, p) for p in patterns):
                    continue
                if f.is_dir() and not f.is_symlink():
                    shutil.copytree(f, tmp / f.name, symlinks=True, copy_function=_link_or_copy)
                elif f.is_symlink():
                    os.symlink(os.readlink(f), tmp / f.name)
                else:
                    _link_or_copy(str(f), str(tmp / f.name))
            replace_directory(tmp, directory)
        else:
            os.chmod(tmp, 0o777 & ~umask)
            os.rename(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights, slices of one buffer): clone those."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        shared = ptr is not None and ptr in seen
        if shared or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()
        if ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def _shards(state: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if max_shard_bytes is None:
        return [state]
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes={max_shard_bytes} must be positive")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


def write_weights(
    state: dict[str, torch.Tensor],
    directory: str | os.PathLike,
    max_shard_bytes: int | None = None,
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """Write safetensors file(s) into an existing (staging) directory; returns the file names."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = _unshare(state)
    meta = {"format": "pt", **(metadata or {})}
    shards = _shards(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata=meta)
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return names + [INDEX_FILE]


def write_state_dict(
    state: dict[str, torch.Tensor], directory: str | os.PathLike, max_shard_bytes: int | None = None
) -> None:
    """Atomically (re)place the weights of `directory`; other files there (config, tokenizer) stay."""
    with staged_directory(directory, replaces=WEIGHT_PATTERNS) as tmp:
        write_weights(state, tmp, max_shard_bytes)
