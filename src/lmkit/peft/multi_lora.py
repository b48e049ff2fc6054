"""Multi-LoRA: one base model, many LoRA adapters, a different one per batch row (Punica, S-LoRA).

A server that keeps one merged copy of the model per adapter pays the whole model per
adapter and cannot batch requests for different adapters. Here every adapted linear layer
keeps its base weight once and holds N low-rank pairs beside it:

    y_i = W x_i + s_a B_a A_a x_i        a = the adapter of row i (-1: the base model alone)

`MultiLoraLinear.forward` computes W x for the whole batch in one GEMM (the expensive part,
shared by all rows). When every row uses one adapter, the update is x A^T B^T (two small
matmuls). When rows differ, the adapters present are laid side by side, A_cat = [A_1; A_2; ..]
(sum r rows) and B_cat = [B_1, B_2, ..], and

    delta = ((x A_cat^T) * M) B_cat^T       M[i, cols of adapter a_i] = 1, else 0

two matmuls and one multiply for any number of adapters; rows on the base model get a zero
mask. At decode batch sizes this beats the alternatives on a CPU (bench/bench_multi_lora.py
prints all three): grouping the rows per adapter (index_select, two matmuls, index_add, per
adapter) pays the per-op overhead k times, and the op overhead is what a decode step of a few
rows costs; a padded bmm over weights gathered per row ([B, in, r] and [B, r, out]) copies
r (in + out) weights for every *row*. The stacked form wastes the masked products, k times the
adapter FLOPs, which only matters when there are many token rows: above GROUPED_ABOVE token
rows (a prefill) the rows are grouped per adapter instead, so each row is multiplied by its own
adapter only. A_cat / B_cat are cached per set of adapters; masks and row indices are made once
per forward and shared by every layer. The scaling alpha / r is folded into B once, at load time.

Which adapter each row uses reaches the layers through `adapter_rows(ids)`, a context
manager over a `ContextVar`: whoever calls the model (the serving engine, a test) wraps the
forward in it. Each thread has its own value, so the engine's decode thread and an HTTP
thread never see each other's rows. Outside the context, or for rows with id -1, the layers
compute the base model exactly.

`MultiLora` owns the adapters of one model: `load(name, folder)` reads an lmkit or PEFT
adapter folder (`peft_format.read_lora_adapter`: name mapping, fused layers), wraps the
target layers (the same target-matching rule as `lora.py`) and adds the pair to each;
`remove(name)` drops it. Adapters may differ in rank, alpha and targets. Layers hold their
adapters in a dict that is replaced, never mutated, so a forward running on another thread
reads one consistent set while an adapter is added or removed.

Not covered: trained biases and modules_to_save (they are not low-rank; a folder with them
is refused), dropout (inference only), and the fused decode step (`infer/fused_step.py`
refuses adapted layers, so models with `MultiLoraLinear` decode through `model.forward`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from lmkit.errors import CheckpointError, ConfigError
from lmkit.models.module_tree import replace_module
from lmkit.peft.lora import LoraConfig, LoraLinear, _is_linear, _matches

BASE = -1  # the adapter id of a row that runs the base model alone
GROUPED_ABOVE = 64  # token rows (batch x length) above which mixed rows are grouped per adapter (prefill)


@dataclass(frozen=True)
class AdapterRows:
    """The adapter id of every batch row, the rows per adapter ((id, count), ...), and the row masks
    of the stacked form, made once per forward for all layers of one layout."""

    ids: tuple[int, ...]
    groups: tuple[tuple[int, int], ...]
    device: torch.device | str | None = None
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # masks and row indices

    def mask(self, layout: tuple[tuple[int, int], ...], dtype: torch.dtype, ndim: int) -> torch.Tensor:
        """[B, 1.., sum r] with ones where row i's adapter has its columns in the stacked A (layout: (id, r)...)."""
        key = (layout, dtype, ndim)
        m = self.cache.get(key)
        if m is None:
            cols, start = {}, 0
            for a, r in layout:
                cols[a] = (start, start + r)
                start += r
            m = torch.zeros(len(self.ids), start, dtype=dtype)
            for i, a in enumerate(self.ids):
                if a in cols:
                    m[i, cols[a][0]:cols[a][1]] = 1
            m = m.view(len(self.ids), *([1] * (ndim - 2)), start).to(self.device)
            self.cache[key] = m
        return m

    def index(self, adapter_id: int) -> torch.Tensor:
        """The rows of adapter `adapter_id` as an index tensor (made once per forward)."""
        key = ("index", adapter_id)
        ix = self.cache.get(key)
        if ix is None:
            ix = torch.tensor([i for i, a in enumerate(self.ids) if a == adapter_id], dtype=torch.long,
                              device=self.device)
            self.cache[key] = ix
        return ix


