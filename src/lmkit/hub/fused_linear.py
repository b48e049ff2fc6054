"""Checkpoint layers that hold several of lmkit's Linear layers in one matrix.

Phi-3 stores q/k/v as one ``qkv_proj`` ([q; k; v] rows) and gate/up as ``gate_up_proj``;
GPT-NeoX stores ``query_key_value`` with the rows of each head together ([heads, 3, head_dim]).
lmkit keeps the parts separate, so LoRA, quantization and the rest address q_proj / k_proj /
v_proj by name. A `FusedLinear` splits such a tensor (weight [out, in], bias [out], or a LoRA B
[out, r]) on load and fuses it on save; one object serves both directions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lmkit.errors import CheckpointError


@dataclass(frozen=True)
class FusedLinear:
    theirs: str  # the checkpoint module, "{i}" for the layer: "model.layers.{i}.self_attn.qkv_proj"
    ours: tuple[str, ...]  # lmkit's modules in row order: ("layers.{i}.self_attn.q_proj", ...)
    heads: int = 0  # > 0: rows interleaved per head ([heads, parts, head_dim]); 0: parts one after another

    def fuse(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The parts' rows (dim 0) as the checkpoint stores them."""
        if not self.heads:
            return torch.cat(parts)
        per_head = [p.reshape(self.heads, -1, *p.shape[1:]) for p in parts]
        return torch.stack(per_head, dim=1).reshape(-1, *parts[0].shape[1:])

    def split(self, fused: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """The parts of `fused`, with `sizes` rows each (lmkit's out_features)."""
        if sum(sizes) != fused.shape[0]:
            raise CheckpointError(f"{self.theirs}: {fused.shape[0]} rows, expected {sum(sizes)} ({sizes})")
        if not self.heads:
            return [t.contiguous() for t in fused.split(sizes)]
        view = fused.reshape(self.heads, len(sizes), -1, *fused.shape[1:])
        return [view[:, j].reshape(-1, *fused.shape[1:]).contiguous() for j in range(len(sizes))]

    def _pattern(self, template: str) -> re.Pattern:
        return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z")

    def match_theirs(self, module: str) -> str | None:
        """The layer index when `module` is this fused checkpoint module, else None."""
        m = self._pattern(self.theirs).match(module)
        return m.group("i") if m else None

    def match_ours(self, module: str) -> tuple[int, str] | None:
        """(part index, layer index) when `module` is one of lmkit's parts, else None."""
        for j, template in enumerate(self.ours):
            m = self._pattern(template).match(module)
            if m:
                return j, m.group("i")
        return None


def split_fused(sd: dict[str, torch.Tensor], fused: tuple[FusedLinear, ...],
                sizes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors -> the same with every fused weight/bias split into lmkit's part names
    (still to be renamed by the NameMap for everything else). `sizes`: rows per part, by `theirs`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        for f in fused:
            i = f.match_theirs(module)
            if i is not None:
                for name, part in zip(f.ours, f.split(value, sizes[f.theirs])):
                    out[f"{name.format(i=i)}.{param}"] = part
                break
        else:
            out[key] = value
    return out


def fuse_parts(sd: dict[str, torch.Tensor], fused: tuple[FusedLinear, ...]
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """lmkit tensors -> (the tensors of no fused layer, under lmkit's names; the fused layers'
    weights/biases under the checkpoint's names)."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[int, str, str], dict[int, torch.Tensor]] = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        for n, f in enumerate(fused):
            hit = f.match_ours(module)
            if hit is not None:
                groups.setdefault((n, hit[1], param), {})[hit[0]] = value
                break
        else:
            out[key] = value
    joined: dict[str, torch.Tensor] = {}
    for (n, i, param), parts in groups.items():
        f = fused[n]
        if len(parts) != len(f.ours):
            raise CheckpointError(f"{f.theirs.format(i=i)}.{param}: needs all of {f.ours}, found {len(parts)}")
        joined[f"{f.theirs.format(i=i)}.{param}"] = f.fuse([parts[j] for j in range(len(f.ours))])
    return out, joined
