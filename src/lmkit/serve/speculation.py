"""Speculative decoding in the server: n-gram prompt lookup proposes, the target verifies.

Prompt lookup decoding (Saxena 2023; vLLM's `ngram` speculator, transformers'
`prompt_lookup_num_tokens`) needs no draft model: the newest n tokens of a request (n from
`max_ngram` down to `min_ngram`) are searched for in its own earlier tokens (prompt and output),
and the K tokens that followed the latest earlier match are the proposal. Summaries, code edits,
retrieval answers and chat that quotes its context repeat long spans, so many drafts are right.

The target model scores the pending token and the K drafts in ONE forward (a decode step of
K+1 tokens) and keeps the drafts up to the first one that differs from its own greedy choice,
plus its own next token (lmkit.infer.speculative.verify_drafts, the same rule
`speculative_generate` uses). Every emitted token is the target's argmax given the tokens
before it, so greedy output is identical to decoding without speculation; only the number of
target forwards changes (1 to K+1 tokens per forward).

With `--draft-model DIR` a small model of the same vocabulary proposes instead
(`DraftModelSpeculator`: greedy drafts from its own KV cache, which follows the request's
tokens: the prefix it shares with the last call is kept, the rest is fed again).

Scope (the hook in engine.py): the engine speculates only when a single request is running and
none waits, and only for a plain greedy request (no sampling, logits processors, logprobs or
structured-output constraint). A batch of several rows keeps one token per row per step: a
shared KV cache whose rows accept different numbers of drafts would need per-row lengths (the
paged cache has them; this hook predates it). With many requests in flight the batch already
fills the hardware; speculation pays where one stream leaves it idle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from lmkit.errors import ConfigError
from lmkit.infer.runner import ModelRunner
from lmkit.infer.speculative import verify_drafts
from lmkit.infer.vocab_padding import mask_unrenderable

SPECULATIVE_METHODS = ("ngram", "draft")


@dataclass
class SpeculationStats:
    """Counters for /metrics: drafts proposed and accepted, and the verifying forwards."""

    proposed: int = 0
    accepted: int = 0
    steps: int = 0  # target forwards that verified at least one draft

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


class NgramSpeculator:
    """Proposes up to `num_tokens` drafts by n-gram lookup in a request's own tokens."""

    def __init__(self, num_tokens: int = 4, max_ngram: int = 3, min_ngram: int = 1,
                 window: int = 4096) -> None:
        if not isinstance(num_tokens, int) or num_tokens < 1:
            raise ConfigError(f"num_speculative_tokens must be an integer >= 1, got {num_tokens!r}")
        if not 1 <= min_ngram <= max_ngram:
            raise ConfigError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.num_tokens = num_tokens
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.window = window  # search only the newest tokens: a proposal costs O(window), not O(context)
        self.stats = SpeculationStats()
        self._lock = threading.Lock()

    def propose(self, tokens: list[int], limit: int) -> list[int]:
        """Up to min(num_tokens, limit) tokens that followed the latest earlier match of the newest n-gram."""
        k = min(self.num_tokens, limit)
        if k <= 0:
            return []
        ctx = tokens[-self.window:]
        n_ctx = len(ctx)
        for n in range(min(self.max_ngram, n_ctx - 1), self.min_ngram - 1, -1):
            tail = ctx[n_ctx - n:]
            for start in range(n_ctx - n - 1, -1, -1):  # latest match first, never the tail itself
                if ctx[start:start + n] == tail:
                    follow = ctx[start + n:start + n + k]
                    if follow:
                        return follow
        return []

    def verify(self, logits: torch.Tensor, drafts: list[int]) -> tuple[int, int]:
        """Target scores [g+1, V] of the pending token and the g drafts -> (drafts kept, next token)."""
        g = len(drafts)
        p = logits[None]  # greedy: verify_drafts compares argmaxes, scores serve as well as probabilities
        q = logits.new_zeros(1, g, 1)  # the draft distribution is not used when decoding greedily
        accepted, nxt = verify_drafts(p, q, torch.tensor([drafts], device=logits.device), False)
        return int(accepted[0]), int(nxt[0])

    def record(self, proposed: int, accepted: int) -> None:
        with self._lock:
            self.stats.proposed += proposed
            self.stats.accepted += accepted
            self.stats.steps += 1


class DraftModelSpeculator(NgramSpeculator):
    """Proposes greedy drafts with a small draft model (same vocabulary as the target).

    Called from the engine thread only. The draft's KV cache holds the tokens of the last call;
    a new call keeps the prefix they share (a rejected draft, or another request, cuts it) and
    feeds the rest, so a request costs the draft one prefill and then a few steps per round.
    """

    def __init__(self, draft, target_vocab: int, num_tokens: int = 4, vocab_limit: int | None = None) -> None:
        super().__init__(num_tokens)
        if draft.config.vocab_size != target_vocab:
            raise ConfigError(f"the draft model must share the target's vocabulary: vocab sizes "
                              f"{draft.config.vocab_size} (draft) != {target_vocab} (target)")
        self.draft = draft.eval()
        self.vocab_limit = vocab_limit
        self.device = next(draft.parameters()).device
        self._cache = None
        self._ids: list[int] = []  # the tokens whose keys and values are in self._cache

    def propose(self, tokens: list[int], limit: int) -> list[int]:
        k = min(self.num_tokens, limit)
        total = self.draft.config.max_seq_len
        if k <= 0 or len(tokens) + k > total:
            return []
        if self._cache is None:
            self._cache = self.draft.make_cache(1, total)
            self._runner = ModelRunner(self.draft, 1, total, None)
        same = 0
        for a, b in zip(self._ids, tokens[:-1]):  # the newest token is always fed: its logits are needed
            if a != b:
                break
            same += 1
        self._cache.truncate(same)
        self._ids = list(tokens[:same])
        feed, drafts = list(tokens[same:]), []
        with torch.inference_mode():
            for _ in range(k):
                ids = torch.tensor([feed], dtype=torch.long, device=self.device)
                run = self._runner.step if self._cache.seq_len else self._runner.prefill
                logits = mask_unrenderable(run(ids, self._cache)[0, -1].float(), self.vocab_limit)
                self._ids += feed
                feed = [int(logits.argmax())]
                drafts.append(feed[0])
        return drafts


def make_speculator(method: str | None, num_tokens: int = 4, draft=None, target_vocab: int | None = None,
                    vocab_limit: int | None = None) -> NgramSpeculator | None:
    """The speculator a server option names (None: no speculation); "draft" needs the draft model."""
    if method is None or method == "none":
        return None
    if method == "ngram":
        return NgramSpeculator(num_tokens)
    if method == "draft":
        if draft is None or target_vocab is None:
            raise ConfigError("--speculative draft needs --draft-model DIR")
        return DraftModelSpeculator(draft, target_vocab, num_tokens, vocab_limit)
    raise ConfigError(f"unknown speculative method {method!r}: choose one of {', '.join(SPECULATIVE_METHODS)}")
