"""Causal tracing (Meng et al. 2022): where in the network does the model recall a fact?

Run the prompt three ways:
  clean      P(answer) as the model gives it;
  corrupted  Gaussian noise (σ = noise_scale × std of the embeddings) added to the subject's token
             embeddings, so the model no longer knows the subject;
  restored   corrupted, but one site's clean activation is put back: the hidden state after block
             l at position t, or only the MLP output (down_proj) of block l at t.
The indirect effect of a site is P_restored - P_corrupted. The MLP effect peaks at the subject's
last token in the layers that hold the fact: that is the layer ROME edits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.edit.layer_hooks import block, down_proj, patch_output, record_outputs
from lmkit.edit.prompt_tokens import encode_subject_prompt, target_ids


@dataclass
class TraceResult:
    """Indirect effects [n_layers, T] of restoring each block output (`hidden`) or MLP output (`mlp`)."""

    hidden: torch.Tensor
    mlp: torch.Tensor
    clean: float
    corrupted: float
    subject_first: int
    subject_last: int

    def mlp_at_subject(self) -> torch.Tensor:
        """[n_layers]: the MLP effect at the subject's last token."""
        return self.mlp[:, self.subject_last]


@torch.no_grad()
def trace_fact(model: nn.Module, tokenizer, prompt: str, subject: str, answer: str, samples: int = 10,
               noise_scale: float = 3.0, seed: int = 0) -> TraceResult:
    """The indirect-effect tables of `answer` (its first token) after `prompt` ({} = `subject`)."""
    p = encode_subject_prompt(tokenizer, prompt, subject)
    ids = torch.tensor([p.ids])
    token = target_ids(tokenizer, answer)[0]
    n_layers, t = len(model.layers), len(p.ids)
    span = slice(p.subject_first, p.subject_last + 1)
    gen = torch.Generator().manual_seed(seed)
    sigma = noise_scale * model.embed_tokens.weight.float().std()
    noise = torch.randn(samples, span.stop - span.start, model.config.d_model, generator=gen) * sigma

    def corrupt(e):
        e = e.expand(samples, -1, -1).clone()
        e[:, span] += noise.to(e.dtype)
        return e

    def prob(logits):
        return float(F.softmax(logits[:, -1].float(), -1)[:, token].mean())

    sites = {"hidden": [block(model, l) for l in range(n_layers)], "mlp": [down_proj(model, l) for l in range(n_layers)]}
    clean_acts = {}
    with_recorders = [record_outputs(m) for ms in sites.values() for m in ms]
    seen = [r.__enter__() for r in with_recorders]
    try:
        clean = prob(model(ids).logits)
    finally:
        for r in with_recorders:
            r.__exit__(None, None, None)
    for (kind, ms), i0 in zip(sites.items(), (0, n_layers)):
        clean_acts[kind] = [seen[i0 + l][0] for l in range(len(ms))]
    with patch_output(model.embed_tokens, corrupt):
        corrupted = prob(model(ids).logits)
        tables = {}
        for kind, ms in sites.items():
            table = torch.zeros(n_layers, t)
            for l, m in enumerate(ms):
                for pos in range(t):
                    def restore(h, l=l, pos=pos, kind=kind):
                        h = h.clone()
                        h[:, pos] = clean_acts[kind][l][0, pos]
                        return h
                    with patch_output(m, restore):
                        table[l, pos] = prob(model(ids).logits) - corrupted
            tables[kind] = table
    return TraceResult(tables["hidden"], tables["mlp"], clean, corrupted, p.subject_first, p.subject_last)


def layer_to_edit(results: list[TraceResult]) -> int:
    """The layer whose MLP output at the subject's last token has the largest mean indirect effect."""
    return int(torch.stack([r.mlp_at_subject() for r in results]).mean(0).argmax())


def layers_to_spread(results: list[TraceResult], fraction: float = 0.5) -> list[int]:
    """MEMIT's layers: from `layer_to_edit` up to the last layer whose hidden state at the subject's
    last token still carries the fact (mean indirect effect >= `fraction` of its peak). Above that
    the answer has left the subject's position, so a target z there cannot reach every prompt."""
    first = layer_to_edit(results)
    hidden = torch.stack([r.hidden[:, r.subject_last] for r in results]).mean(0)
    keep = hidden >= fraction * hidden.max()
    last = first
    while last + 1 < len(hidden) and bool(keep[last + 1]):
        last += 1
    return list(range(first, last + 1))
