"""Synthetic preference data and toy tasks (合成人类反馈: synthetic feedback).

The notes suggest synthetic feedback when human preference data is scarce (人类偏好数据少).
Here it also gives alignment methods tasks with a known answer, so tests can check that
they learn:

* `letter_preferences`: random prompts and responses over the letters a..h; the "human"
  prefers the response with the higher count of first-half letters (a-d) minus second-half
  letters (e-h). The rule is additive over tokens — learnable by a reward model and by
  DPO's implicit reward (a sum of per-token log-ratios) — and generalises to unseen pairs.
* `good_letter_score`: the same rule as a reward in [0, 1] (share of a-d letters) for PPO.
* `arithmetic_problems`: "a+b=" prompts with the exact answer, for GRPO with a verifiable
  reward (`lmkit.align.rewards.exact_answer`).
* `toy_char_tokenizer`: a character tokenizer covering these tasks.
"""

from __future__ import annotations

import random

from lmkit.data.preference import PreferencePair

LETTERS = "abcdefgh"
GOOD = "abcd"


def toy_char_tokenizer():
    """Character tokenizer: <pad> <unk> <s> </s>, letters a..h, digits, '+', '=', ' '."""
    from lmkit.tokenizers.simple import DEFAULT_SPECIALS, CharTokenizer

    return CharTokenizer(list(DEFAULT_SPECIALS) + list(LETTERS) + list("0123456789+= "))


def good_letter_score(text: str) -> float:
    """Share of characters of `text` that are in a..d (0 for empty text)."""
    return sum(c in GOOD for c in text) / len(text) if text else 0.0


def good_minus_bad(text: str) -> int:
    """Count of a-d letters minus count of e-h letters (the preference rule)."""
    return sum(1 if c in GOOD else -1 for c in text if c in LETTERS)


def _random_response(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(length))


def letter_preferences(n: int, seed: int = 0, prompt_len: tuple[int, int] = (2, 5),
                       response_len: tuple[int, int] = (3, 8)) -> list[PreferencePair]:
    """n pairs whose chosen response has the strictly higher `good_minus_bad` score."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        prompt = _random_response(rng, rng.randint(*prompt_len))
        a = _random_response(rng, rng.randint(*response_len))
        b = _random_response(rng, rng.randint(*response_len))
        sa, sb = good_minus_bad(a), good_minus_bad(b)
        if sa == sb or a == b:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        pairs.append(PreferencePair(prompt, chosen, rejected))
    return pairs


def arithmetic_problems(n: int | None = None, seed: int = 0, max_operand: int = 9) -> list[tuple[str, str]]:
    """(prompt, answer) pairs "a+b=" -> str(a+b); all of them (shuffled) when n is None."""
    rng = random.Random(seed)
    allp = [(f"{a}+{b}=", str(a + b)) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng.shuffle(allp)
    if n is None:
        return allp
    return [allp[i % len(allp)] for i in range(n)]
