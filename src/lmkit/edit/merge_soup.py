"""Model soups (Wortsman et al. 2022): average the weights of fine-tunes of one base.

    uniform soup  the plain mean of every model
    greedy soup   models sorted by their own held-out score, best first; each is added to the
                  soup only if the averaged soup's held-out score does not get worse

`score` is any function state dict -> number (higher is better; pass `-perplexity`).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from lmkit.edit.merge_state import MergeConfig, merge_state_dicts

State = Mapping[str, torch.Tensor]


def uniform_soup(models: Sequence[State]) -> dict[str, torch.Tensor]:
    """The mean of every model's weights."""
    return merge_state_dicts(models, MergeConfig(method="soup"))


def greedy_soup(models: Sequence[State], score: Callable[[State], float]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """(soup, indices of the models in it, in the order they were added)."""
    scores = [float(score(m)) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    chosen = [order[0]]
    soup, best = dict(models[order[0]]), scores[order[0]]
    for i in order[1:]:
        candidate = uniform_soup([models[j] for j in chosen + [i]])
        s = float(score(candidate))
        if s >= best:
            chosen.append(i)
            soup, best = candidate, s
    return soup, chosen