_ROWS: contextvars.ContextVar[AdapterRows | None] = contextvars.ContextVar("lmkit_adapter_rows", default=None)


def group_rows(ids: Sequence[int], device: torch.device | str | None = None) -> AdapterRows:
    """Group batch rows by adapter id (rows with id -1 run the base model)."""
    ids = tuple(int(i) for i in ids)
    groups = tuple((a, ids.count(a)) for a in sorted(set(ids) - {BASE}))
    return AdapterRows(ids, groups, device)


@contextlib.contextmanager
def adapter_rows(ids: Sequence[int], device: torch.device | str | None = None) -> Iterator[AdapterRows]:
    """Inside the block, row i of every `MultiLoraLinear` input uses adapter ids[i] (-1: none)."""
    token = _ROWS.set(group_rows(ids, device))
    try:
        yield _ROWS.get()
    finally:
        _ROWS.reset(token)


@dataclass(frozen=True)
class LowRank:
    """One adapter of one layer, laid out for x @ a_t @ b_t: a_t = A^T [in, r], b_t = (s B)^T [r, out]."""

    a_t: torch.Tensor
    b_t: torch.Tensor

    @property
    def r(self) -> int:
        return self.a_t.shape[1]


class MultiLoraLinear(nn.Module):
    """A frozen linear layer plus any number of LoRA adapters, each row of a batch using its own."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not (hasattr(base_layer, "in_features") and hasattr(base_layer, "out_features")):
            raise ConfigError(f"multi-LoRA adapts linear layers only; {type(base_layer).__name__} has no "
                              "in_features/out_features")
        self.base_layer = base_layer
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        self.adapters: dict[int, LowRank] = {}  # replaced on every change, never mutated (see module doc)
        self._stacks: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # ids -> (A_cat, B_cat)

    def _place(self) -> tuple[torch.dtype, torch.device]:
        w = getattr(self.base_layer, "weight", None)
        if isinstance(w, torch.Tensor) and w.is_floating_point():
            return w.dtype, w.device
        p = next(iter(list(self.base_layer.parameters()) + list(self.base_layer.buffers())), None)
        return getattr(self.base_layer, "compute_dtype", torch.float32), (p.device if p is not None else "cpu")

    def add(self, adapter_id: int, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        """Add adapter `adapter_id`: A [r, in], B [out, r], update = scaling * B A."""
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != self.in_features or tuple(b.shape) != (self.out_features, r):
            raise CheckpointError(f"LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit a "
                                  f"{self.out_features}x{self.in_features} layer (A [r, in], B [out, r])")
        dtype, device = self._place()
        low = LowRank(a.detach().float().t().contiguous().to(device, dtype),
                      (b.detach().float() * scaling).t().contiguous().to(device, dtype))
        self.adapters = {**self.adapters, int(adapter_id): low}

    def remove(self, adapter_id: int) -> None:
        self.adapters = {k: v for k, v in self.adapters.items() if k != adapter_id}
        self._stacks = {k: v for k, v in self._stacks.items() if adapter_id not in k}

    def _stack(self, ids: tuple[int, ...], adapters: dict[int, LowRank]) -> tuple[torch.Tensor, torch.Tensor]:
        """A^T of adapters `ids` side by side [in, sum r] and their (s B)^T stacked [sum r, out] (cached:
        an id's weights never change, ids are never reused)."""
        hit = self._stacks.get(ids)
        if hit is None:
            hit = (torch.cat([adapters[a].a_t for a in ids], 1), torch.cat([adapters[a].b_t for a in ids], 0))
            stacks = self._stacks if len(self._stacks) < 32 else {}
            self._stacks = {**stacks, ids: hit}
        return hit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        rows, adapters = _ROWS.get(), self.adapters  # one consistent snapshot for this call
        if rows is None or not adapters or not rows.groups:
            return out
        if x.shape[0] != len(rows.ids):
            raise ConfigError(f"adapter_rows names {len(rows.ids)} rows, but the layer got a batch of {x.shape[0]}")
        present = tuple(a for a, _ in rows.groups if a in adapters)  # absent: other targets, or just removed
        if not present:
            return out
        if len(present) == 1 and rows.groups[0][1] == len(rows.ids):  # every row uses the same adapter
            low = adapters[present[0]]
            a_t, b_t, mask = low.a_t, low.b_t, None
        elif x.numel() // x.shape[-1] > GROUPED_ABOVE:  # a long prefill: FLOPs, not op count, dominate
            return self._grouped(x, out, rows, present, adapters)
        else:  # rows differ: all adapters side by side, each row masked to its own columns
            a_t, b_t = self._stack(present, adapters)
            mask = rows.mask(tuple((a, adapters[a].r) for a in present), a_t.dtype, x.dim())
        h = x.to(a_t.dtype) @ a_t
        if mask is not None:
            h = h * mask
        delta = (h @ b_t).to(out.dtype)
        if torch.is_grad_enabled() and (out.requires_grad or x.requires_grad):
            return out + delta
        return out.add_(delta)

    def _grouped(self, x: torch.Tensor, out: torch.Tensor, rows: AdapterRows, present: tuple[int, ...],
                 adapters: dict[int, LowRank]) -> torch.Tensor:
        """Each adapter on its own rows only: index_select, two matmuls, index_add per adapter."""
        in_place = not (torch.is_grad_enabled() and (out.requires_grad or x.requires_grad))
        for a in present:
            low, index = adapters[a], rows.index(a)
            delta = ((x.index_select(0, index).to(low.a_t.dtype) @ low.a_t) @ low.b_t).to(out.dtype)
            out = out.index_add_(0, index, delta) if in_place else out.index_add(0, index, delta)
        return out

    def extra_repr(self) -> str:
        ranks = {k: v.r for k, v in self.adapters.items()}
        return f"in={self.in_features}, out={self.out_features}, adapter ranks={ranks}"


def _target_names(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Dotted names of the layers `targets` selects (lora.py's rule), wrapped already or not."""
    found = []
    for name, m in model.named_modules():
        if ".base_layer" in name:
            continue
        if isinstance(m, LoraLinear):
            raise ConfigError(f"{name} carries a single-adapter LoRA (LoraLinear); merge or unload it before "
                              "serving adapters per request")
        if (isinstance(m, MultiLoraLinear) or (_is_linear(m) and name)) and _matches(name, targets):
            found.append(name)
    return found


def wrap_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Wrap the linear layers `targets` names (q_proj, ..., all-linear) in `MultiLoraLinear`
    (in place; already wrapped layers stay). Returns their dotted names."""
    names = _target_names(model, tuple(targets))
    if not names:
        raise ConfigError(f"target_modules {list(targets)} match no linear layer of {type(model).__name__}")
    for name in names:
        m = model.get_submodule(name)
        if not isinstance(m, MultiLoraLinear):
            replace_module(model, name, MultiLoraLinear(m))
    return names


def multi_lora_layers(model: nn.Module) -> Iterator[tuple[str, MultiLoraLinear]]:
    for name, m in model.named_modules():
        if isinstance(m, MultiLoraLinear):
            yield name, m


def split_pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (A, B)} from adapter tensors keyed as in `lora_state_dict`; anything that is
    not a LoRA pair (trained biases, modules_to_save) is a CheckpointError."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for k, v in state.items():
        for suffix, part in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if k.endswith(suffix):
                pairs.setdefault(k[: -len(suffix)], {})[part] = v
                break
        else:
            other.append(k)
    if other:
        raise CheckpointError(f"multi-LoRA serving takes low-rank pairs only; the adapter also trains {other[:4]} "
                              "(biases or modules_to_save): merge it into the base instead (lmkit merge)")
    half = sorted(m for m, p in pairs.items() if len(p) != 2)
    if half:
        raise CheckpointError(f"the adapter has lora_A without lora_B (or the reverse) for {half[:4]}")
    return {m: (p["A"], p["B"]) for m, p in pairs.items()}


class MultiLora:
    """The LoRA adapters of one model, served per row: load, remove, and the id of each name.

    multi = MultiLora(model); multi.load("sql", "adapters/sql"); multi.load("chat", "adapters/chat")
    with adapter_rows([multi.id("sql"), -1, multi.id("chat")]):
        logits = model(ids).logits          # row 0: sql, row 1: base, row 2: chat
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.configs: dict[str, LoraConfig] = {}
        self.paths: dict[str, str | None] = {}
        self._ids: dict[str, int] = {}
        self._next = 0  # ids are never reused, so a late row cannot pick up a newer adapter's weights
        self._lock = threading.RLock()

    @property
    def names(self) -> list[str]:
        return list(self._ids)

    def __contains__(self, name: str) -> bool:
        return name in self._ids

    def id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise ConfigError(f"no LoRA adapter named {name!r}; loaded: {sorted(self._ids) or 'none'}") from None

    def load(self, name: str, directory: str | os.PathLike) -> int:
        """Read the LoRA adapter folder `directory` (lmkit's or PEFT's) as adapter `name`; returns its id."""
        from lmkit.hub.adapter_folder import adapter_kind
        from lmkit.peft.peft_format import read_lora_adapter

        directory = Path(directory)
        self._check_name(name)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no such adapter directory")
        kind = adapter_kind(directory)
        if kind != "lora":
            why = f"; it holds a {kind} adapter, which cannot be served per request" if kind else ""
            raise CheckpointError(f"{directory}: not a LoRA adapter folder (no adapter_config.json){why}")
        config, state = read_lora_adapter(self.model, directory)  # the slow part, outside the lock
        try:
            return self.add(name, config, state, path=str(directory))
        except CheckpointError as exc:
            raise CheckpointError(f"{directory}: {exc}") from exc

    def add(self, name: str, config: LoraConfig, state: dict[str, torch.Tensor], path: str | None = None) -> int:
        """Add adapter `name` from tensors keyed as `lora_state_dict` writes them; returns its id.
        Every shape is checked before any layer changes."""
        pairs = split_pairs(state)
        with self._lock:
            self._check_name(name)
            try:
                targets = _target_names(self.model, config.target_modules)
            except ConfigError as exc:
                raise CheckpointError(str(exc)) from exc
            unknown = sorted(set(pairs) - set(targets))
            missing = sorted(set(targets) - set(pairs))
            if unknown or missing:
                raise CheckpointError(
                    "the adapter does not fit this model (another architecture or size?): "
                    + "; ".join(p for p in (f"tensors for layers it has no place for: {unknown[:4]}" if unknown else "",
                                            f"no tensors for target layers {missing[:4]}" if missing else "") if p))
            for module, (a, b) in pairs.items():
                base = self.model.get_submodule(module)
                n_in, n_out = int(base.in_features), int(base.out_features)
                if a.dim() != 2 or b.dim() != 2 or a.shape[1] != n_in or tuple(b.shape) != (n_out, a.shape[0]):
                    raise CheckpointError(f"{module}: LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit "
                                          f"its {n_out}x{n_in} weight (another model size?)")
            aid = self._next
            self._next += 1
            wrap_targets(self.model, list(pairs))
            for module, (a, b) in pairs.items():
                r = a.shape[0]
                scaling = config.alpha / (r ** 0.5) if config.use_rslora else config.alpha / r
                self.model.get_submodule(module).add(aid, a, b, scaling)
            self._ids[name] = aid
            self.configs[name] = config
            self.paths[name] = path
            return aid

    def remove(self, name: str) -> None:
        """Drop adapter `name` from every layer (rows still naming its id compute the base model)."""
        with self._lock:
            aid = self.id(name)
            for _, layer in multi_lora_layers(self.model):
                layer.remove(aid)
            del self._ids[name], self.configs[name], self.paths[name]

    def rows(self, ids: Sequence[int], device: torch.device | str | None = None):
        """`adapter_rows(ids)`: the context in which a forward uses adapter ids[i] for row i."""
        return adapter_rows(ids, device)

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in ":/ \t\n"):
            raise ConfigError(f"adapter name {name!r}: must be non-empty, without ':', '/' or spaces")
        if name in self._ids:
            raise ConfigError(f"an adapter named {name!r} is already loaded; remove it first or pick another name")
