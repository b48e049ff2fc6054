"""Rolling windows for loglikelihood_rolling, as lm-eval's `get_rolling_token_windows` +
`make_disjoint_window`: every token is predicted exactly once, the first one from a prefix
token (BOS, else EOS), each later window with as much context as fits in `max_len`."""

from __future__ import annotations

from typing import Iterator


def rolling_token_windows(tokens: list[int], prefix_token: int, max_len: int,
                          context_len: int = 1) -> Iterator[tuple[list[int], list[int]]]:
    """(input tokens, predicted tokens) pairs; only the last len(predicted) logits are scored."""
    if not 1 <= context_len <= max_len:
        raise ValueError(f"context_len must be in [1, {max_len}], got {context_len}")
    if not tokens:
        return
    pred_len = max_len - context_len + 1
    first = min(max_len, len(tokens))
    yield [prefix_token] + tokens[: first - 1], tokens[:first]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, pred_len)
        end = done + n
        yield tokens[end - max_len - 1: end - 1], tokens[end - n: end]  # end > max_len here
        done += n


def disjoint_window(pair: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """Cut the context so it does not overlap the predicted tokens (context + predicted = input + 1)."""
    ctx, pred = pair
    return ctx[: len(ctx) - (len(pred) - 1)], pred
