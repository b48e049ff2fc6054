"""Logits processors and warpers: how the next-token scores are reshaped before choosing.

Every processor is a callable ``(input_ids [B, T], scores [B, V]) -> scores [B, V]`` (the
same protocol as Hugging Face's, so each is tested against its HF counterpart). input_ids
hold the prompt and the tokens generated so far; a negative id (``NO_TOKEN``) marks a
left-padding slot and is ignored. Processors return new tensors and never modify their input.

Processors (every decoding mode), applied first, in Hugging Face's order:
  repetition penalty      CTRL (Keskar et al. 2019): for every token already in the prompt or
                          the output, logit / p if positive, logit * p if negative (p > 1
                          discourages repeats).
  presence / frequency    OpenAI: logit -= presence * [count > 0] + frequency * count, counted
                          over the *generated* tokens only.
  no-repeat n-gram        an n-gram may occur once: ban every token that would complete an
                          n-gram already present.
  bad words               ban the last token of each listed sequence when the text so far ends
                          with the rest of that sequence.
  min new tokens          forbid EOS before a minimum number of new tokens.
Warpers (sampling only), after the processors:
  temperature             logits / T: T < 1 sharpens, T > 1 flattens the distribution.
  top-k                   keep the k highest-scoring tokens.
  top-p (nucleus)         keep the smallest set of top tokens whose probability reaches p
                          (Holtzman et al. 2019).
  min-p                   keep tokens whose probability is at least min_p * p(top token)
                          (scales the cut-off with the model's confidence).
Watermark (infer/watermark.py), last of all: the green-list bonus (Kirchenbauer et al.).
Removed tokens get -inf, so softmax gives them probability exactly 0.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from lmkit.infer.config import GenerationConfig

NO_TOKEN = -1
NEG_INF = float("-inf")


class LogitsProcessor(Protocol):
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


class LogitsProcessorList(list):
    """Processors applied in order."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for proc in self:
            scores = proc(input_ids, scores)
        return scores


