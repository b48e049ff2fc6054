"""The second moment C = E[k kᵀ] of an MLP's keys (the inputs of its down_proj) on generic text.

ROME and MEMIT weigh an update by C⁻¹ so that it changes the layer's output as little as possible
for the keys the layer usually sees: the least-squares solution of "map k* to v*, keep W k for the
keys of ordinary text". Estimated over every token of the text, in float64.
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.edit.layer_hooks import down_proj, record_inputs
from lmkit.edit.prompt_tokens import pad_right
from lmkit.errors import ConfigError


@torch.no_grad()
def key_second_moment(model: nn.Module, tokenizer, texts: list[str], layers: list[int],
                      batch_size: int = 32, max_len: int = 128) -> dict[int, torch.Tensor]:
    """layer -> E[k kᵀ] [d_ff, d_ff] (float64) over the tokens of `texts` (each cut to max_len tokens)."""
    rows = [ids[:max_len] for ids in (tokenizer.encode(t) for t in texts) if ids]
    if not rows:
        raise ConfigError("the key statistics need some generic text; none was given")
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo: lo + batch_size]
        real = pad_right([[1] * len(r) for r in chunk]).bool()
        recorders = {l: record_inputs(down_proj(model, l)) for l in layers}
        seen = {l: r.__enter__() for l, r in recorders.items()}
        try:
            model(pad_right(chunk))
        finally:
            for r in recorders.values():
                r.__exit__(None, None, None)
        for l in layers:
            k = seen[l][0][real].double()
            sums[l] = sums.get(l, 0) + k.T @ k
        count += int(real.sum())
    return {l: s / count for l, s in sums.items()}
