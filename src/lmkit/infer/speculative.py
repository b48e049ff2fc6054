"""Speculative decoding: a small draft model proposes, the large target model verifies.

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding") and
Chen et al. 2023 ("Accelerating LLM Decoding with Speculative Sampling"). Each round:

1. the draft model generates gamma tokens x_1..x_gamma autoregressively from its
   distributions q_1..q_gamma (cheap: small model);
2. the target model scores the pending token plus all gamma drafts in ONE forward pass,
   giving its distributions p_1..p_{gamma+1} (the expensive model runs once per round);
3. draft x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), left to right; at the
   first rejection a replacement is drawn from the residual norm(max(0, p_i - q_i)) and
   the round ends; if all gamma are accepted one extra token is drawn from p_{gamma+1}.

Every emitted token is then distributed exactly as the target's (processed) distribution:
P(emit x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(q(y), p(y))) * max(0, p(x)-q(x)) / Z
          = min(q(x), p(x)) + max(0, p(x) - q(x)) = p(x).
So the output is as good as the target's; only the speed depends on how often the draft
agrees (each round yields 1 to gamma + 1 tokens for one target forward). In greedy mode a
draft is accepted iff it is the target's argmax, so the output equals target greedy.

Both models must share the vocabulary. The same processors/warpers (temperature, top-k,
top-p, penalties...) shape p and q, each evaluated on its own prefix. Rejected positions
are dropped from both KV caches with `KVCache.truncate`. Rows are decoded one at a time
(each row accepts a different number of drafts per round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lmkit.errors import ConfigError
from lmkit.infer.config import GenerationConfig
from lmkit.infer.inputs import check_fits, prepare_prompts, resolve_config
from lmkit.infer.output import GenerationOutput
from lmkit.infer.runner import ModelRunner
from lmkit.models.quantized_kv_cache import make_kv_cache
from lmkit.infer.sampling import build_logits_processors
from lmkit.infer.select import make_generator, select_tokens, token_logprobs
from lmkit.infer.stop import StopTracker
from lmkit.infer.streaming import decode_output
from lmkit.infer.vocab_padding import mask_unrenderable, renderable_size


@dataclass
class SpeculativeOutput(GenerationOutput):
    """GenerationOutput plus acceptance statistics (summed over all rows)."""

    proposed: int = 0
    accepted: int = 0
    target_calls: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def verify_drafts(
    p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The acceptance rule, batched over a leading dimension N.

    p [N, g+1, V] target probabilities (p[:, i] is the distribution of position i),
    q [N, g, V] draft probabilities, draft [N, g] the drafted tokens.
    Returns (accepted [N]: how many drafts were kept, next_token [N]: the token after them).
    """
    n_rows, g, _ = q.shape
    rows = torch.arange(n_rows, device=p.device)
    if do_sample:
        px = p[:, :g].gather(-1, draft[..., None]).squeeze(-1)
        qx = q.gather(-1, draft[..., None]).squeeze(-1)
        u = torch.rand(n_rows, g, generator=generator, device=p.device)
        ok = u * qx < px  # u < p/q: accept with probability min(1, p/q)
    else:
        ok = p[:, :g].argmax(-1) == draft
    accepted = ok.long().cumprod(dim=-1).sum(-1)
    p_next = p[rows, accepted]
    if not do_sample:
        return accepted, p_next.argmax(-1)
    q_next = torch.cat((q, torch.zeros_like(q[:, :1])), dim=1)[rows, accepted]  # zero after all-accepted
    residual = (p_next - q_next).clamp(min=0)
    total = residual.sum(-1, keepdim=True)
    residual = torch.where(total > 0, residual / total.clamp(min=1e-30), p_next)
    return accepted, torch.multinomial(residual, 1, generator=generator).squeeze(1)


def speculative_generate(
    target,
    draft,
    input_ids: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor,
    config: GenerationConfig | None = None,
    *,
    num_draft_tokens: int = 4,
    tokenizer=None,
    **overrides: Any,
) -> SpeculativeOutput:
    """Generate with `target`, using `draft` to propose `num_draft_tokens` tokens per round."""
    cfg = resolve_config(target, config, **overrides)
    if cfg.num_beams > 1:
        raise ConfigError("speculative decoding samples or decodes greedily; num_beams must be 1")
    if num_draft_tokens < 1:
        raise ConfigError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
    if cfg.stop and tokenizer is None:
        raise ConfigError("stop strings need the tokenizer: pass tokenizer=...")
    tv, dv = target.config.vocab_size, draft.config.vocab_size
    if tv != dv:
        raise ConfigError(f"draft and target must share the vocabulary: vocab sizes {dv} (draft) != {tv} (target)")
    prompts = prepare_prompts(input_ids)
    check_fits(target, prompts, cfg)
    check_fits(draft, prompts, cfg)
    out = SpeculativeOutput([], [], [], prompt_lengths=[len(p) for p in prompts])
    if cfg.logprobs:
        out.logprobs = []
        out.top_logprobs = [] if cfg.top_logprobs else None
    gen = make_generator(cfg, next(target.parameters()).device)
    for prompt in prompts:
        _one(target, draft, prompt, cfg, num_draft_tokens, gen, tokenizer, out)
    if tokenizer is not None:
        out.texts = [decode_output(tokenizer, s, cfg.stop, cfg.eos_token_ids) for s in out.sequences]
    return out


