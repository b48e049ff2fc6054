"""LoRA: low-rank adaptation (Hu et al. 2021), with several named adapters, merge/unmerge, rsLoRA.

A frozen linear map W (out x in) gets a trainable low-rank update:

    h = W x + (alpha / r) * B A dropout(x)          A: r x in,  B: out x r
    rsLoRA (Kalajdzievski 2023): scaling = alpha / sqrt(r) instead of alpha / r

A is initialised like PEFT (kaiming-uniform, a = sqrt(5)) and B with zeros, so training
starts exactly at the base model. Only r (in + out) parameters per adapted matrix train;
the base weights never change (their `requires_grad` is turned off).

Merging folds the update into the weight, W <- W + (alpha / r) B A, so inference costs
nothing extra; unmerging subtracts it again (exact up to float rounding, ~1e-7).

Names follow PEFT so its files map 1:1 (see peft_format.py):
    <module>.base_layer.*                   the wrapped frozen layer
    <module>.lora_A.<adapter>.weight        [r, in]
    <module>.lora_B.<adapter>.weight        [out, r]
    <module>.modules_to_save.<adapter>.*    a trainable copy of a whole module (e.g. lm_head)
    <module>.original_module.*              the frozen original of that module

Several adapters can live in one model (`inject_lora` again with another name); exactly one
is active at a time (`set_adapter`), and `disable_adapters()` runs the bare base model.
Target modules are named by lmkit's parameter names (q_proj, k_proj, v_proj, o_proj,
gate_proj, up_proj, down_proj, lm_head, ...): a module matches a target if its dotted name
equals it or ends with "." + target. "all-linear" targets every Linear except lm_head.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import dataclass_from_dict
from lmkit.models.module_tree import replace_module

BIAS_MODES = ("none", "all", "lora_only")


@dataclass
class LoraConfig:
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    use_rslora: bool = False
    bias: str = "none"  # none | all (every bias trains) | lora_only (biases of adapted layers)
    modules_to_save: tuple[str, ...] = ()  # whole modules trained and saved with the adapter

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        self.modules_to_save = tuple(self.modules_to_save or ())
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ConfigError(f"LoraConfig.r={self.r!r}: must be a positive integer")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"LoraConfig.alpha={self.alpha!r}: must be a positive number")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraConfig.dropout={self.dropout!r}: must be in [0, 1)")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError(f"LoraConfig.target_modules={self.target_modules!r}: give at least one module name")
        if self.bias not in BIAS_MODES:
            raise ConfigError(f"LoraConfig.bias={self.bias!r}: must be one of {BIAS_MODES}")

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["modules_to_save"] = list(self.modules_to_save)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoraConfig":
        return dataclass_from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---- layers ----------------------------------------------------------------------------------
def _base_weight_dtype(base: nn.Module) -> torch.dtype:
    w = getattr(base, "weight", None)
    if isinstance(w, torch.Tensor) and w.is_floating_point():
        return w.dtype
    return getattr(base, "compute_dtype", torch.float32)


def _base_device(base: nn.Module) -> torch.device:
    for t in list(base.parameters()) + list(base.buffers()):
        return t.device
    return torch.device("cpu")


class LoraLinear(nn.Module):
    """A frozen linear layer (nn.Linear, NF4Linear, anything with in_features/out_features)
    plus one low-rank update per adapter name."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not (hasattr(base_layer, "in_features") and hasattr(base_layer, "out_features")):
            raise ConfigError(
                f"LoRA can adapt linear layers only; {type(base_layer).__name__} has no in_features/out_features"
            )
        self.base_layer = base_layer
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.r: dict[str, int] = {}
        self.active_adapter: str | None = None
        self.disabled = False
        self.merged_adapters: list[str] = []

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False) -> None:
        if name in self.lora_A:
            raise ConfigError(f"this layer already has a LoRA adapter named {name!r}")
        if r > min(self.in_features, self.out_features):
            raise ConfigError(
                f"LoRA rank r={r} is larger than the matrix allows: a {self.out_features}x{self.in_features} "
                f"weight has rank at most {min(self.in_features, self.out_features)}; lower r"
            )
        dtype, device = _base_weight_dtype(self.base_layer), _base_device(self.base_layer)
        a = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        b = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        nn.init.zeros_(b.weight)
        self.lora_A[name] = a
        self.lora_B[name] = b
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r[name] = r
        self.scaling[name] = alpha / math.sqrt(r) if use_rslora else alpha / r
        if self.active_adapter is None:
            self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge_lora first")
        for d in (self.lora_A, self.lora_B, self.lora_dropout):
            del d[name]
        self.r.pop(name)
        self.scaling.pop(name)
        if self.active_adapter == name:
            self.active_adapter = next(iter(self.lora_A), None)

    def delta_weight(self, name: str) -> torch.Tensor:
        """(alpha / r) B A, shape [out, in], in fp32."""
        a = self.lora_A[name].weight.float()
        b = self.lora_B[name].weight.float()
        return (b @ a) * self.scaling[name]

    # ---- merge ------------------------------------------------------------------------------
    def _weight(self) -> torch.Tensor:
        w = getattr(self.base_layer, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise ConfigError(
                f"cannot merge LoRA into a {type(self.base_layer).__name__} (quantized) weight; load the base "
                "model in full precision, load the adapter onto it and merge there (lmkit merge does this)"
            )
        return w

    @torch.no_grad()
    def merge(self, name: str) -> None:
        if name in self.merged_adapters:
            return
        w = self._weight()
        w.copy_((w.float() + self.delta_weight(name)).to(w.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            w = self._weight()
            w.copy_((w.float() - self.delta_weight(name)).to(w.dtype))

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        name = self.active_adapter
        if self.disabled or name is None or name in self.merged_adapters:
            return result
        a = self.lora_A[name]
        x = x.to(a.weight.dtype)
        update = self.lora_B[name](a(self.lora_dropout[name](x))) * self.scaling[name]
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={dict(self.r)}, active={self.active_adapter!r}"


class ModulesToSave(nn.Module):
    """A module trained in full for an adapter: one trainable copy per adapter, original frozen."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False

    def add_adapter(self, name: str) -> None:
        self.modules_to_save[name] = copy.deepcopy(self.original_module)
        if self.active_adapter is None:
            self.active_adapter = name

    def forward(self, *args, **kwargs):
        if self.disabled or self.active_adapter not in self.modules_to_save:
            return self.original_module(*args, **kwargs)
        return self.modules_to_save[self.active_adapter](*args, **kwargs)


# ---- model-level API ------------------------------------------------------------------------
def _lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoraLinear):
            yield name, m


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (
        hasattr(m, "in_features") and hasattr(m, "out_features") and not isinstance(m, (LoraLinear, ModulesToSave))
        and not list(m.children())
    )


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    if "all-linear" in targets and name.split(".")[-1] != "lm_head":
        return True
    return any(name == t or name.endswith("." + t) for t in targets)


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct short names of the model's linear layers (what target_modules can name)."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, LoraLinear):
            names.append(name.split(".")[-1])
        elif _is_linear(m) and ".lora_" not in name and "base_layer" not in name:
            names.append(name.split(".")[-1])
    return sorted(set(names))


def find_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Dotted names of the linear layers matching `targets` (ConfigError listing the choices if none)."""
    found = []
    for name, m in model.named_modules():
        if ".lora_" in name or ".base_layer" in name or "modules_to_save" in name or "original_module" in name:
            continue
        if (isinstance(m, LoraLinear) or _is_linear(m)) and _matches(name, targets):
            found.append(name)
    if not found:
        raise ConfigError(
            f"target_modules {list(targets)} match no linear layer of {type(model).__name__}; "
            f"available: {linear_module_names(model)} (or 'all-linear')"
        )
    return found


def lora_configs(model: nn.Module) -> dict[str, LoraConfig]:
    return getattr(model, "lora_configs", {})


def inject_lora(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap the target linear layers of `model` (in place) with LoRA adapter `adapter_name`,
    freeze everything else and make this adapter the active, trainable one. Returns `model`."""
    if not isinstance(config, LoraConfig):
        raise ConfigError(f"inject_lora needs a LoraConfig, got {type(config).__name__}")
    if adapter_name in lora_configs(model):
        raise ConfigError(f"the model already has a LoRA adapter named {adapter_name!r}; pick another name")
    if not adapter_name or "." in adapter_name:
        raise ConfigError(f"adapter name {adapter_name!r}: must be non-empty and contain no '.'")
    names = find_targets(model, config.target_modules)
    # validate every layer before touching the model
    for name in names:
        m = model.get_submodule(name)
        lin = m if not isinstance(m, LoraLinear) else m.base_layer
        if config.r > min(lin.in_features, lin.out_features):
            raise ConfigError(
                f"LoRA rank r={config.r} is larger than {name} ({lin.out_features}x{lin.in_features}) allows; "
                f"at most {min(lin.in_features, lin.out_features)}"
            )
    for name in names:
        m = model.get_submodule(name)
        if not isinstance(m, LoraLinear):
            m = LoraLinear(m)
            replace_module(model, name, m)
        m.add_adapter(adapter_name, config.r, config.alpha, config.dropout, config.use_rslora)
    for target in config.modules_to_save:
        hits = [n for n, m in model.named_modules() if (n == target or n.endswith("." + target))
                and ".base_layer" not in n and "modules_to_save" not in n and "original_module" not in n]
        if not hits:
            raise ConfigError(f"modules_to_save entry {target!r} matches no module of {type(model).__name__}")
        for n in hits:
            m = model.get_submodule(n)
            if not isinstance(m, ModulesToSave):
                m = ModulesToSave(m)
                replace_module(model, n, m)
            m.add_adapter(adapter_name)
    if not hasattr(model, "lora_configs"):
        model.lora_configs = {}
    model.lora_configs[adapter_name] = config
    set_adapter(model, adapter_name)
    return model


def set_adapter(model: nn.Module, name: str) -> None:
    """Make adapter `name` the active one (and the only trainable one)."""
    if name not in lora_configs(model):
        raise ConfigError(f"no LoRA adapter named {name!r}; the model has {sorted(lora_configs(model))}")
    for _, layer in _lora_layers(model):
        if name in layer.lora_A:
            layer.active_adapter = name
        else:
            layer.active_adapter = None
    for m in model.modules():
        if isinstance(m, ModulesToSave):
            m.active_adapter = name if name in m.modules_to_save else None
    model.active_lora_adapter = name
    mark_only_lora_trainable(model)


def active_adapter(model: nn.Module) -> str | None:
    return getattr(model, "active_lora_adapter", None)


def mark_only_lora_trainable(model: nn.Module) -> None:
    """requires_grad only on the active adapter's A/B (+ biases per config.bias, + modules_to_save copies)."""
    name = active_adapter(model)
    config = lora_configs(model).get(name)
    for p in model.parameters():
        p.requires_grad_(False)
    if config is None:
        return
    for _, layer in _lora_layers(model):
        if name in layer.lora_A:
            layer.lora_A[name].weight.requires_grad_(True)
            layer.lora_B[name].weight.requires_grad_(True)
    for m in model.modules():
        if isinstance(m, ModulesToSave) and name in m.modules_to_save:
            for p in m.modules_to_save[name].parameters():
                p.requires_grad_(True)
    if config.bias == "all":
        for n, p in model.named_parameters():
            if n.endswith(".bias") and "original_module" not in n:
                p.requires_grad_(True)
    elif config.bias == "lora_only":
        for _, layer in _lora_layers(model):
            b = getattr(layer.base_layer, "bias", None)
            if isinstance(b, nn.Parameter):
                b.requires_grad_(True)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes the bare base model (merged adapters are unmerged
    on entry and merged again on exit)."""
    layers = [m for m in model.modules() if isinstance(m, (LoraLinear, ModulesToSave))]
    merged = {id(m): list(m.merged_adapters) for m in layers if isinstance(m, LoraLinear) and m.merged_adapters}
    saved = [(m, m.disabled) for m in layers]
    for m in layers:
        if isinstance(m, LoraLinear) and m.merged_adapters:
            m.unmerge()
        m.disabled = True
    try:
        yield model
    finally:
        for m, was in saved:
            m.disabled = was
            if isinstance(m, LoraLinear):
                for name in merged.get(id(m), []):
                    m.merge(name)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights (forward then skips it)."""
    name = active_adapter(model)
    if name is None:
        raise ConfigError("the model has no LoRA adapter to merge")
    owners: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and not isinstance(m, LoraLinear):
            owners.setdefault(id(w), []).append(n)
    for n, layer in _lora_layers(model):
        w = getattr(layer.base_layer, "weight", None)
        if name in layer.lora_A and w is not None and len(set(owners.get(id(w), []))) > 1:
            raise ConfigError(
                f"cannot merge into {n}: its weight is shared with {sorted(set(owners[id(w)]))} (tied embeddings); "
                "merging would change the other module too — untie the weights first or keep the adapter unmerged"
            )
    for _, layer in _lora_layers(model):
        if name in layer.lora_A:
            layer.merge(name)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract every merged adapter from the base weights again."""
    for _, layer in _lora_layers(model):
        layer.unmerge()
    return model


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter `name` from every layer (unwrapping layers left with no adapter)."""
    if name not in lora_configs(model):
        raise ConfigError(f"no LoRA adapter named {name!r}; the model has {sorted(lora_configs(model))}")
    for n, layer in list(_lora_layers(model)):
        if name in layer.lora_A:
            layer.delete_adapter(name)
        if not layer.lora_A:
            replace_module(model, n, layer.base_layer)
    for n, m in [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSave)]:
        if name in m.modules_to_save:
            del m.modules_to_save[name]
            if m.active_adapter == name:
                m.active_adapter = None
        if not len(m.modules_to_save):
            replace_module(model, n, m.original_module)
    del model.lora_configs[name]
    if getattr(model, "active_lora_adapter", None) == name:
        rest = list(model.lora_configs)
        if rest:
            set_adapter(model, rest[0])
        else:
            del model.lora_configs
            del model.active_lora_adapter
            for p in model.parameters():
                p.requires_grad_(True)


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every LoRA wrapper by its base layer (after merging the active adapter if
    `merge`) and every modules_to_save wrapper by the active copy: a plain model again."""
    if merge and active_adapter(model) is not None:
        merge_lora(model)
    name = active_adapter(model)
    for n, layer in list(_lora_layers(model)):
        replace_module(model, n, layer.base_layer)
    for n, m in [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSave)]:
        keep = m.modules_to_save[name] if merge and name in m.modules_to_save else m.original_module
        replace_module(model, n, keep)
    for attr in ("lora_configs", "active_lora_adapter"):
        if hasattr(model, attr):
            delattr(model, attr)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def lora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's adapter-name-free keys (lmkit module names):
    ``<module>.lora_A.weight``, ``<module>.lora_B.weight``, trained biases (an adapted
    layer's as ``<module>.base_layer.bias``, as PEFT writes it), and
    modules_to_save as ``<module>.<param>``."""
    config = lora_configs(model).get(adapter_name)
    if config is None:
        raise ConfigError(f"no LoRA adapter named {adapter_name!r}; the model has {sorted(lora_configs(model))}")
    out: dict[str, torch.Tensor] = {}
    for name, layer in _lora_layers(model):
        if adapter_name in layer.lora_A:
            out[f"{name}.lora_A.weight"] = layer.lora_A[adapter_name].weight.detach()
            out[f"{name}.lora_B.weight"] = layer.lora_B[adapter_name].weight.detach()
            if config.bias == "lora_only" and getattr(layer.base_layer, "bias", None) is not None:
                out[f"{name}.base_layer.bias"] = layer.base_layer.bias.detach()
    if config.bias == "all":
        for n, p in model.named_parameters():
            if n.endswith(".bias") and "original_module" not in n and "modules_to_save" not in n:
                out[n] = p.detach()
    for name, m in model.named_modules():
        if isinstance(m, ModulesToSave) and adapter_name in m.modules_to_save:
            for pn, p in m.modules_to_save[adapter_name].named_parameters():
                out[f"{name}.{pn}"] = p.detach()
    return out


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Copy tensors keyed as in `lora_state_dict` into adapter `adapter_name`; every key and
    shape is checked first, nothing is copied on error."""
    from lmkit.errors import CheckpointError

    own: dict[str, torch.Tensor] = {}
    for name, layer in _lora_layers(model):
        if adapter_name in layer.lora_A:
            own[f"{name}.lora_A.weight"] = layer.lora_A[adapter_name].weight
            own[f"{name}.lora_B.weight"] = layer.lora_B[adapter_name].weight
    for n, p in model.named_parameters():
        if n.endswith(".bias") and "original_module" not in n and "modules_to_save" not in n:
            own[n] = p
    # older files name a wrapped layer's bias without ".base_layer"
    state = {
        (k[: -len(".bias")] + ".base_layer.bias" if k not in own and k.endswith(".bias")
         and k[: -len(".bias")] + ".base_layer.bias" in own else k): v
        for k, v in state.items()
    }
    for name, m in model.named_modules():
        if isinstance(m, ModulesToSave) and adapter_name in m.modules_to_save:
            for pn, p in m.modules_to_save[adapter_name].named_parameters():
                own[f"{name}.{pn}"] = p
    unexpected = sorted(k for k in state if k not in own)
    shapes = [
        f"{k}: adapter has {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    needed = [k for k in own if ".lora_A." in k or ".lora_B." in k]
    missing = sorted(k for k in needed if k not in state)
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) with no place in this model: {unexpected[:6]}")
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) with the wrong shape: {shapes[:6]}")
    if missing:
        problems.append(f"{len(missing)} LoRA tensor(s) missing from the adapter: {missing[:6]}")
    if problems:
        raise CheckpointError(
            "the LoRA adapter does not fit this model (was it trained for another architecture "
            "or size?): " + "; ".join(problems)
        )
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(device=own[k].device, dtype=own[k].dtype))


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) distinct parameter counts."""
    params = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in params.values())


def apply_lora(model: nn.Module, config: LoraConfig | None = None) -> nn.Module:
    """Registry entry point: `inject_lora` with the default adapter name."""
    return inject_lora(model, config or LoraConfig())


def linear_shapes(model_config) -> dict[str, tuple[int, int]]:
    """(in, out) of each per-layer linear of a dense decoder, by lmkit short name."""
    c = model_config
    d, hd = c.d_model, c.head_dim
    shapes = {
        "q_proj": (d, c.n_heads * hd), "k_proj": (d, c.n_kv_heads * hd), "v_proj": (d, c.n_kv_heads * hd),
        "o_proj": (c.n_heads * hd, d),
    }
    if c.gated_ffn:
        shapes.update(gate_proj=(d, c.d_ff), up_proj=(d, c.d_ff), down_proj=(c.d_ff, d))
    else:
        shapes.update(up_proj=(d, c.d_ff), down_proj=(c.d_ff, d))
    return shapes


def lora_param_count(model_config, config: LoraConfig) -> int:
    """Closed form: r (in + out) per adapted matrix (dense decoders; lm_head if targeted)."""
    if getattr(model_config, "n_experts", 0):
        raise ConfigError("lora_param_count: mixture-of-experts models are not covered by the closed form")
    shapes = linear_shapes(model_config)
    per_layer = sum(
        config.r * (i + o) for name, (i, o) in shapes.items()
        if "all-linear" in config.target_modules or name in config.target_modules
    )
    total = per_layer * model_config.n_layers
    if "lm_head" in config.target_modules:
        total += config.r * (model_config.d_model + model_config.vocab_size)
    return total
