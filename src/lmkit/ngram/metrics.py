"""Information-theory basics from the notes (信息熵, 交叉熵, 困惑度).

H(p) = -sum_i p_i log p_i measures uncertainty in bits (base 2) or nats (base e). A model q
evaluated on text drawn from p has cross-entropy H(p, q) = -E_p[log q] >= H(p), estimated on
N test tokens as -(1/N) sum log2 q(w_i | history); perplexity is 2 ** H(p, q): the model is
as uncertain as a uniform choice among that many words. By the chain rule
p(w_1..w_L) = prod_i p(w_i | w_1..w_{i-1}), so these per-token averages are just the
sequence log-probability divided by its length.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def entropy(probs: Sequence[float] | np.ndarray, base: float = 2.0) -> float:
    """Shannon entropy of a probability vector (zeros contribute 0)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("entropy needs a non-empty 1-D probability vector")
    if np.any(p < 0) or not math.isclose(float(p.sum()), 1.0, rel_tol=1e-6, abs_tol=1e-9):
        raise ValueError(f"not a probability distribution (sum={float(p.sum())!r}, min={float(p.min())!r})")
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(base))


def cross_entropy_from_logprobs(log_probs: Sequence[float] | np.ndarray, base_in: float = math.e,
                                base_out: float = 2.0) -> float:
    """Mean negative log-probability per token, converted from log-base `base_in` to `base_out`."""
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("no log-probabilities given")
    return float(-lp.mean() * math.log(base_in) / math.log(base_out))


def perplexity_from_logprobs(log_probs: Sequence[float] | np.ndarray, base: float = math.e) -> float:
    """exp of the mean negative log-likelihood: the geometric mean of 1/p over tokens."""
    return float(base ** (-np.asarray(log_probs, dtype=np.float64).mean()))
