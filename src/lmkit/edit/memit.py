"""MEMIT (Meng et al. 2023): write many facts at once, spread over several MLP layers.

For each request the target z_i = h_L + δ_i of the residual stream after the last edited layer L,
at the subject's last token, is found as in ROME (target_vector.py, site = block L). Then, layer by
layer from the lowest, with the keys K at that layer and the residual R still missing (recomputed
after the layers below changed), the layer takes its share R / (layers left) by the batch weighted
least-squares update

    ΔW = R W Kᵀ (λ C + K W Kᵀ)⁻¹          (C = E[k kᵀ] on generic text, λ = cov_weight)

which maps the new keys to their values while keeping W k for the keys of ordinary text.

The keys, by default (`split_keys`), are two columns per request, each with half the weight: the key
of the bare prompt, and the mean key after the random prefixes, each asked for its own residual. The
paper has one column, the mean of all of them, fitted to the bare prompt's residual (`split_keys=False`).
A subject at the start of a text is cut into other pieces than after other text (" Shi|rand" and
"Sh|i|rand"), so the mean of the two keys is the key of neither and the paraphrases (the subject
mid-sentence) were the first to miss: 0.67-0.815 at 1 and 10 edits on the benchmark's five draws,
0.785-0.875 with the keys apart (docs/editing.md, "Two keys per fact").

A fact's target z is set at the top layer L only where it can reach the answer. In a shallow model
an early attention layer may already have carried the subject to the answer position, and then no
change at the subject after that layer moves it. With `reach_nll` set, a fact whose δ at L leaves
its target's NLL per token in the bare prompt above that value gets its target at the lowest layer
instead and is written there alone, its keys held still (residual 0) in the layers above, if its
target there reaches the answer better (a lower NLL) than the top one did; otherwise it stays at the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmkit.edit.layer_hooks import at_positions, block, down_proj, record_inputs, record_outputs
from lmkit.edit.prompt_tokens import SubjectPrompt, encode_subject_prompt, pad_right
from lmkit.edit.rome import mean_key
from lmkit.edit.target_vector import EditRequest, TargetVectorConfig, bare_target_nll, optimise_site_deltas
from lmkit.errors import ConfigError


@dataclass
class MemitConfig:
    layers: list[int] = field(default_factory=lambda: [0, 1])
    cov_weight: float = 2.0
    target: TargetVectorConfig = field(default_factory=TargetVectorConfig)
    split_keys: bool = True  # False: the paper's one mean key per request, fitted at the bare prompt
    reach_nll: float | None = None  # a fact whose target at the top leaves a bare NLL above this: lowest layer

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("MemitConfig.layers must name at least one layer")
        if self.cov_weight <= 0:
            raise ConfigError(f"MemitConfig.cov_weight must be > 0, got {self.cov_weight}")


@torch.no_grad()
def _at_subject(model: nn.Module, module: nn.Module, prompts: list[SubjectPrompt], inputs: bool = False) -> torch.Tensor:
    """[n, d]: `module`'s output (or input) at each prompt's subject."""
    with (record_inputs if inputs else record_outputs)(module) as seen:
        model(pad_right([p.ids for p in prompts]))
    return at_positions(seen[0], [p.subject_last for p in prompts])


def _bare_and_prefixed(rows: torch.Tensor, n: int) -> torch.Tensor:
    """[n·P, d], each request's prompt bare and then after each prefix -> [2n, d]: per request the bare
    row and the mean of the prefixed rows (P = 1: the rows as they are)."""
    per = rows.view(n, -1, rows.shape[-1])
    if per.shape[1] == 1:
        return rows
    return torch.stack([per[:, 0], per[:, 1:].mean(1)], 1).flatten(0, 1)


def memit_update(keys: torch.Tensor, residuals: torch.Tensor, second_moment: torch.Tensor,
                 cov_weight: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW = R W Kᵀ (λC + K W Kᵀ)⁻¹ for keys K [d_ff, n], residuals R [d, n] and column weights W
    (diagonal, default all 1): min Σ_j w_j ‖ΔW k_j − r_j‖² + λ tr(ΔW C ΔWᵀ). Solved in float64."""
    k, r = keys.double(), residuals.double()
    kw = k if weights is None else k * weights.double()
    adjusted = torch.linalg.solve(cov_weight * second_moment.double() + kw @ k.T, kw)
    return r @ adjusted.T


