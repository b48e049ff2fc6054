"""What decoding returns: `GenerationOutput` (a whole run) and `Step` (one step of a live run).

Shared by `generate`, beam search and speculative decoding, so none of them has to import
another to name its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationOutput:
    """What `generate` returns, one entry per input row.

    sequences      new token ids (an EOS or stop-string-completing token is included)
    finish_reasons "stop" (EOS or a stop string) or "length" (max_new_tokens reached)
    stop_reasons   the EOS id or stop string that ended the row, else None
    logprobs       log-probability of each chosen token under the processed distribution
    top_logprobs   per token, {token id: logprob} of the most likely alternatives
    scores         beam search: the final length-penalised score of each returned beam
    texts          with a tokenizer: the decoded new text without EOS, cut before a stop string
    """

    sequences: list[list[int]]
    finish_reasons: list[str]
    stop_reasons: list[int | str | None] = field(default_factory=list)
    logprobs: list[list[float]] | None = None
    top_logprobs: list[list[dict[int, float]]] | None = None
    scores: list[float] | None = None
    texts: list[str] | None = None
    prompt_lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sequences)


@dataclass
class Step:
    """One decoding step: `tokens[b]` was appended to row b unless `done_before[b]`."""

    index: int
    tokens: list[int]
    done_before: list[bool]
    finished: list[bool]
