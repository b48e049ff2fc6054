"""The batched greedy/sampling loop behind `generate`, `iter_steps` and `stream_text`.

One prefill forward runs every prompt at once and fills the cache; then each step feeds
only the newest token of every row (O(T) attention per token instead of O(T^2)). Per step:

    logits of the last position -> select_tokens (ids the tokenizer cannot render masked out,
    the row's constraint's allowed ids (structured output; constraint.py), processors,
    warpers, argmax or a draw, logprobs; select.py) -> StopTracker per row (EOS,
    stop string, max tokens; stop.py) -> next step through the ModelRunner (runner.py)

Batching: prompts of different lengths are left-padded so every row's newest token sits in
the same column; an attention mask hides the padding and position ids count real tokens
only, so a padded row computes exactly what it would alone. A row that has finished keeps
being fed the pad token (its output is ignored) until every row is done.

The cache, token buffer and mask are allocated once for prompt + max_new_tokens; a step
allocates nothing proportional to the sequence.
"""

from __future__ import annotations

from typing import Iterator

import torch

from lmkit.errors import ConfigError
from lmkit.infer import compiled_step
from lmkit.infer.config import GenerationConfig
from lmkit.infer.constraint import ConstraintArg, allowed_rows, row_constraints
from lmkit.infer.inputs import left_pad
from lmkit.infer.output import GenerationOutput, Step
from lmkit.infer.runner import ModelRunner
from lmkit.models.quantized_kv_cache import make_kv_cache
from lmkit.infer.sampling import NO_TOKEN, LogitsProcessorList, build_logits_processors
from lmkit.infer.select import make_generator, select_tokens
from lmkit.infer.stop import StopTracker
from lmkit.infer.vocab_padding import renderable_size


class Decoder:
    """State of one batched greedy/sampling run; `steps()` yields a `Step` per new token."""

    def __init__(self, model, prompts: list[list[int]], cfg: GenerationConfig, tokenizer=None,
                 constraint: ConstraintArg = None) -> None:
        if cfg.stop and tokenizer is None:
            raise ConfigError("stop strings need the tokenizer: pass tokenizer=... to generate()")
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.device = next(model.parameters()).device
        self.b = b = len(prompts)
        self.lens = [len(q) for q in prompts]
        self.t = t = max(self.lens)
        self.total = t + cfg.max_new_tokens
        self.pad = int(cfg.pad_token_id)
        self.procs: LogitsProcessorList = build_logits_processors(cfg, t, cfg.eos_token_ids)
        self.gen = make_generator(cfg, self.device)
        self.vocab_limit = renderable_size(tokenizer)  # padding rows beyond the tokenizer are never chosen
        # token history (prompt left-padded with NO_TOKEN) for the processors
        prompt, self.mask = left_pad(prompts, self.total, NO_TOKEN, self.device)
        self.tokens = torch.full((b, self.total), NO_TOKEN, dtype=torch.long, device=self.device)
        self.tokens[:, :t] = prompt
        self.trackers = [StopTracker.for_config(cfg, tokenizer) for _ in range(b)]
        # structured output: per row, the ids its grammar allows next (constraint.py)
        self.constraints = row_constraints(constraint, b, cfg.eos_token_ids)
        self.logprobs: list[torch.Tensor] = []
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.inference_mode()
    def steps(self) -> Iterator[Step]:
        cfg, model, b, t = self.cfg, self.model, self.b, self.t
        # a compiled step is built per cache length: round it up so other lengths reuse it
        length = compiled_step.static_cache_length(model, self.total) if cfg.compile else self.total
        cache = make_kv_cache(model, b, length, cfg.kv_cache_dtype)
        runner = ModelRunner(model, b, self.total, self.mask, cfg.fused, compiled=cfg.compile)
        logits = runner.prefill(self.tokens[:, :t].clamp(min=0), cache)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        done_list = [False] * b
        trackers = self.trackers
        for step in range(cfg.max_new_tokens):
            allowed = allowed_rows([None if d else c for c, d in zip(self.constraints, done_list)],
                                   logits.shape[-1], self.device)
            sel = select_tokens(logits[:, -1], history=self.tokens[:, : t + step], processors=self.procs,
                                do_sample=cfg.do_sample, generator=self.gen, allowed=allowed,
                                vocab_limit=self.vocab_limit, logprobs=cfg.logprobs,
                                top_logprobs=cfg.top_logprobs)
            nxt = sel.tokens
            if cfg.logprobs:
                self.logprobs.append(sel.logprobs)
                if sel.top_logprobs is not None:
                    self.top.append(sel.top_logprobs)
            before = done_list
            if any(before):
                nxt = nxt.masked_fill(done, self.pad)
            self.tokens[:, t + step] = nxt
            ids = nxt.tolist()
            if allowed is not None:
                for c, tok, d in zip(self.constraints, ids, before):
                    if c is not None and not d:
                        c.advance(tok)
            done_list = [trackers[i].push(tok) for i, tok in enumerate(ids)]
            yield Step(step, ids, before, done_list)
            if all(done_list):
                break
            if done_list != before:
                done = torch.tensor(done_list, device=self.device)
            logits = runner.step(nxt[:, None], cache)

    def output(self) -> GenerationOutput:
        new = self.tokens[:, self.t:].tolist()
        seqs = [new[i][: tr.count] for i, tr in enumerate(self.trackers)]
        reasons = [tr.finish_reason or "length" for tr in self.trackers]
        out = GenerationOutput(seqs, reasons, [tr.stop_reason for tr in self.trackers],
                               prompt_lengths=list(self.lens))
        if self.cfg.logprobs:
            lp = torch.stack(self.logprobs, 1).tolist() if self.logprobs else [[] for _ in range(self.b)]
            out.logprobs = [lp[i][: len(seqs[i])] for i in range(self.b)]
            if self.cfg.top_logprobs:
                vals = torch.stack([v for v, _ in self.top], 1).tolist()
                idx = torch.stack([j for _, j in self.top], 1).tolist()
                out.top_logprobs = [
                    [dict(zip(idx[i][s], vals[i][s])) for s in range(len(seqs[i]))] for i in range(self.b)
                ]
        return out
