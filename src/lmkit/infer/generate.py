"""`generate`: autoregressive decoding with a preallocated KV cache, batched with left padding.

One prefill forward runs every prompt at once and fills the cache; then each step feeds
only the newest token of every row (O(T) attention per token instead of O(T^2)). Per step:

    logits of the last position -> processors (penalties, n-gram, bad words) -> warpers
    (temperature, top-k, top-p, min-p; sampling only) -> argmax or a multinomial draw
    -> EOS / stop-string check per row -> next step

Batching: prompts of different lengths are left-padded so every row's newest token sits in
the same column; an attention mask hides the padding and position ids count real tokens
only, so a padded row computes exactly what it would alone. A row that has finished keeps
being fed the pad token (its output is ignored) until every row is done.

The cache, token buffer and mask are allocated once for prompt + max_new_tokens; a step
allocates nothing proportional to the sequence. `generate_text` and `stream_text` are the
text-level front ends (tokenize, generate, detokenize without splitting characters).
Beam search lives in beam_search.py, speculative decoding in speculative.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from lmkit.errors import ConfigError
from lmkit.infer.config import GenerationConfig
from lmkit.infer.fused_step import ModelRunner
from lmkit.infer.sampling import NO_TOKEN, LogitsProcessorList, build_logits_processors
from lmkit.infer.stop import StopStringMatcher


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


# ---- inputs and configuration ----------------------------------------------------------
def prepare_prompts(
    input_ids: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> list[list[int]]:
    """list[list[int]] | list[int] | tensor [T] or [B, T] (+ 1/0 mask) -> list of prompts."""
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids.detach().cpu()
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ConfigError(f"input_ids must be [batch, seq] or [seq], got shape {tuple(input_ids.shape)}")
        if attention_mask is not None:
            m = attention_mask.detach().cpu()
            if m.shape != ids.shape:
                raise ConfigError(f"attention_mask shape {tuple(m.shape)} differs from input_ids {tuple(ids.shape)}")
            prompts = [row[mrow.bool()].tolist() for row, mrow in zip(ids, m)]
        else:
            prompts = ids.tolist()
    else:
        seq = list(input_ids)
        if seq and all(isinstance(t, int) for t in seq):
            prompts = [list(seq)]
        else:
            prompts = [list(map(int, p)) for p in seq]
    if not prompts:
        raise ConfigError("no prompts given: input_ids is empty")
    for i, p in enumerate(prompts):
        if not p:
            raise ConfigError(f"prompt {i} is empty: give at least one token (e.g. the BOS token)")
    return prompts


def resolve_config(model, config: GenerationConfig | None = None, **overrides: Any) -> GenerationConfig:
    """config (or defaults) with overrides applied, and EOS/pad filled in from the model's config."""
    cfg = (config or GenerationConfig()).replace(**overrides) if overrides else (config or GenerationConfig())
    mcfg = getattr(model, "config", None)
    if cfg.eos_token_id is None and mcfg is not None:
        extra = getattr(mcfg, "extra", None) or {}
        eos = extra.get("eos_token_id") if isinstance(extra.get("eos_token_id"), list) else None
        eos = eos if eos is not None else getattr(mcfg, "eos_token_id", None)
        if eos is not None:
            cfg = cfg.replace(eos_token_id=eos)
    if cfg.pad_token_id is None:
        pad = getattr(mcfg, "pad_token_id", None) if mcfg is not None else None
        if pad is None:
            pad = cfg.eos_token_ids[0] if cfg.eos_token_ids else 0
        cfg = cfg.replace(pad_token_id=pad)
    return cfg


def check_fits(model, prompts: list[list[int]], cfg: GenerationConfig) -> None:
    """Clear errors for prompts the model cannot take: too long, or ids outside the vocabulary."""
    mcfg = model.config
    longest = max(len(p) for p in prompts)
    if longest + cfg.max_new_tokens > mcfg.max_seq_len:
        raise ConfigError(
            f"prompt of {longest} tokens + max_new_tokens={cfg.max_new_tokens} = "
            f"{longest + cfg.max_new_tokens} is longer than the model's context "
            f"(max_seq_len={mcfg.max_seq_len}); shorten the prompt or lower max_new_tokens"
        )
    vocab = mcfg.vocab_size
    for i, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"prompt {i} has token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
    for name, ids in (("eos_token_id", cfg.eos_token_ids), ("pad_token_id", [cfg.pad_token_id])):
        bad = [t for t in ids if t is not None and not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"{name} {bad} is outside the model's vocabulary [0, {vocab})")


def make_generator(cfg: GenerationConfig, device: torch.device) -> torch.Generator | None:
    """A private RNG for `seed` (same seed, same inputs -> same output); None uses torch's global RNG."""
    if cfg.seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    return gen


