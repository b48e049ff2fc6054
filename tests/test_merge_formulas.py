"""Merge methods vs the papers' formulas, computed independently here on hand-built tensors
(plain Python loops over lists), and TIES / DARE vs PEFT's merge_utils where they agree."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lmkit.edit.merge_dare import dare_linear, dare_ties, drop_and_rescale, mask_generator
from lmkit.edit.merge_linear import weighted_average
from lmkit.edit.merge_slerp import slerp
from lmkit.edit.merge_soup import greedy_soup, uniform_soup
from lmkit.edit.merge_state import MergeConfig, merge_state_dicts
from lmkit.edit.merge_task_arithmetic import task_arithmetic
from lmkit.edit.merge_ties import ties, trim_by_magnitude
from lmkit.errors import CheckpointError, ConfigError


def _t(xs):
    return torch.tensor(xs, dtype=torch.float32)


# ---- independent reference implementations (lists, loops) ----------------------------------
def ref_trim(delta: list[float], density: float) -> list[float]:
    k = int(round(density * len(delta)))
    keep = sorted(range(len(delta)), key=lambda j: -abs(delta[j]))[:k]
    return [d if j in keep else 0.0 for j, d in enumerate(delta)]


def ref_ties(base, tuned, weights, density, lam):
    taus = [ref_trim([t - b for t, b in zip(model, base)], density) for model in tuned]
    out = []
    for p in range(len(base)):
        mass = sum(w * tau[p] for w, tau in zip(weights, taus))
        gamma = 1.0 if mass >= 0 else -1.0
        agree = [(w, tau[p]) for w, tau in zip(weights, taus) if tau[p] != 0 and math.copysign(1, tau[p]) == gamma]
        merged = sum(w * v for w, v in agree) / sum(w for w, _ in agree) if agree else 0.0
        out.append(base[p] + lam * merged)
    return out


def test_task_arithmetic_is_base_plus_lambda_sum_of_task_vectors():
    base, m1, m2 = [1.0, -2.0, 0.5], [2.0, -1.0, 0.0], [0.0, -4.0, 1.5]
    lam, w = 0.7, [1.0, 0.5]
    want = [b + lam * (w[0] * (x - b) + w[1] * (y - b)) for b, x, y in zip(base, m1, m2)]
    got = task_arithmetic(_t(base), [_t(m1), _t(m2)], w, lam)
    assert torch.allclose(got, _t(want), atol=1e-6)
    # negating a task vector forgets the task: base + (-1)(m1 - base)
    assert torch.allclose(task_arithmetic(_t(base), [_t(m1)], [-1.0]), _t([2 * b - x for b, x in zip(base, m1)]))


def test_ties_hand_built_example():
    # density 0.5 keeps 2 of 4 per task vector:
    #   τ1 [3, -1, .5, -4] -> [3, 0, 0, -4];  τ2 [-2, -.2, 1, 5] -> [-2, 0, 0, 5];  τ3 [1, 2, -.1, -3] -> [0, 2, 0, -3]
    # Σ = [1, 2, 0, -2]: signs +, +, + (a zero sum elects +), -
    # disjoint means: p0 {3} -> 3; p1 {2} -> 2; p2 nothing -> 0; p3 {-4, -3} -> -3.5
    base = torch.zeros(4)
    tuned = [_t([3, -1, 0.5, -4]), _t([-2, -0.2, 1, 5]), _t([1, 2, -0.1, -3])]
    assert torch.equal(trim_by_magnitude(tuned[0], 0.5), _t([3, 0, 0, -4]))
    assert torch.allclose(ties(base, tuned, density=0.5), _t([3, 2, 0, -3.5]))
    assert torch.allclose(ties(base, tuned, density=0.5, lam=2.0), _t([6, 4, 0, -7]))


@pytest.mark.parametrize("density", [0.25, 0.5, 1.0])
def test_ties_matches_reference_on_random_tensors(density):
    rng = random.Random(3)
    base = [rng.uniform(-1, 1) for _ in range(16)]
    tuned = [[b + rng.gauss(0, 1) for b in base] for _ in range(3)]
    weights = [1.0, 0.5, 2.0]
    got = ties(_t(base), [_t(m) for m in tuned], weights, density=density, lam=0.8)
    assert torch.allclose(got, _t(ref_ties(base, tuned, weights, density, 0.8)), atol=1e-5)


def _peft_merge_utils():
    """peft/utils/merge_utils.py alone (it imports only torch), without importing all of peft."""
    import importlib.util

    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("peft is not installed")
    path = f"{list(spec.submodule_search_locations)[0]}/utils/merge_utils.py"
    module_spec = importlib.util.spec_from_file_location("_peft_merge_utils", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_ties_equals_peft_with_unit_weights():
    peft_ties = _peft_merge_utils().ties
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 6, generator=g)
    tuned = [base + torch.randn(8, 6, generator=g) for _ in range(3)]
    want = base + peft_ties([t - base for t in tuned], torch.ones(3), density=0.25)
    assert torch.allclose(ties(base, tuned, density=0.25), want, atol=1e-6)


def test_dare_drops_with_p_and_rescales_by_one_over_one_minus_p():
    delta = torch.randn(200, 50, generator=torch.Generator().manual_seed(1))
    density = 0.3  # p = 0.7
    out = drop_and_rescale(delta, density, mask_generator(5, "w"))
    kept = out != 0
    assert abs(kept.float().mean().item() - density) < 0.02  # ~ 1 - p kept
    assert torch.allclose(out[kept], delta[kept] / (1 - 0.7), rtol=1e-6)  # survivors scaled by 1/(1-p)
    # the same seed and name give the same mask; another seed another one
    assert torch.equal(out, drop_and_rescale(delta, density, mask_generator(5, "w")))
    assert not torch.equal(out, drop_and_rescale(delta, density, mask_generator(6, "w")))
    # the mask is Bernoulli(1 - p) from uniform draws of that generator
    mask = torch.rand(delta.shape, generator=mask_generator(5, "w")) < density
    assert torch.equal(kept, mask)


def test_dare_with_density_one_is_the_identity_as_in_peft():
    # PEFT's random_pruning draws its own mask; with density 1 both are the identity
    delta = torch.randn(5, 5)
    assert torch.equal(_peft_merge_utils().random_pruning(delta, 1.0, rescale=True), drop_and_rescale(delta, 1.0))


def test_dare_linear_and_dare_ties_follow_their_formulas():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(40, generator=g)
    tuned = [base + torch.randn(40, generator=g) for _ in range(2)]
    density, seed, w, lam = 0.5, 11, [0.6, 1.4], 0.9
    masks = [torch.rand(40, generator=mask_generator(seed, "x", i)) < density for i in range(2)]
    sparse = [[(float(t[j] - base[j]) / density if masks[i][j] else 0.0) for j in range(40)]
              for i, t in enumerate(tuned)]
    want_lin = [float(base[j]) + lam * (w[0] * sparse[0][j] + w[1] * sparse[1][j]) for j in range(40)]
    got = dare_linear(base, tuned, w, density, lam, seed=seed, name="x")
    assert torch.allclose(got, _t(want_lin), atol=1e-5)
    # DARE-TIES: sign election + disjoint mean over the same sparse vectors (no further trimming)
    rebuilt = [[float(base[j]) + sparse[i][j] for j in range(40)] for i in range(2)]
    want_ties = ref_ties(base.tolist(), rebuilt, w, 1.0, lam)
    assert torch.allclose(dare_ties(base, tuned, w, density, lam, seed=seed, name="x"), _t(want_ties), atol=1e-5)


def test_slerp_formula_and_lerp_fallback():
    # orthogonal unit vectors: Ω = π/2, t = 0.5 -> both coefficients sin(π/4)/sin(π/2)
    v0, v1 = _t([2.0, 0.0]), _t([0.0, 2.0])
    c = math.sin(math.pi / 4)
    assert torch.allclose(slerp(0.5, v0, v1), _t([2 * c, 2 * c]), atol=1e-6)
    rng = random.Random(0)
    a = [rng.gauss(0, 1) for _ in range(12)]
    b = [rng.gauss(0, 1) for _ in range(12)]
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    omega = math.acos(sum(x * y for x, y in zip(a, b)) / (na * nb))
    t = 0.3
    want = [math.sin((1 - t) * omega) / math.sin(omega) * x + math.sin(t * omega) / math.sin(omega) * y
            for x, y in zip(a, b)]
    got = slerp(t, _t(a).view(3, 4), _t(b).view(3, 4))
    assert got.shape == (3, 4) and torch.allclose(got.flatten(), _t(want), atol=1e-5)
    assert torch.allclose(slerp(0.0, _t(a), _t(b)), _t(a)) and torch.allclose(slerp(1.0, _t(a), _t(b)), _t(b), atol=1e-6)
    # nearly parallel: the lerp fallback
    p = _t(a)
    q = 3 * p + 1e-4
    assert torch.allclose(slerp(0.25, p, q), 0.75 * p + 0.25 * q)


def test_weighted_average_and_soups():
    a, b = {"w": _t([1.0, 2.0]), "n": torch.tensor([3])}, {"w": _t([3.0, 6.0]), "n": torch.tensor([3])}
    assert torch.allclose(weighted_average([a["w"], b["w"]], [1, 3]), _t([2.5, 5.0]))
    assert torch.allclose(uniform_soup([a, b])["w"], _t([2.0, 4.0]))
    c = {"w": _t([100.0, 100.0]), "n": torch.tensor([3])}
    # held-out score: closeness to (2, 4); the far model c is left out of the greedy soup
    score = lambda s: -float((s["w"] - _t([2.0, 4.0])).abs().sum())  # noqa: E731
    soup, chosen = greedy_soup([a, c, b], score)
    assert sorted(chosen) == [0, 2] and torch.allclose(soup["w"], _t([2.0, 4.0]))


def test_state_dicts_dtype_buffers_and_errors():
    base = {"w": torch.zeros(3, dtype=torch.bfloat16), "idx": torch.arange(3)}
    m1 = {"w": torch.ones(3, dtype=torch.bfloat16), "idx": torch.arange(3)}
    m2 = {"w": -torch.ones(3, dtype=torch.bfloat16) * 0.5, "idx": torch.arange(3)}
    out = merge_state_dicts([m1, m2], MergeConfig(method="task_arithmetic"), base)
    assert out["w"].dtype == torch.bfloat16 and torch.allclose(out["w"].float(), torch.full((3,), 0.5))
    assert torch.equal(out["idx"], torch.arange(3))
    with pytest.raises(ConfigError, match="base"):
        merge_state_dicts([m1, m2], MergeConfig(method="ties"))
    with pytest.raises(CheckpointError, match="architecture"):
        merge_state_dicts([m1, {"w": torch.ones(4), "idx": torch.arange(3)}], MergeConfig())
    with pytest.raises(ConfigError, match="exactly two"):
        merge_state_dicts([m1, m2], MergeConfig(method="slerp"), base)
    with pytest.raises(ConfigError, match="method"):
        MergeConfig(method="average")


def test_tied_tensors_are_merged_once():
    def state(seed):
        w = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
        return {"embed.weight": w, "lm_head.weight": w}

    out = merge_state_dicts([state(1), state(2)], MergeConfig(method="dare_linear", density=0.5, seed=3), state(0))
    assert out["embed.weight"] is out["lm_head.weight"]
