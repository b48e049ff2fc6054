"""Speculative decoding: a small draft model proposes, the target model verifies.

(Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding";
Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling".)

Each round the draft model proposes k tokens d1..dk one by one, sampling from its
distributions q1..qk. The target model then scores the last committed token and all k
drafts in ONE forward, giving its distributions p1..p(k+1). Draft i is accepted with
probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the replacement is drawn
from the residual norm(max(0, p_i - q_i)), and if all k are accepted a bonus token is drawn
from p(k+1). The tokens produced are distributed exactly as if sampled from the target
alone — the draft only changes how many target forwards are needed (one per round instead
of one per token). Greedy decoding is the special case: accept while d_i == argmax p_i, then
take argmax p_i, which reproduces the target's greedy output token for token.

"Distributions" are the processed ones: the same logits processors (penalties,
temperature, top-k/p, min-p) are applied to target and draft scores at every position,
with the right history, so the output follows the target's processed distribution.

Batches: every row drafts and verifies in lockstep, but each row accepts its own number of
tokens. Instead of ragged caches, rejected positions stay in the KV cache with attention
mask 0 (position ids count only unmasked slots, so they are invisible); trailing slots
rejected by every row are cut with `KVCache.truncate`, so a single prompt never leaves holes.
(Sliding-window models count window slots in cache positions, so holes would shift their
window: use batch size 1 for them.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmkit.errors import ConfigError
from lmkit.infer.config import GenerationConfig
from lmkit.infer.generate import (
    GenerationOutput,
    _encode_prompts,
    _generator,
    _make_cache,
    check_context,
    model_device,
    prepare_prompts,
    resolve_config,
)
from lmkit.infer.sampling import build_logits_processors
from lmkit.tokenizers.base import Tokenizer


@dataclass
class SpeculativeOutput(GenerationOutput):
    num_drafted: int = 0  # draft tokens proposed (over all rows and rounds)
    num_accepted: int = 0  # of which the target accepted
    num_target_forwards: int = 0  # target forwards, prefill included

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted / self.num_drafted if self.num_drafted else 0.0


def speculative_accept(
    p: torch.Tensor,
    q: torch.Tensor,
    draft_tokens: torch.Tensor,
    do_sample: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The verification step. p [B, k+1, V] target probabilities (greedy: scores), q [B, k, V]
    draft probabilities, draft_tokens [B, k] -> (accepted count [B], next token [B]).

    Sampling: draft i is kept with probability min(1, p_i(d)/q_i(d)) while all before it were;
    the next token comes from norm(max(0, p_n - q_n)) after a rejection at n, or from p_k.
    """
    b, k = draft_tokens.shape
    vocab = p.shape[-1]
    if not do_sample:
        best = p.argmax(-1)  # [B, k+1]
        ok = best[:, :k] == draft_tokens
        n = ok.long().cumprod(1).sum(1)
        return n, best.gather(1, n[:, None])[:, 0]
    p_d = p[:, :k].gather(-1, draft_tokens[..., None])[..., 0]
    q_d = q.gather(-1, draft_tokens[..., None])[..., 0]
    u = torch.rand(b, k, generator=generator, device=p.device, dtype=p.dtype)
    ok = u * q_d < p_d  # u < p/q without dividing (q > 0 for a drawn token)
    n = ok.long().cumprod(1).sum(1)
    p_n = p.gather(1, n[:, None, None].expand(b, 1, vocab))[:, 0]
    q_n = torch.cat([q, q.new_zeros(b, 1, vocab)], 1).gather(1, n[:, None, None].expand(b, 1, vocab))[:, 0]
    residual = (p_n - q_n).clamp(min=0)
    total = residual.sum(-1, keepdim=True)
    residual = torch.where(total > 0, residual / total.clamp(min=1e-30), p_n)
    return n, torch.multinomial(residual, 1, generator=generator)[:, 0]


class _History:
    """Committed tokens per row ([B, P + max_new] left-aligned, prompt padding -1) and the
    right-aligned views the logits processors read."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, max_new: int, extra: int) -> None:
        b, p = ids.shape
        self.p = p
        self.buf = torch.full((b, p + max_new + extra + 1), -1, dtype=torch.long, device=ids.device)
        self.buf[:, :p] = ids.masked_fill(~mask, -1)
        self.gen = torch.zeros(b, dtype=torch.long, device=ids.device)  # generated per row
        self.prompt_cols = torch.zeros(b, dtype=torch.long, device=ids.device)  # read by the processors

    def view(self, drafts: torch.Tensor | None) -> torch.Tensor:
        """Committed + drafts [B, j], right-aligned so every row's newest token is in the last column."""
        b = self.buf.shape[0]
        cand = self.buf
        total = self.p + self.gen
        if drafts is not None and drafts.shape[1]:
            j = drafts.shape[1]
            cand = self.buf.clone()
            cols = total[:, None] + torch.arange(j, device=cand.device)[None]
            cand.scatter_(1, cols, drafts)
            total = total + j
        width = int(total.max())
        shift = width - total
        cols = torch.arange(width, device=cand.device)[None].expand(b, width) - shift[:, None]
        view = cand.gather(1, cols.clamp(min=0)).masked_fill(cols < 0, -1)
        self.prompt_cols.copy_(self.p + shift)
        return view