def token_bytes_fn(tokenizer, skip_ids: Sequence[int] = ()):
    """token id -> the bytes it adds to the text (b"" for EOS and other skipped ids)."""
    skip = frozenset(skip_ids)
    if callable(getattr(tokenizer, "token_bytes", None)):
        tb = tokenizer.token_bytes
        return lambda i: b"" if i in skip else tb(i)
    return lambda i: b"" if i in skip else tokenizer.decode([i]).encode("utf-8")


# ---- the decoding loop -----------------------------------------------------------------
@dataclass
class Step:
    """One decoding step: `tokens[b]` was appended to row b unless `done_before[b]`."""

    index: int
    tokens: list[int]
    done_before: list[bool]
    finished: list[bool]


class _Decoder:
    """State of one batched greedy/sampling run; `steps()` yields a `Step` per new token."""

    def __init__(self, model, prompts: list[list[int]], cfg: GenerationConfig, tokenizer=None) -> None:
        if cfg.stop and tokenizer is None:
            raise ConfigError("stop strings need the tokenizer: pass tokenizer=... to generate()")
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        p = next(model.parameters())
        self.device = p.device
        self.prompts = prompts
        self.b = b = len(prompts)
        self.lens = [len(q) for q in prompts]
        self.t = t = max(self.lens)
        self.total = t + cfg.max_new_tokens
        self.eos = cfg.eos_token_ids
        self.pad = int(cfg.pad_token_id)
        self.procs: LogitsProcessorList = build_logits_processors(cfg, t, self.eos)
        self.gen = make_generator(cfg, self.device)
        # token history (prompt left-padded with NO_TOKEN) for the processors
        self.tokens = torch.full((b, self.total), NO_TOKEN, dtype=torch.long)
        for i, q in enumerate(prompts):
            self.tokens[i, t - len(q) : t] = torch.tensor(q, dtype=torch.long)
        self.tokens = self.tokens.to(self.device)
        self.padded = any(n != t for n in self.lens)
        self.mask = None
        if self.padded:
            mask = torch.zeros(b, self.total, dtype=torch.long)
            for i, n in enumerate(self.lens):
                mask[i, t - n :] = 1
            self.mask = mask.to(self.device)
        self.matchers = [StopStringMatcher(cfg.stop) for _ in range(b)] if cfg.stop else None
        self.token_bytes = token_bytes_fn(tokenizer, self.eos) if cfg.stop else None
        self.lengths = [cfg.max_new_tokens] * b
        self.stop_reasons: list[int | str | None] = [None] * b
        self.logprobs: list[torch.Tensor] = []
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.inference_mode()
    def steps(self) -> Iterator[Step]:
        cfg, model, b, t = self.cfg, self.model, self.b, self.t
        cache = model.make_cache(b, self.total)
        runner = ModelRunner(model, b, self.total, self.mask, cfg.fused, compiled=cfg.compile)
        logits = runner.prefill(self.tokens[:, :t].clamp(min=0), cache)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        done_list = [False] * b
        procs, do_sample, want_lp, eos = self.procs, cfg.do_sample, cfg.logprobs, frozenset(self.eos)
        for step in range(cfg.max_new_tokens):
            scores = logits[:, -1].float()
            if procs:
                scores = procs(self.tokens[:, : t + step], scores)
            if do_sample:
                probs = torch.softmax(scores, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=self.gen).squeeze(1)
            else:
                nxt = scores.argmax(dim=-1)
            if want_lp:
                self._record_logprobs(scores, nxt)
            before = done_list
            if any(before):
                nxt = nxt.masked_fill(done, self.pad)
            self.tokens[:, t + step] = nxt
            ids = nxt.tolist()
            if eos:
                for i, tok in enumerate(ids):
                    if tok in eos and not before[i]:
                        self._finish(i, step, tok)
            if self.matchers is not None:
                for i in range(b):
                    if self.stop_reasons[i] is None and self.matchers[i].push(self.token_bytes(ids[i])) is not None:
                        self._finish(i, step, self.matchers[i].matched)
            done_list = [r is not None for r in self.stop_reasons]
            yield Step(step, ids, before, done_list)
            if all(done_list) or step == cfg.max_new_tokens - 1:
                break
            if done_list != before:
                done = torch.tensor(done_list, device=self.device)
            logits = runner.step(nxt[:, None], cache)

    def _finish(self, i: int, step: int, reason: int | str | None) -> None:
        if self.stop_reasons[i] is None:
            self.stop_reasons[i] = reason
            self.lengths[i] = step + 1

    def _record_logprobs(self, scores: torch.Tensor, nxt: torch.Tensor) -> None:
        lsm = torch.log_softmax(scores, dim=-1)
        self.logprobs.append(lsm.gather(1, nxt[:, None]).squeeze(1))
        if self.cfg.top_logprobs:
            self.top.append(torch.topk(lsm, min(self.cfg.top_logprobs, lsm.shape[-1]), dim=-1))

    def output(self) -> GenerationOutput:
        t = self.t
        new = self.tokens[:, t:].tolist()
        seqs = [new[i][: self.lengths[i]] for i in range(self.b)]
        steps_run = max(len(s) for s in seqs)
        seqs = [s[:steps_run] for s in seqs]
        reasons = ["stop" if r is not None else "length" for r in self.stop_reasons]
        out = GenerationOutput(seqs, reasons, list(self.stop_reasons), prompt_lengths=list(self.lens))
        if self.cfg.logprobs:
            lp = torch.stack(self.logprobs, 1).tolist() if self.logprobs else [[] for _ in range(self.b)]
            out.logprobs = [lp[i][: len(seqs[i])] for i in range(self.b)]
            if self.cfg.top_logprobs:
                vals = torch.stack([v for v, _ in self.top], 1).tolist()
                idx = torch.stack([j for _, j in self.top], 1).tolist()
                out.top_logprobs = [
                    [dict(zip(idx[i][s], vals[i][s])) for s in range(len(seqs[i]))] for i in range(self.b)
                ]
        if self.tokenizer is not None:
            out.texts = [decode_output(self.tokenizer, s, self.cfg.stop, self.eos) for s in seqs]
        return out


