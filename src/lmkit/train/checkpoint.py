"""Atomic training checkpoints: a crash while saving never damages the previous checkpoint.

Layout of ``out_dir/checkpoint-STEP/``::

    model.safetensors       weights (tied tensors stored once; aliases in the metadata)
    optimizer.pt            optimizer state_dict  (torch.save; read back with weights_only=True)
    scheduler.pt            lr-scheduler state_dict
    rng_state_rank{R}.pt    python / numpy / torch / cuda RNG states of rank R
    trainer_state.json      step, configs, parameter names and shapes, data position, metrics

How atomicity is obtained: everything is written into ``out_dir/.tmp-checkpoint-STEP``,
each file is fsync'ed, the directory is renamed to ``checkpoint-STEP`` (a rename is atomic
on POSIX file systems), and only then is the small ``latest`` pointer file replaced
(write to a temp file, then rename). A crash at any point leaves either the old state
or the new one: a half-written directory keeps its ``.tmp-`` name and is ignored.

Only our own files are unpickled, and only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmkit.atomic import atomic_write_text
from lmkit.checksums import write_checksums
from lmkit.errors import CheckpointError

LATEST = "latest"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
_DIR_RE = re.compile(r"^checkpoint-(\d+)$")


# ---- RNG ---------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training step may draw from."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- writing -----------------------------------------------------------------------------
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _dedup_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory (tied embeddings): keep one, alias the rest."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        t = t.detach()
        key = (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = t.contiguous().cpu()
    return kept, aliases


class CheckpointWriter:
    """Collects the files of one checkpoint in a temp directory; `commit` publishes them."""

    def __init__(self, out_dir: str | os.PathLike, step: int) -> None:
        self.out_dir = Path(out_dir)
        self.step = step
        self.final = self.out_dir / f"checkpoint-{step}"
        self.tmp = self.out_dir / f".tmp-checkpoint-{step}"

    def prepare(self) -> "CheckpointWriter":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():  # left over from a crash: never published, safe to remove
            shutil.rmtree(self.tmp)
        for doomed in self.out_dir.glob(".deleting-checkpoint-*"):  # a prune a crash interrupted
            shutil.rmtree(doomed, ignore_errors=True)
        self.tmp.mkdir()
        return self

    def write_model(self, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        from safetensors.torch import save_file

        tensors, aliases = _dedup_shared(state)
        meta = dict(metadata or {})
        meta["lmkit_aliases"] = json.dumps(aliases)
        path = self.tmp / MODEL_FILE
        save_file(tensors, str(path), metadata=meta)
        _fsync_file(path)

    def write_torch(self, name: str, obj: Any) -> None:
        path = self.tmp / name
        torch.save(obj, path)
        _fsync_file(path)

    def write_json(self, name: str, obj: Any) -> None:
        path = self.tmp / name
        path.write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")
        _fsync_file(path)

    def commit(self, keep: int = 0) -> Path:
        """Rename the temp dir into place, then move the `latest` pointer; prune old ones."""
        write_checksums(self.tmp)
        _fsync_dir(self.tmp)
        old = None
        if self.final.exists():  # saving the same step twice: swap, then delete the old copy
            old = self.out_dir / f".old-checkpoint-{self.step}"
            if old.exists():
                shutil.rmtree(old)
            os.rename(self.final, old)
        os.rename(self.tmp, self.final)
        _fsync_dir(self.out_dir)
        atomic_write_text(self.out_dir / LATEST, self.final.name + "\n")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if keep > 0:
            for path in list_checkpoints(self.out_dir)[:-keep]:
                if path != self.final:  # unpublish first (one rename), so a kill never leaves half a checkpoint
                    doomed = self.out_dir / f".deleting-{path.name}"
                    os.rename(path, doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
        return self.final


# ---- reading -----------------------------------------------------------------------------
def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Published checkpoint directories, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        m = _DIR_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by `out_dir/latest`, else the newest published one, else None."""
    out_dir = Path(out_dir)
    pointer = out_dir / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if _DIR_RE.match(name) and (out_dir / name / STATE_FILE).is_file():
            return out_dir / name
    ckpts = [p for p in list_checkpoints(out_dir) if (p / STATE_FILE).is_file()]
    return ckpts[-1] if ckpts else None


def resolve_checkpoint(path_or_dir: str | os.PathLike) -> Path:
    """Accept a checkpoint dir or a run dir holding checkpoints; raise if there is none."""
    p = Path(path_or_dir)
    if (p / STATE_FILE).is_file():
        return p
    found = latest_checkpoint(p)
    if found is None:
        raise CheckpointError(
            f"no checkpoint found in {p} (expected {p}/checkpoint-STEP/ with {STATE_FILE}); "
            "start without resume or point to a checkpoint directory"
        )
    return found


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt / STATE_FILE} is unreadable or corrupt ({exc})") from exc


def read_model_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """Weights as a state dict, tied aliases restored (they share the kept tensor)."""
    from safetensors import SafetensorError, safe_open

    path = ckpt / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    for alias, target in json.loads(meta.get("lmkit_aliases", "{}")).items():
        state[alias] = state[target]
    return state


def read_torch(ckpt: Path, name: str) -> Any:
    path = ckpt / name
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path} could not be read ({type(exc).__name__}: {exc})") from exc
