"""LoRA across a checkpoint's fused layers (Phi-3 qkv_proj / gate_up_proj, GPT-NeoX query_key_value).

lmkit adapts q_proj, k_proj and v_proj separately; the checkpoint (and so PEFT) sees one fused
Linear. The two are the same adapter: LoRAs (A_j [r, in], B_j [out_j, r], scale s) on the parts
equal one LoRA on the fused layer with
    A = [A_q; A_k; A_v]                  rank 3r
    B = fuse(blockdiag(B_q, B_k, B_v))   rows in the checkpoint's order (hub/fused_linear.py)
and the same scale, so alpha is multiplied like the rank (by 3; by sqrt(3) with rsLoRA). PEFT's
rank_pattern / alpha_pattern carry the fused layers' rank and alpha.

Back: a fused LoRA (rank R) splits exactly into part LoRAs of rank R that share A and take B's rows.
lmkit has one rank per adapter, so every module is padded to the largest rank with zero rows of A
and zero columns of B, and B is rescaled so each module keeps its own alpha / r.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from lmkit.errors import CheckpointError
from lmkit.hub.fused_linear import FusedLinear

_A, _B = ".lora_A.weight", ".lora_B.weight"


def fused_layers_of(model: nn.Module) -> tuple[FusedLinear, ...]:
    """The fused checkpoint layers of the model's architecture (none for most)."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", "") if cfg is not None else ""
    from lmkit.hub.pretrained import ARCH_MODULES, arch_module

    if model_type not in ARCH_MODULES:
        return ()
    fn = getattr(arch_module(model_type), "fused_layers", None)
    return tuple(fn(cfg)) if fn is not None else ()


def _scale(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def _lora_key(key: str) -> tuple[str, str]:
    """(module, ".lora_A.weight" / ".lora_B.weight"), or (key, "") for any other tensor."""
    for suffix in (_A, _B):
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def _out_features(model: nn.Module, name: str) -> int:
    module = model.get_submodule(name)
    return getattr(module, "base_layer", module).weight.shape[0]


def fuse_lora(model: nn.Module, state: dict[str, torch.Tensor], r: int, alpha: float, rslora: bool):
    """lmkit adapter tensors -> (the tensors of unfused modules, the fused layers' LoRA tensors under
    the checkpoint's module names, rank_pattern, alpha_pattern, the fused layers' short names, the
    part short names they replace)."""
    fused = fused_layers_of(model)
    rest: dict[str, torch.Tensor] = {}
    groups: dict[tuple[int, str], dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        module, suffix = _lora_key(key)
        hit = next(((n, f.match_ours(module)) for n, f in enumerate(fused) if f.match_ours(module)), None)
        if hit is None or not suffix:  # a trained bias of a part has no PEFT name: to_peft_keys refuses it
            rest[key] = value
        else:
            n, (j, i) = hit
            groups.setdefault((n, i), {}).setdefault(j, {})[suffix] = value
    tensors, ranks, alphas, names, parts = {}, {}, {}, set(), set()
    for (n, i), got in groups.items():
        f = fused[n]
        present = sorted(got)
        a = torch.cat([got[j][_A] for j in present])
        big = a.shape[0]
        rows, col = [], 0
        for j, template in enumerate(f.ours):
            if j in got:
                b = got[j][_B]
                block = b.new_zeros(b.shape[0], big)
                block[:, col:col + b.shape[1]] = b
                col += b.shape[1]
            else:
                block = a.new_zeros(_out_features(model, template.format(i=i)), big)
            rows.append(block)
            parts.add(template.rsplit(".", 1)[-1])
        theirs = f.theirs.format(i=i)
        tensors[theirs + _A] = a.contiguous()
        tensors[theirs + _B] = f.fuse(rows).contiguous()
        k = len(present)
        ranks[theirs] = r * k
        alphas[theirs] = alpha * (math.sqrt(k) if rslora else k)
        names.add(f.theirs.rsplit(".", 1)[-1])
    return rest, tensors, ranks, alphas, names, parts


def unfuse_lora(model: nn.Module, raw: dict[str, torch.Tensor], prefix: str, r: int, alpha: float, rslora: bool,
                alpha_pattern: dict) -> tuple[dict[str, torch.Tensor], int, float]:
    """PEFT tensors (keys under `prefix`) -> the same with fused layers split into lmkit's parts (lmkit
    names, `prefix` kept), every LoRA padded to one rank; -> (tensors, that rank, its alpha). Each
    module's rank is its tensors' (so rank_pattern needs no reading), its alpha alpha_pattern's."""
    fused = fused_layers_of(model)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        module, suffix = _lora_key(key[len(prefix):])
        if suffix and key.startswith(prefix):
            modules.setdefault(module, {})[suffix] = value
        else:
            out[key] = value

    def scale_of(module: str, rank: int) -> float:
        """PEFT's rule: the first alpha_pattern key that ends the module name (at a dot) wins."""
        key = next((k for k in alpha_pattern if re.match(rf"(.*\.)?({k})$", module)), None)
        return _scale(alpha_pattern[key] if key is not None else alpha, rank, rslora)

    split: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, ab in modules.items():
        if set(ab) != {_A, _B}:
            raise CheckpointError(f"{module}: needs both lora_A and lora_B")
        a, b = ab[_A], ab[_B]
        s = scale_of(module, a.shape[0])
        f = next((f for f in fused if f.match_theirs(module) is not None), None)
        if f is None:
            split[module] = (a, b, s)
            continue
        i = f.match_theirs(module)
        names = [t.format(i=i) for t in f.ours]
        for name, rows in zip(names, f.split(b, [_out_features(model, n) for n in names])):
            split[name] = (a, rows, s)
    top = max((a.shape[0] for a, _, _ in split.values()), default=r)
    base = _scale(alpha, r, rslora)
    new_alpha = base * (math.sqrt(top) if rslora else top)
    for name, (a, b, s) in split.items():
        pad = top - a.shape[0]
        out[prefix + name + _A] = torch.cat([a, a.new_zeros(pad, a.shape[1])]) if pad else a
        b = b * (s / base) if s != base else b
        out[prefix + name + _B] = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1) if pad else b
    return out, top, new_alpha
