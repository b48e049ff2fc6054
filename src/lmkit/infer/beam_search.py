"""Beam search with Hugging Face's semantics (length penalty, early stopping), on a KV cache.

Keep the `num_beams` best partial sequences by total log-probability. Each step every beam
proposes all V continuations; the best 2*num_beams (more with several EOS ids) of the
num_beams*V candidates are taken, so that even if the best ones all end in EOS there are
still num_beams running beams to continue. A candidate that ends (EOS, or the length limit)
and is among the top num_beams becomes a *finished hypothesis* scored

    score = sum of log-probabilities / (generated length) ** length_penalty

(length_penalty > 0 favours longer outputs, < 0 shorter); the num_beams best hypotheses
per prompt are kept. The search of a prompt stops when, by `early_stopping`:
  True     num_beams hypotheses are finished;
  False    the best running beam, scored at its current length, cannot beat the worst
           finished hypothesis (HF's heuristic, the default);
  "never"  as False, but with length_penalty > 0 the running beam is scored at the maximum
           length (the canonical, exact stopping rule).
This is the vectorised algorithm of transformers' `_beam_search` step by step, so the
results are the same token for token (the tests check it); the KV cache rows are reordered
with `KVCache.select` whenever beams swap places. Logits processors see log-probabilities,
as in HF. With do_sample=True the candidates are drawn without replacement instead of
taken best-first (beam sampling).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lmkit.infer.config import GenerationConfig
from lmkit.infer.generate import GenerationOutput, _generator, _make_cache
from lmkit.infer.sampling import LogitsProcessorList, build_logits_processors
from lmkit.tokenizers.base import Tokenizer


def _gather_beams(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, beams, ...], idx [B, k] -> [B, k, ...]."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


@torch.no_grad()  # not inference_mode: the returned tensors stay usable with autograd
def beam_search(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cfg: GenerationConfig,
    tokenizer: Tokenizer | None = None,
    logits_processors: Sequence | None = None,
) -> GenerationOutput:
    """Beam search over left-padded prompts ids/mask [B, P] (see `generate`, which calls this)."""
    b, p = ids.shape
    k = cfg.num_beams
    n = cfg.max_new_tokens
    device = ids.device
    max_length = p + n
    eos_ids = cfg.eos_ids
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device) if eos_ids else None
    keep = max(2, 1 + len(eos_ids)) * k
    top_num_beam_mask = torch.arange(keep, device=device) < k
    lp_exp = cfg.length_penalty
    early = cfg.early_stopping
    fill = (cfg.pad_token_id or eos_ids[0]) if eos_ids else -1  # what transformers fills ended beams with

    lengths = mask.sum(1)
    padded = not bool(mask.all())
    running = torch.full((b, k, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :p] = ids.masked_fill(~mask, -1)[:, None]  # -1: padding, ignored by the processors
    finished_seqs = running.clone()
    running_scores = torch.zeros(b, k, device=device)
    running_scores[:, 1:] = -1e9  # only the first beam is live at the start: no duplicate beams
    finished_scores = torch.full((b, k), -1e9, device=device)
    is_finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    running_idx = torch.full((b, k, max(n, 1)), -1, dtype=torch.long, device=device)
    finished_idx = running_idx.clone()

    flat_ids = ids.repeat_interleave(k, 0)
    flat_mask = mask.repeat_interleave(k, 0)
    model_mask = torch.cat([flat_mask.long(), flat_mask.new_ones(b * k, n, dtype=torch.long)], 1) if padded else None
    positions = lengths.repeat_interleave(k, 0)[:, None] + torch.arange(n, device=device)[None]
    min_keep = len(eos_ids) + 1 if eos_ids else 2
    processors = build_logits_processors(cfg, p, min_tokens_to_keep=min_keep if cfg.do_sample else 1)
    if logits_processors:
        processors = LogitsProcessorList([*processors, *logits_processors])
    generator = _generator(cfg.seed, device)
    batch_offset = torch.arange(b, device=device)[:, None] * k

    cur = p
    if n > 0:
        cache = _make_cache(model, b * k, max_length)
        out = model(flat_ids, attention_mask=model_mask[:, :p] if padded else None, kv_cache=cache,
                    num_logits_to_keep=1)
    while n > 0:
        log_probs = out.logits[:, -1].float().log_softmax(-1)
        if processors:
            log_probs = processors(running[:, :, :cur].reshape(b * k, cur), log_probs)
        vocab = log_probs.shape[-1]
        log_probs = (log_probs.view(b, k, vocab) + running_scores[:, :, None]).view(b, k * vocab)

        # the `keep` best continuations over all beams of a prompt
        if cfg.do_sample:
            top_i = torch.multinomial(log_probs.softmax(-1), keep, generator=generator)
            top_lp = log_probs.gather(1, top_i)
        else:
            top_lp, top_i = torch.topk(log_probs, keep)
        src_beam = top_i // vocab
        top_ids = top_i % vocab
        top_seqs = _gather_beams(running, src_beam)
        top_seqs[:, :, cur] = top_ids
        top_idx = _gather_beams(running_idx, src_beam)
        top_idx[:, :, cur - p] = src_beam + batch_offset
        hits = torch.full_like(top_ids, cur + 1 >= max_length, dtype=torch.bool)
        if eos is not None:
            hits |= torch.isin(top_ids, eos)

        # the best num_beams candidates that did not end keep running
        run_lp = top_lp + hits.float() * -1e9
        nxt = torch.topk(run_lp, k)[1]
        running = _gather_beams(top_seqs, nxt)
        running_scores = _gather_beams(run_lp, nxt)
        running_idx = _gather_beams(top_idx, nxt)

        # ended candidates among the top num_beams join the finished hypotheses if good enough
        just_done = hits & top_num_beam_mask[None]
        done_lp = top_lp / ((cur + 1 - p) ** lp_exp)
        if early is True:
            done_lp = done_lp + (is_finished.all(-1, keepdim=True)).float() * -1e9
        done_lp = done_lp + (~improvable).float() * -1e9
        done_lp = done_lp + (~just_done).float() * -1e9
        merged = torch.cat([finished_scores, done_lp], 1)
        best = torch.topk(merged, k)[1]
        finished_seqs = _gather_beams(torch.cat([finished_seqs, top_seqs], 1), best)
        finished_scores = _gather_beams(merged, best)
        finished_idx = _gather_beams(torch.cat([finished_idx, top_idx], 1), best)
        is_finished = _gather_beams(torch.cat([is_finished, just_done], 1), best)

        # cache rows follow their beams
        beam_idx = running_idx[..., cur - p].reshape(-1)
        cur += 1
        # can a running beam still beat the worst finished hypothesis?
        best_len = (max_length - p) if (early == "never" and lp_exp > 0.0) else (cur - p)
        best_running = running_scores[:, :1] / (best_len ** lp_exp)
        worst_done = torch.where(is_finished, finished_scores.min(1, keepdim=True)[0], -1.0e9)
        improvable = improvable & (best_running > worst_done).any(-1, keepdim=True)
        go_on = bool(improvable.any()) and not (early is True and bool(is_finished.all())) and not bool(hits.all())
        if not go_on:
            break
        cache.select(beam_idx)
        step_ids = running[:, :, cur - 1].reshape(b * k, 1)
        out = model(
            step_ids,
            attention_mask=model_mask[:, :cur] if padded else None,
            position_ids=positions[:, cur - 1 - p: cur - p],
            kv_cache=cache,
        )

    r = cfg.num_return_sequences
    seqs = finished_seqs[:, :r].reshape(b * r, max_length)
    scores = finished_scores[:, :r].reshape(b * r)
    idx = finished_idx[:, :r].reshape(b * r, -1)
    gen_lens = (idx >= 0).sum(1)
    out_len = p + (int(gen_lens.max()) if n > 0 else 0)
    seqs = seqs[:, :out_len].clone()
    seqs[:, :p] = ids.repeat_interleave(r, 0)
    gen = seqs[:, p:].tolist()
    token_ids = [row[: int(g)] for row, g in zip(gen, gen_lens.tolist())]
    eos_set = set(eos_ids)
    finish = ["stop" if row and row[-1] in eos_set else "length" for row in token_ids]
    reasons = [row[-1] if row and row[-1] in eos_set else None for row in token_ids]
    texts = None
    if tokenizer is not None:
        texts = [tokenizer.decode(row[:-1] if row and row[-1] in eos_set else row) for row in token_ids]
    return GenerationOutput(
        sequences=seqs, token_ids=token_ids, finish_reasons=finish, stop_reasons=reasons,
        prompt_lengths=lengths.repeat_interleave(r, 0).tolist(), texts=texts, sequence_scores=scores,
    )
