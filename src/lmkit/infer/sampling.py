"""Logits processors and warpers: how the next-token scores are reshaped before choosing.

Every processor is a callable ``(input_ids [B, L], scores [B, V]) -> scores [B, V]`` like
Hugging Face's, and each one computes exactly what its HF namesake computes (the tests
check this on random scores). ``input_ids`` is the history of each row so far; negative
ids mark padding (left padding of a shorter prompt) and are ignored everywhere.

Penalties (always applied):
  repetition     CTRL / HF: for every token seen so far (prompt included) a positive logit is
                 divided by the penalty and a negative one multiplied, so > 1 discourages it.
  presence /     OpenAI: logit -= presence * [count > 0] + frequency * count, counting only
  frequency      the *generated* tokens (the columns after `prompt_len`).
  no-repeat      ban any token that would complete an n-gram already present.
  n-gram
  bad words      ban token sequences: single tokens always, longer ones when their prefix
                 is the end of the history.
  min new        forbid EOS until `min_new_tokens` tokens have been generated.
Warpers (sampling only), in HF's order:
  temperature    scores / T: T < 1 sharpens, T > 1 flattens the distribution.
  top-k          keep the k highest scores.
  top-p          nucleus: keep the smallest set of tokens whose probability reaches p.
  min-p          keep tokens whose probability is at least min_p times the top token's.
Removed tokens get -inf, so softmax gives them probability 0.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from lmkit.infer.config import GenerationConfig

NEG_INF = float("-inf")


class LogitsProcessor:
    """Base class: subclasses implement ``__call__(input_ids, scores) -> scores``."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class LogitsProcessorList(list):
    """Processors applied one after the other."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for p in self:
            scores = p(input_ids, scores)
        return scores


def _per_row(value: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, device=device).reshape(-1).expand(batch)


# ---- penalties ----------------------------------------------------------------------------
class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """CTRL's repetition penalty (Keskar et al. 2019) as HF applies it: to every token in the history."""

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        ids = input_ids.masked_fill((input_ids < 0) | (input_ids >= vocab), vocab)  # padding -> spare column
        padded = torch.nn.functional.pad(scores, (0, 1))
        seen = padded.gather(1, ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return padded.scatter(1, ids, seen)[:, :vocab]


class PresenceFrequencyPenaltyLogitsProcessor(LogitsProcessor):
    """OpenAI's penalties over the generated tokens: logit -= presence*[count>0] + frequency*count.

    `prompt_len` is how many leading columns of input_ids are prompt (an int, or one per row).
    """

    def __init__(self, presence_penalty: float, frequency_penalty: float, prompt_len: int | torch.Tensor) -> None:
        self.presence = float(presence_penalty)
        self.frequency = float(frequency_penalty)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, length = input_ids.shape
        vocab = scores.shape[-1]
        if isinstance(self.prompt_len, int):
            gen = input_ids[:, self.prompt_len:]
            ids = gen.masked_fill((gen < 0) | (gen >= vocab), vocab)
        else:
            cols = torch.arange(length, device=input_ids.device)
            start = _per_row(self.prompt_len, b, input_ids.device)
            drop = (cols[None] < start[:, None]) | (input_ids < 0) | (input_ids >= vocab)
            ids = input_ids.masked_fill(drop, vocab)
        counts = torch.zeros(b, vocab + 1, dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=scores.dtype))
        counts = counts[:, :vocab]
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Ban every token that would repeat an n-gram of the history (Paulus et al. 2017)."""

    def __init__(self, ngram_size: int) -> None:
        if ngram_size <= 0:
            raise ValueError(f"ngram_size must be > 0, got {ngram_size}")
        self.n = int(ngram_size)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[-1]
        if length < self.n:
            return scores
        # the last n-1 tokens are the prefix; every earlier window starting with it bans its last token
        prefix = input_ids[:, length + 1 - self.n:]
        windows = input_ids.unfold(1, self.n, 1)  # [B, L-n+1, n]
        matches = (windows[..., :-1] == prefix[:, None]).all(-1) & (windows >= 0).all(-1)
        vocab = scores.shape[-1]
        last = windows[..., -1].clamp(max=vocab)
        banned = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(matches, last, vocab), True)
        return scores.masked_fill(banned[:, :vocab], NEG_INF)


class NoBadWordsLogitsProcessor(LogitsProcessor):
    """Forbid token sequences: a sequence's last token is banned when the history ends with its prefix.

    As in HF, a bad word that is just an EOS token is ignored (it would make stopping impossible).
    """

    def __init__(self, bad_words_ids: Sequence[Sequence[int]], eos_token_id: int | Iterable[int] | None = None) -> None:
        eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        words = [list(w) for w in bad_words_ids if not (len(w) == 1 and w[0] in eos)]
        if not bad_words_ids or any(len(w) == 0 or min(w) < 0 for w in bad_words_ids):
            raise ValueError("bad_words_ids must be a non-empty list of non-empty lists of token ids >= 0")
        self.single = sorted({w[0] for w in words if len(w) == 1})
        groups: dict[int, list[list[int]]] = {}
        for w in words:
            if len(w) > 1:
                groups.setdefault(len(w) - 1, []).append(w)
        self.groups = [(torch.tensor([w[:-1] for w in g]), torch.tensor([w[-1] for w in g])) for g in groups.values()]
        self.words = words
        self.max_id = max((t for w in words for t in w), default=-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        if self.max_id >= vocab:
            bad = sorted({t for w in self.words for t in w if t >= vocab})
            raise ValueError(f"bad_words_ids: token ids {bad} are outside the model vocabulary of {vocab}")
        banned = torch.zeros_like(scores, dtype=torch.bool)
        if self.single:
            banned[:, self.single] = True
        for prefixes, last in self.groups:
            m = prefixes.shape[1]
            if m > input_ids.shape[1]:
                continue
            prefixes, last = prefixes.to(input_ids.device), last.to(input_ids.device)
            hit = (input_ids[:, None, -m:] == prefixes[None]).all(-1)  # [B, n_words]
            rows, words = hit.nonzero(as_tuple=True)
            banned[rows, last[words]] = True
        return scores.masked_fill(banned, NEG_INF)


class MinNewTokensLogitsProcessor(LogitsProcessor):
    """EOS gets -inf until a row has generated `min_new_tokens` (HF's MinNewTokensLengthLogitsProcessor)."""

    def __init__(self, prompt_len: int | torch.Tensor, min_new_tokens: int, eos_token_id: int | Iterable[int]) -> None:
        self.prompt_len = prompt_len
        self.min_new = int(min_new_tokens)
        self.eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        new = input_ids.shape[1] - _per_row(self.prompt_len, scores.shape[0], scores.device)
        early = new < self.min_new
        if not bool(early.any()):
            return scores
        is_eos = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        is_eos[[e for e in self.eos if e < scores.shape[-1]]] = True
        return scores.masked_fill(early[:, None] & is_eos[None], NEG_INF)


# ---- warpers ------------------------------------------------------------------------------
class TemperatureLogitsWarper(LogitsProcessor):
    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature} (use greedy decoding for 0)")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """Keep the k highest scores (ties with the k-th are kept too)."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1) -> None:
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        self.top_k = max(int(top_k), min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1:]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus sampling (Holtzman et al. 2019): the smallest set of tokens with probability >= p."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0 <= top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        self.top_p = float(top_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = torch.sort(scores, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        remove = cum <= 1 - self.top_p  # the low tail whose total mass is at most 1 - p
        remove[..., -self.min_tokens_to_keep:] = False
        remove = remove.scatter(1, order, remove)
        return scores.masked_fill(remove, NEG_INF)


