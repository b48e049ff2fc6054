"""Reward functions for PPO and GRPO: rule-based and verifiable rewards.

A reward function has TRL's signature ``fn(prompts, completions, **kwargs) -> list[float]``
(texts when a tokenizer is available, else token-id lists). Verifiable rewards (RLVR, as
in DeepSeekMath/DeepSeek-R1's GRPO) check the answer instead of asking a learned reward
model, so they cannot be "hacked" by the policy the way a reward model can.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from lmkit.errors import ConfigError

RewardFn = Callable[..., Sequence[float]]

_NUMBER = re.compile(r"-?\d+")


def arithmetic_answer(prompt: str) -> str | None:
    """The exact answer of an "a+b=", "a-b=" or "a*b=" prompt (integers), else None."""
    m = re.fullmatch(r"\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*", prompt)
    if not m:
        return None
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a - b if op == "-" else a * b)


def exact_answer(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str] | None = None,
                 **_: Any) -> list[float]:
    """1.0 if the completion (stripped) equals the answer, else 0.0. Without `answers`, the
    answer of an arithmetic prompt is computed (`arithmetic_answer`)."""
    out = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ans = answers[i] if answers is not None else arithmetic_answer(p)
        if ans is None:
            raise ConfigError(f"exact_answer: no answer for prompt {p!r} (pass answers=... or use 'a+b=' prompts)")
        out.append(1.0 if c.strip() == str(ans) else 0.0)
    return out


def first_number_correct(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 if the first integer in the completion is the arithmetic answer (lenient format)."""
    out = []
    for p, c in zip(prompts, completions):
        ans = arithmetic_answer(p)
        m = _NUMBER.search(c)
        out.append(1.0 if ans is not None and m is not None and m.group(0) == ans else 0.0)
    return out


def good_letters(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """Rule-based score: share of a-d letters in the completion (see align/synthetic.py)."""
    from lmkit.align.synthetic import good_letter_score

    return [good_letter_score(c) for c in completions]


def load_reward_fn(spec: str) -> RewardFn:
    """'module:function' -> the function (e.g. 'lmkit.align.rewards:exact_answer')."""
    import importlib

    if ":" not in spec:
        raise ConfigError(f"reward function {spec!r}: write it as module:function, e.g. lmkit.align.rewards:exact_answer")
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"reward function {spec!r}: cannot import module {mod_name!r} ({exc})") from exc
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"reward function {spec!r}: {mod_name} has no function {fn_name!r}")
    return fn