@torch.inference_mode()
def _one(target, draft, prompt: list[int], cfg: GenerationConfig, gamma: int, gen, tokenizer,
         out: SpeculativeOutput) -> None:
    device = next(target.parameters()).device
    d_device = next(draft.parameters()).device
    n0, max_new = len(prompt), cfg.max_new_tokens
    total = n0 + max_new
    procs = build_logits_processors(cfg, n0, cfg.eos_token_ids)
    sample = cfg.do_sample
    buf = torch.zeros(1, total, dtype=torch.long, device=device)  # committed tokens, then drafts
    buf[0, :n0] = torch.tensor(prompt, dtype=torch.long)
    committed = n0
    t_cache = make_kv_cache(target, 1, total, cfg.kv_cache_dtype)
    d_cache = make_kv_cache(draft, 1, total, cfg.kv_cache_dtype)
    t_run = ModelRunner(target, 1, total, None, cfg.fused)
    d_run = ModelRunner(draft, 1, total, None, cfg.fused)
    if n0 > 1:
        t_run.prefill(buf[:, : n0 - 1], t_cache)
    stop = StopTracker.for_config(cfg, tokenizer)
    new: list[int] = []
    lps: list[float] = []
    tops: list[dict[int, float]] = []

    limit = renderable_size(tokenizer)  # output rows beyond the tokenizer are never chosen

    def dist(scores: torch.Tensor, upto: int) -> torch.Tensor:
        """Processed scores of one position given the tokens buf[:, :upto]."""
        scores = mask_unrenderable(scores.float(), limit)
        return procs(buf[:, :upto], scores) if procs else scores

    while not stop.done:
        g = min(gamma, max_new - (committed - n0) - 1)
        drafts: list[int] = []
        q_rows = []
        if g > 0:
            feed = buf[:, d_cache.seq_len : committed].to(d_device)
            run = d_run.step if d_cache.seq_len else d_run.prefill
            logits = run(feed, d_cache)[:, -1].to(device)
            for j in range(g):
                sel = select_tokens(logits, history=buf[:, : committed + j], processors=procs,
                                    do_sample=sample, generator=gen, vocab_limit=limit)
                x = int(sel.tokens)
                q_rows.append(sel.probs[0] if sample else torch.zeros(0))
                buf[0, committed + j] = x
                drafts.append(x)
                if j < g - 1:
                    logits = d_run.step(buf[:, committed + j : committed + j + 1].to(d_device), d_cache)[:, -1]
                    logits = logits.to(device)
        # one target forward over the pending token and the drafts
        pending = buf[:, committed - 1 : committed + g]
        t_logits = (t_run.step(pending, t_cache, last_only=False) if t_cache.seq_len else
                    target(pending, kv_cache=t_cache).logits)[0]
        out.target_calls += 1
        scores = [dist(t_logits[j : j + 1], committed + j) for j in range(g + 1)]
        p = torch.softmax(torch.cat(scores), dim=-1)[None]  # [1, g+1, V]
        if g > 0:
            q = torch.stack(q_rows)[None] if sample else torch.zeros(1, g, p.shape[-1], device=device)
            n_acc, nxt = verify_drafts(p, q, torch.tensor([drafts], device=device), sample, gen)
            n_acc, nxt = int(n_acc), int(nxt)
        else:
            n_acc = 0
            nxt = int(torch.multinomial(p[0, 0], 1, generator=gen)) if sample else int(p[0, 0].argmax())
        out.proposed += g
        out.accepted += n_acc
        emitted = drafts[:n_acc] + [nxt]
        kept = 0
        for j, x in enumerate(emitted):
            buf[0, committed + j] = x
            new.append(x)
            kept += 1
            if cfg.logprobs:
                lp, top = token_logprobs(scores[j], torch.tensor([x], device=device), cfg.top_logprobs)
                lps.append(float(lp[0]))
                if top is not None:
                    tops.append(dict(zip(top[1][0].tolist(), top[0][0].tolist())))
            if stop.push(x):
                break
        # the target cache holds everything but the newest token; the draft keeps what is still valid
        t_cache.truncate(committed + kept - 1)
        d_cache.truncate(min(d_cache.seq_len, committed + n_acc))
        committed += kept
    out.sequences.append(new)
    out.finish_reasons.append(stop.finish_reason)
    out.stop_reasons.append(stop.stop_reason)
    if cfg.logprobs:
        out.logprobs.append(lps)
        if cfg.top_logprobs:
            out.top_logprobs.append(tops)