class MinPLogitsWarper(LogitsProcessor):
    """Min-p sampling (Nguyen et al. 2024): drop tokens less likely than min_p x the top token."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        self.min_p = float(min_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(-1)
        remove = probs < self.min_p * probs.amax(-1, keepdim=True)
        keep = torch.topk(probs, min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
        remove.scatter_(-1, keep, False)
        return scores.masked_fill(remove, NEG_INF)


# ---- assembly -----------------------------------------------------------------------------
def build_logits_processors(
    config: GenerationConfig, prompt_len: int | torch.Tensor, min_tokens_to_keep: int = 1
) -> LogitsProcessorList:
    """The processors `config` asks for, in Hugging Face's order (penalties, then warpers).

    presence/frequency penalties (not in HF) come right after the repetition penalty.
    `prompt_len`: leading columns of the history that are prompt (int or per row).
    """
    out = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.presence_penalty or config.frequency_penalty:
        out.append(PresenceFrequencyPenaltyLogitsProcessor(config.presence_penalty, config.frequency_penalty,
                                                           prompt_len))
    if config.no_repeat_ngram_size:
        out.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.bad_words_ids:
        out.append(NoBadWordsLogitsProcessor(config.bad_words_ids, config.eos_ids))
    if config.min_new_tokens and config.eos_ids:
        out.append(MinNewTokensLogitsProcessor(prompt_len, config.min_new_tokens, config.eos_ids))
    if config.do_sample:
        if config.temperature != 1.0:
            out.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            out.append(TopKLogitsWarper(config.top_k, min_tokens_to_keep))
        if config.top_p < 1.0:
            out.append(TopPLogitsWarper(config.top_p, min_tokens_to_keep))
        if config.min_p is not None:
            out.append(MinPLogitsWarper(config.min_p, min_tokens_to_keep))
    return out


def choose_tokens(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, V] processed scores -> [B] token ids: argmax, or a draw from softmax(scores)."""
    if not do_sample:
        return scores.argmax(-1)
    probs = scores.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