def decode_output(tokenizer, ids: Sequence[int], stop: Sequence[str] | None, eos: Sequence[int]) -> str:
    """Text of generated ids: EOS dropped, characters never split, cut before a stop string."""
    from lmkit.infer.streaming import TextStream

    stream = TextStream(tokenizer, stop, skip_ids=eos)
    parts = []
    for i in ids:
        parts.append(stream.push(i))
        if stream.stopped:
            break
    parts.append(stream.finish())
    return "".join(parts)


# ---- public API ------------------------------------------------------------------------
def generate(
    model,
    input_ids: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor,
    config: GenerationConfig | None = None,
    *,
    tokenizer=None,
    attention_mask: torch.Tensor | None = None,
    **overrides: Any,
) -> GenerationOutput:
    """Generate continuations of each prompt; keyword overrides change single config fields.

    input_ids: prompts as lists of token ids (any lengths) or a [B, T] tensor (with an
    optional 1/0 attention_mask marking padding). tokenizer: needed for stop strings; when
    given, `GenerationOutput.texts` holds the decoded continuations.
    """
    cfg = resolve_config(model, config, **overrides)
    prompts = prepare_prompts(input_ids, attention_mask)
    check_fits(model, prompts, cfg)
    if cfg.num_beams > 1:
        from lmkit.infer.beam_search import beam_search

        out = beam_search(model, prompts, cfg)
        if tokenizer is not None:
            out.texts = [decode_output(tokenizer, s, None, cfg.eos_token_ids) for s in out.sequences]
        return out
    dec = _Decoder(model, prompts, cfg, tokenizer)
    for _ in dec.steps():
        pass
    return dec.output()


def iter_steps(model, input_ids, config: GenerationConfig | None = None, *, tokenizer=None,
               attention_mask: torch.Tensor | None = None, **overrides: Any) -> Iterator[Step]:
    """The decoding loop as an iterator of `Step`s (for streaming); greedy/sampling only."""
    cfg = resolve_config(model, config, **overrides)
    if cfg.num_beams > 1:
        raise ConfigError("streaming is not available with beam search (the best beam is only known at the end)")
    prompts = prepare_prompts(input_ids, attention_mask)
    check_fits(model, prompts, cfg)
    return _Decoder(model, prompts, cfg, tokenizer).steps()


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Tokenize a prompt; special tokens written in the text (chat templates) are recognised."""
    try:
        return tokenizer.encode(prompt, allowed_special="all")
    except TypeError:
        return tokenizer.encode(prompt)


def generate_text(model, tokenizer, prompt: str | list[str], config: GenerationConfig | None = None,
                  **overrides: Any) -> str | list[str]:
    """Text in, text out: the continuation of `prompt` (or of each prompt in a list)."""
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    out = generate(model, [encode_prompt(tokenizer, p) for p in prompts], config, tokenizer=tokenizer, **overrides)
    return out.texts[0] if single else out.texts


def stream_text(model, tokenizer, prompt: str, config: GenerationConfig | None = None,
                **overrides: Any) -> Iterator[str]:
    """Yield text deltas of the continuation of `prompt` as they are generated.

    Deltas never split a UTF-8 character and never show text that may turn out to be part
    of a stop string; joined, they equal `generate_text(...)` with the same arguments.
    """
    from lmkit.infer.streaming import stream_tokens_to_text

    cfg = resolve_config(model, config, **overrides)

    def tokens() -> Iterator[int]:
        for step in iter_steps(model, [encode_prompt(tokenizer, prompt)], cfg, tokenizer=tokenizer):
            if step.done_before[0]:
                return
            yield step.tokens[0]

    yield from stream_tokens_to_text(tokenizer, tokens(), cfg.stop, skip_ids=cfg.eos_token_ids)