def _ids_with_spare(input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Map padding (negative) and out-of-vocabulary ids to the spare column `vocab_size`."""
    return torch.where((input_ids < 0) | (input_ids >= vocab_size), vocab_size, input_ids)


# ---- processors ------------------------------------------------------------------------
class RepetitionPenaltyLogitsProcessor:
    """CTRL repetition penalty over every token seen so far (prompt included)."""

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        v = scores.shape[-1]
        ids = _ids_with_spare(input_ids, v)
        padded = torch.nn.functional.pad(scores, (0, 1))
        seen = torch.gather(padded, 1, ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return padded.scatter(1, ids, seen)[:, :v]


class PresenceFrequencyPenaltyLogitsProcessor:
    """OpenAI penalties: logit -= presence * [count > 0] + frequency * count over generated tokens.

    prompt_len: number of input_ids columns that are prompt (the rest are generated).
    """

    def __init__(self, presence_penalty: float, frequency_penalty: float, prompt_len: int) -> None:
        self.presence = float(presence_penalty)
        self.frequency = float(frequency_penalty)
        self.prompt_len = int(prompt_len)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, v = scores.shape
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        ids = _ids_with_spare(generated, v)
        counts = torch.zeros(b, v + 1, dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=scores.dtype))
        counts = counts[:, :v]
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


class NoRepeatNGramLogitsProcessor:
    """Ban tokens that would repeat an n-gram of size `ngram_size` already in input_ids."""

    def __init__(self, ngram_size: int) -> None:
        if ngram_size <= 0:
            raise ValueError(f"no_repeat_ngram_size must be > 0, got {ngram_size}")
        self.n = int(ngram_size)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        if t < self.n:
            return scores
        v = scores.shape[-1]
        ids = _ids_with_spare(input_ids, v)
        if self.n == 1:  # every token seen once is banned
            banned = torch.zeros(scores.shape[0], v + 1, dtype=torch.bool, device=scores.device)
            return scores.masked_fill(banned.scatter_(1, ids, True)[:, :v], NEG_INF)
        prefix = ids[:, t - self.n + 1 :]  # the last n-1 tokens
        windows = ids.unfold(1, self.n, 1)  # [B, T-n+1, n]
        matches = (windows[..., :-1] == prefix[:, None]).all(-1) & (prefix < v).all(-1, keepdim=True)
        target = torch.where(matches, windows[..., -1], v)
        banned = torch.zeros(scores.shape[0], v + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, target, True)
        return scores.masked_fill(banned[:, :v], NEG_INF)


class NoBadWordsLogitsProcessor:
    """Ban each listed sequence: its last token is forbidden when the context ends with the rest.

    As in Hugging Face, a one-token bad word equal to an EOS id is dropped (banning EOS
    outright would make generation run to the length limit).
    """

    def __init__(self, bad_words_ids: Sequence[Sequence[int]], eos_token_id: int | Sequence[int] | None = None):
        eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        seqs = [list(map(int, s)) for s in bad_words_ids if not (len(s) == 1 and s[0] in eos)]
        if any(not s for s in seqs):
            raise ValueError("bad_words_ids must not contain an empty sequence")
        self.single = sorted({s[0] for s in seqs if len(s) == 1})
        by_len: dict[int, list[list[int]]] = {}
        for s in seqs:
            if len(s) > 1:
                by_len.setdefault(len(s) - 1, []).append(s)
        self.multi = [
            (torch.tensor([s[:-1] for s in group]), torch.tensor([s[-1] for s in group])) for group in by_len.values()
        ]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, v = scores.shape
        banned = torch.zeros(b, v + 1, dtype=torch.bool, device=scores.device)
        if self.single:
            idx = torch.tensor(self.single, device=scores.device).clamp(max=v)
            banned[:, idx] = True
        for prefixes, last in self.multi:
            n = prefixes.shape[1]
            if n > input_ids.shape[1]:
                continue
            prefixes, last = prefixes.to(input_ids.device), last.to(input_ids.device)
            match = (input_ids[:, None, -n:] == prefixes[None]).all(-1)  # [B, n_seqs]
            target = torch.where(match, last.clamp(max=v)[None], v)
            banned.scatter_(1, target, True)
        return scores.masked_fill(banned[:, :v], NEG_INF)


class MinNewTokensLogitsProcessor:
    """Forbid EOS until `min_new_tokens` tokens have been generated after `prompt_len`."""

    def __init__(self, prompt_len: int, min_new_tokens: int, eos_token_id: int | Sequence[int]) -> None:
        self.prompt_len = int(prompt_len)
        self.min_new_tokens = int(min_new_tokens)
        self.eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] - self.prompt_len >= self.min_new_tokens or not self.eos:
            return scores
        out = scores.clone()
        out[:, [i for i in self.eos if i < scores.shape[-1]]] = NEG_INF
        return out


# ---- warpers ---------------------------------------------------------------------------
class TemperatureLogitsWarper:
    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature} (use do_sample=False for greedy)")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsWarper:
    """Keep the top_k highest scores (ties with the k-th are kept too)."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1) -> None:
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        self.top_k = max(int(top_k), int(min_tokens_to_keep))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopPLogitsWarper:
    """Nucleus sampling: drop the least likely tokens whose total probability is <= 1 - top_p."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        self.top_p = float(top_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = torch.sort(scores, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - self.top_p)
        remove_sorted[..., -self.min_tokens_to_keep :] = False
        remove = remove_sorted.scatter(1, order, remove_sorted)
        return scores.masked_fill(remove, NEG_INF)


class MinPLogitsWarper:
    """Keep tokens with probability >= min_p * (probability of the most likely token)."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        self.min_p = float(min_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        remove = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        keep = torch.topk(probs, min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
        remove.scatter_(-1, keep, False)
        return scores.masked_fill(remove, NEG_INF)


# ---- assembly --------------------------------------------------------------------------
def build_logits_processors(
    config: GenerationConfig, prompt_len: int, eos_token_ids: Sequence[int] = (), warpers: bool | None = None
) -> LogitsProcessorList:
    """The processors `config` asks for, in Hugging Face's order (processors, then warpers).

    prompt_len: columns of input_ids that are prompt (left padding included).
    warpers: include temperature/top-k/top-p/min-p (default: when config.do_sample).
    """
    eos = list(eos_token_ids)
    procs = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.presence_penalty or config.frequency_penalty:
        procs.append(PresenceFrequencyPenaltyLogitsProcessor(config.presence_penalty, config.frequency_penalty, prompt_len))
    if config.no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.bad_words_ids:
        procs.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos))
    if config.min_new_tokens and eos:
        procs.append(MinNewTokensLogitsProcessor(prompt_len, config.min_new_tokens, eos))
    if config.do_sample if warpers is None else warpers:
        # beam sampling keeps one non-EOS candidate per beam beyond the EOS ones (as HF)
        keep = len(eos) + 1 if config.num_beams > 1 else 1
        if config.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            procs.append(TopKLogitsWarper(config.top_k, keep))
        if config.top_p < 1.0:
            procs.append(TopPLogitsWarper(config.top_p, keep))
        if config.min_p is not None:
            procs.append(MinPLogitsWarper(config.min_p, keep))
    if config.watermark is not None:  # last, after every other reshaping (as HF, transformers#34630)
        from lmkit.infer.watermark import WatermarkLogitsProcessor

        procs.append(WatermarkLogitsProcessor(config.watermark))
    return procs