@dataclass
class _Writes:
    """Facts whose targets z are set at the output of block `top`: their prompts (each fact's bare
    prompt, then after each prefix) and z for each prompt."""

    requests: list[EditRequest]
    top: int
    prompts: list[SubjectPrompt]
    z: torch.Tensor


def _writes(model: nn.Module, tokenizer, requests: list[EditRequest], top: int, delta: torch.Tensor,
            contexts: list[str]) -> _Writes:
    prompts = [encode_subject_prompt(tokenizer, r.prompt, r.subject, c) for r in requests for c in contexts]
    z = _at_subject(model, block(model, top), prompts) + delta.repeat_interleave(len(contexts), 0)
    return _Writes(requests, top, prompts, z)


def apply_memit(model: nn.Module, tokenizer, requests: list[EditRequest], second_moments: dict[int, torch.Tensor],
                prefixes: list[str], cfg: MemitConfig | None = None) -> dict[int, torch.Tensor]:
    """Write every request into `model` (in place); -> layer -> the ΔW added to its down_proj."""
    cfg = cfg or MemitConfig()
    layers = sorted(cfg.layers)
    missing = [l for l in layers if l not in second_moments]
    if missing:
        raise ConfigError(f"MEMIT needs the key second moment of layers {missing}")
    first, last = layers[0], layers[-1]
    contexts = [""] + ([p for p in prefixes if p] if cfg.split_keys else [])
    _, delta = optimise_site_deltas(model, tokenizer, block(model, last), requests, prefixes, cfg.target)
    low, low_delta = [], None
    if cfg.reach_nll is not None and len(layers) > 1:
        nll = bare_target_nll(model, tokenizer, block(model, last), requests, delta)
        unreached = [i for i in range(len(requests)) if float(nll[i]) > cfg.reach_nll]
        if unreached:  # try them at the lowest layer; move those that reach their answer better there
            at_first = [requests[i] for i in unreached]
            _, first_delta = optimise_site_deltas(model, tokenizer, block(model, first), at_first, prefixes, cfg.target)
            first_nll = bare_target_nll(model, tokenizer, block(model, first), at_first, first_delta)
            better = [j for j, i in enumerate(unreached) if float(first_nll[j]) < float(nll[i])]
            low, low_delta = [unreached[j] for j in better], first_delta[better]
    high = sorted(set(range(len(requests))) - set(low))
    groups = []
    if high:
        groups.append(_writes(model, tokenizer, [requests[i] for i in high], last, delta[high], contexts))
    if low:  # their targets reach the answer better at the lowest layer: written there alone
        groups.append(_writes(model, tokenizer, [requests[i] for i in low], first, low_delta, contexts))
    per_fact = min(len(contexts), 2)  # split: the bare prompt and the prefixed ones, half the weight each
    updates = {}
    for layer in layers:
        keys, residuals = [], []
        for g in groups:
            n = len(g.requests)
            if cfg.split_keys:
                keys.append(_bare_and_prefixed(_at_subject(model, down_proj(model, layer), g.prompts, inputs=True), n))
            else:
                keys.append(torch.stack([mean_key(model, tokenizer, layer, r, prefixes) for r in g.requests]))
            layers_left = sum(1 for l in layers if layer <= l <= g.top)
            if layers_left:
                still_missing = _bare_and_prefixed(g.z - _at_subject(model, block(model, g.top), g.prompts), n)
                residuals.append(still_missing / layers_left)
            else:  # written below this layer: its keys must not move here
                residuals.append(torch.zeros(n * per_fact, g.z.shape[-1]))
        k, r = torch.cat(keys), torch.cat(residuals)
        update = memit_update(k.T, r.T, second_moments[layer], cfg.cov_weight, torch.full((len(k),), 1.0 / per_fact))
        with torch.no_grad():
            proj = down_proj(model, layer)
            proj.weight.add_(update.to(proj.weight.dtype))
        updates[layer] = update.float()
    return updates