@torch.no_grad()  # not inference_mode: the returned tensors stay usable with autograd
def speculative_generate(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    input_ids,
    config: GenerationConfig | None = None,
    *,
    num_draft_tokens: int = 4,
    attention_mask: torch.Tensor | None = None,
    tokenizer: Tokenizer | None = None,
    **overrides,
) -> SpeculativeOutput:
    """Generate from `target` with `draft` proposing `num_draft_tokens` per round.

    Same prompts and options as `generate` (greedy or sampling, penalties, warpers, EOS,
    seed); not supported here: beam search, stop strings, logprobs, num_return_sequences.
    """
    cfg = resolve_config(target, config, **overrides)
    if cfg.num_beams > 1 or cfg.stop or cfg.logprobs or cfg.num_return_sequences > 1:
        raise ConfigError("speculative decoding supports greedy and sampling only: no beams, stop strings, "
                          "logprobs or num_return_sequences")
    if not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ConfigError(f"num_draft_tokens={num_draft_tokens!r}: must be an integer >= 1")
    tv = getattr(getattr(target, "config", None), "vocab_size", None)
    dv = getattr(getattr(draft, "config", None), "vocab_size", None)
    if tv is not None and dv is not None and tv != dv:
        raise ConfigError(f"draft and target must share a vocabulary: target has {tv} tokens, draft {dv}")
    device = model_device(target)
    ids, mask = prepare_prompts(_encode_prompts(input_ids, tokenizer), attention_mask, cfg.pad_token_id, device, tv)
    b, p = ids.shape
    n_max, k = cfg.max_new_tokens, num_draft_tokens
    check_context(target, p, n_max)
    check_context(draft, p, n_max)
    gen = _generator(cfg.seed, device)
    eos = torch.tensor(cfg.eos_ids, dtype=torch.long, device=device) if cfg.eos_ids else None
    hist = _History(ids, mask, n_max, k)
    processors = build_logits_processors(cfg, hist.prompt_cols)
    unfinished = torch.ones(b, dtype=torch.bool, device=device)
    lengths = mask.sum(1)

    # caches: slots may hold rejected tokens (mask 0) in a batch; bound the slots used
    t_len = p + n_max + k + 2 if b == 1 else p + (n_max + 1) * (k + 1) + 1
    d_len = t_len if b == 1 else p + (n_max + 1) * (k + 2) + 1
    t_cache, d_cache = _make_cache(target, b, t_len), _make_cache(draft, b, d_len)
    t_mask = torch.zeros(b, t_len, dtype=torch.long, device=device)
    d_mask = torch.zeros(b, d_len, dtype=torch.long, device=device)
    t_mask[:, : p - 1] = mask[:, : p - 1]
    d_mask[:, : p - 1] = mask[:, : p - 1]
    if p > 1:  # both caches hold everything but the newest token, which each round feeds
        target(ids[:, :-1], attention_mask=t_mask[:, : p - 1], kv_cache=t_cache)
        draft(ids[:, :-1], attention_mask=d_mask[:, : p - 1], kv_cache=d_cache)
    d_col = torch.full((b,), p - 1, dtype=torch.long, device=device)  # history columns the draft cache holds
    forwards = 1 if p > 1 else 0
    drafted = accepted = 0
    pad = torch.tensor(cfg.pad_token_id, device=device)

    def room(model: torch.nn.Module, slots: int) -> None:
        # absolute-position models refuse more cache slots than max_seq_len, and in a batch the
        # slots of rejected drafts stay until every row has moved past them
        mc = getattr(model, "config", None)
        limit = getattr(mc, "max_seq_len", None)
        if getattr(mc, "position", None) in ("learned", "sinusoidal") and limit is not None and slots > limit:
            raise ConfigError(
                f"batched speculative decoding needs {slots} cache slots (rejected drafts keep theirs) but this "
                f"model's position table ends at max_seq_len={limit}: use one prompt at a time or fewer draft tokens"
            )

    def process(logits: torch.Tensor, drafts: torch.Tensor | None) -> torch.Tensor:
        scores = logits.float()
        if processors:
            scores = processors(hist.view(drafts), scores)
        return scores

    while bool(unfinished.any()):
        left = int((n_max - hist.gen)[unfinished].max())
        kr = max(0, min(k, left - 1))
        total = p + hist.gen

        # ---- draft: feed the committed tokens it has not seen, then propose kr tokens
        drafts = torch.zeros(b, 0, dtype=torch.long, device=device)
        q_list = []
        if kr:
            width = int((total - d_col).max())
            cols = total[:, None] - width + torch.arange(width, device=device)[None]
            real = cols >= d_col[:, None]
            feed = torch.where(real, hist.buf.gather(1, cols.clamp(min=0)), pad)  # pending ids are all real
            start = d_cache.seq_len
            room(draft, start + width + kr - 1)
            d_mask[:, start: start + width] = real.long()
            out = draft(feed, attention_mask=d_mask[:, : start + width], kv_cache=d_cache, num_logits_to_keep=1)
            d_col = total.clone()
            for j in range(kr):
                scores = process(out.logits[:, -1], drafts)
                q = scores.softmax(-1)
                if cfg.do_sample:
                    d = torch.multinomial(q, 1, generator=gen)[:, 0]
                else:
                    d = scores.argmax(-1)
                q_list.append(q)
                drafts = torch.cat([drafts, d[:, None]], 1)
                if j + 1 < kr:
                    start = d_cache.seq_len
                    d_mask[:, start] = 1
                    out = draft(d[:, None], attention_mask=d_mask[:, : start + 1], kv_cache=d_cache)

        # ---- target: the newest committed token and the drafts in one forward
        last = hist.buf.gather(1, (total - 1)[:, None])
        feed = torch.cat([last, drafts], 1)
        start = t_cache.seq_len
        room(target, start + kr + 1)
        t_mask[:, start: start + kr + 1] = 1
        out = target(feed, attention_mask=t_mask[:, : start + kr + 1], kv_cache=t_cache)
        forwards += 1
        p_list = []
        for j in range(kr + 1):
            scores = process(out.logits[:, j], drafts[:, :j])
            p_list.append(scores.softmax(-1) if cfg.do_sample else scores)
        pt = torch.stack(p_list, 1)
        qt = torch.stack(q_list, 1) if q_list else pt.new_zeros(b, 0, pt.shape[-1])
        n_acc, nxt = speculative_accept(pt, qt, drafts, cfg.do_sample, gen)
        drafted += int(kr * unfinished.sum())
        accepted += int(n_acc[unfinished].sum())

        # ---- commit: accepted drafts + the next token; mask out rejected slots
        j_idx = torch.arange(kr + 1, device=device)[None]
        new = torch.cat([drafts, drafts.new_zeros(b, 1)], 1).scatter(1, n_acc[:, None], nxt[:, None])  # [B, kr+1]
        count = n_acc + 1
        count = torch.minimum(count, n_max - hist.gen)
        if eos is not None:
            is_eos = torch.isin(new, eos) & (j_idx < count[:, None])
            first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, count)
            count = torch.minimum(count, first)
            ends = is_eos.any(1) & unfinished
        else:
            ends = torch.zeros_like(unfinished)
        count = torch.where(unfinished, count, 0)
        cols = (p + hist.gen)[:, None] + j_idx
        write = j_idx < count[:, None]
        hist.buf.scatter_(1, torch.where(write, cols, hist.buf.shape[1] - 1), torch.where(write, new, -1))
        hist.buf[:, -1] = -1
        hist.gen += count
        unfinished &= ~ends & (hist.gen < n_max)

        # target slots: feed j valid iff j <= n_acc (j=0 is the old newest token)
        t_mask[:, start: start + kr + 1] = (j_idx <= n_acc[:, None]).long()
        t_cache.truncate(start + 1 + int(n_acc.max()))
        # draft slots: drafts d1..d(kr-1) were fed; d_j valid iff j <= n_acc
        if kr:
            d_start = d_cache.seq_len - (kr - 1)
            valid = (j_idx[:, : kr - 1] + 1) <= n_acc[:, None]
            d_mask[:, d_start: d_start + kr - 1] = valid.long()
            d_col = d_col + torch.minimum(n_acc, torch.full_like(n_acc, kr - 1))
            keep = int(torch.minimum(n_acc, torch.full_like(n_acc, kr - 1)).max())
            d_cache.truncate(d_start + keep)

    width = int(hist.gen.max()) if b else 0
    gen_ids = hist.buf[:, p: p + width]
    gen_list = gen_ids.tolist()
    counts = hist.gen.tolist()
    token_ids = [row[:c] for row, c in zip(gen_list, counts)]
    eos_set = set(cfg.eos_ids)
    finish = ["stop" if row and row[-1] in eos_set else "length" for row in token_ids]
    reasons = [row[-1] if row and row[-1] in eos_set else None for row in token_ids]
    seq_gen = torch.where(gen_ids >= 0, gen_ids, pad)
    texts = None
    if tokenizer is not None:
        texts = [tokenizer.decode(row[:-1] if row and row[-1] in eos_set else row) for row in token_ids]
    return SpeculativeOutput(
        sequences=torch.cat([ids, seq_gen], 1), token_ids=token_ids, finish_reasons=finish, stop_reasons=reasons,
        prompt_lengths=lengths.tolist(), texts=texts, num_drafted=drafted, num_accepted=accepted,
        num_target_forwards=forwards,
    )
