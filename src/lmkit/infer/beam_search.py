"""Beam search with Hugging Face's semantics (length penalty, early stopping), vectorised.

Keep the `num_beams` best partial sequences ("beams") by total log-probability. Each step
every beam proposes every token; of the num_beams * V candidates the top
K = max(2, 1 + n_eos) * num_beams are taken, so that even if the best num_beams all end in
EOS there are still num_beams live candidates to continue with.

* A candidate that ends in EOS (or reaches max length) among the top num_beams of this step
  becomes a finished hypothesis with score  sum_logprob / generated_len ** length_penalty
  (generated_len counts the new tokens, EOS included). length_penalty > 0 favours longer
  outputs, < 0 shorter ones. The num_beams best finished hypotheses are kept.
* The num_beams best candidates that did not finish become the next beams; the KV cache
  rows are reordered to follow them (`KVCache.select`).
* Stopping (`early_stopping`):
    True     stop as soon as num_beams hypotheses are finished;
    False    stop when no live beam can still beat the worst finished one, estimating the
             live beam's best final score at the current length (HF's heuristic);
    "never"  the same test but with the most optimistic length (max length when
             length_penalty > 0): the canonical, exhaustive beam search.
The result is the best finished hypothesis of each prompt. With do_sample=True the K
candidates are drawn without replacement from the (warped) distribution instead (beam
sampling). Float operations follow transformers' order exactly, so tied scores break the
same way and the token ids are identical.
"""

from __future__ import annotations

import torch

from lmkit.infer.config import GenerationConfig
from lmkit.infer.inputs import left_pad
from lmkit.infer.output import GenerationOutput
from lmkit.infer.runner import ModelRunner
from lmkit.models.quantized_kv_cache import make_kv_cache
from lmkit.infer.sampling import NO_TOKEN, build_logits_processors
from lmkit.infer.select import make_generator
from lmkit.infer.vocab_padding import mask_unrenderable


def _gather_beams(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...], idx [B, M] -> x[b, idx[b, m], ...]."""
    while idx.dim() < x.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(x, idx, dim=1)


@torch.inference_mode()
def beam_search(model, prompts: list[list[int]], cfg: GenerationConfig,
                vocab_limit: int | None = None) -> GenerationOutput:
    """Best beam per prompt; `prompts` are token-id lists (checked by `generate`).

    vocab_limit: ids >= it (output rows beyond the tokenizer's vocabulary) are never chosen.
    """
    device = next(model.parameters()).device
    nb = cfg.num_beams
    b = len(prompts)
    lens = [len(p) for p in prompts]
    t = max(lens)
    max_length = t + cfg.max_new_tokens
    eos = cfg.eos_token_ids
    keep = max(2, 1 + len(eos)) * nb
    top_mask = torch.zeros(keep, dtype=torch.bool, device=device)
    top_mask[:nb] = True
    procs = build_logits_processors(cfg, t, eos)
    gen = make_generator(cfg, device)
    eos_t = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
    length_penalty, early = cfg.length_penalty, cfg.early_stopping

    # prefill once per prompt, then copy the cache rows (and mask, positions) to every beam
    prompt, mask = left_pad(prompts, max_length, NO_TOKEN, device)
    running = torch.full((b, nb, max_length), NO_TOKEN, dtype=torch.long, device=device)
    running[:, :, :t] = prompt[:, None]
    finished_seqs = running.clone()
    running_scores = torch.zeros(b, nb, device=device)
    running_scores[:, 1:] = -1e9
    finished_scores = torch.full((b, nb), -1e9, device=device)
    is_finished = torch.zeros(b, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)

    cache = make_kv_cache(model, b, max_length, cfg.kv_cache_dtype)
    runner = ModelRunner(model, b, max_length, mask, cfg.fused)
    logits = runner.prefill(prompt.clamp(min=0), cache)
    expand = torch.arange(b, device=device).repeat_interleave(nb)
    cache.select(expand)
    runner.select(expand)
    logits = logits[expand]
    batch_offset = torch.arange(b, device=device)[:, None] * nb

    cur = t
    while True:
        flat_running = running.view(b * nb, max_length)[:, :cur]
        log_probs = torch.log_softmax(mask_unrenderable(logits[:, -1].float(), vocab_limit), dim=-1)
        if procs:
            log_probs = procs(flat_running, log_probs)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.view(b, nb, vocab) + running_scores[:, :, None]
        log_probs = log_probs.reshape(b, nb * vocab)

        # top-K continuations over all beams of a prompt
        if cfg.do_sample:
            top_idx = torch.multinomial(torch.softmax(log_probs, dim=-1), keep, generator=gen)
            top_lp = torch.gather(log_probs, 1, top_idx)
        else:
            top_lp, top_idx = torch.topk(log_probs, keep)
        src_beam = top_idx // vocab
        token = top_idx % vocab
        cand = _gather_beams(running, src_beam)
        cand[:, :, cur] = token

        hits = torch.zeros_like(token, dtype=torch.bool) if eos_t is None else torch.isin(token, eos_t)
        if cur + 1 >= max_length:
            hits = torch.ones_like(hits)

        # live beams for the next step: the best candidates that did not finish
        live_lp = top_lp + hits.to(torch.float32) * -1.0e9
        next_idx = torch.topk(live_lp, k=nb)[1]
        running = _gather_beams(cand, next_idx)
        running_scores = _gather_beams(live_lp, next_idx)
        cache_src = _gather_beams(src_beam, next_idx)

        # finished hypotheses: only the top num_beams candidates of this step may finish
        just_finished = hits & top_mask[None, :]
        fin_lp = top_lp / ((cur + 1 - t) ** length_penalty)
        full = torch.all(is_finished, dim=-1, keepdim=True) & (early is True)
        fin_lp += full.to(torch.float32) * -1.0e9
        fin_lp += (~improvable).to(torch.float32) * -1.0e9
        fin_lp += (~just_finished) * -1.0e9
        merged_seqs = torch.cat((finished_seqs, cand), dim=1)
        merged_scores = torch.cat((finished_scores, fin_lp), dim=1)
        merged_done = torch.cat((is_finished, just_finished), dim=1)
        best = torch.topk(merged_scores, k=nb)[1]
        finished_seqs = _gather_beams(merged_seqs, best)
        finished_scores = _gather_beams(merged_scores, best)
        is_finished = _gather_beams(merged_done, best)

        cur += 1
        # can a live beam still beat the worst finished hypothesis?
        if early == "never" and length_penalty > 0.0:
            best_len = max_length - t
        else:
            best_len = cur - t
        best_possible = running_scores[:, :1] / (best_len**length_penalty)
        worst = torch.where(is_finished, torch.min(finished_scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_possible > worst, dim=-1, keepdim=True)
        go_on = bool(improvable.any()) and not (bool(is_finished.all()) and early is True) and not bool(hits.all())
        if not go_on:
            break

        flat_src = (cache_src + batch_offset).flatten()
        if not torch.equal(flat_src, torch.arange(b * nb, device=device)):
            cache.select(flat_src)
            runner.select(flat_src)  # what the runner keeps per row follows (LongRoPE's ids before its switch)
        logits = runner.step(running[:, :, cur - 1].reshape(b * nb, 1), cache)

    best_seqs = finished_seqs[:, 0, t:].tolist()
    seqs = [[tok for tok in row if tok != NO_TOKEN] for row in best_seqs]
    reasons, stop_reasons = [], []
    for s in seqs:
        ended = bool(s) and s[-1] in eos
        reasons.append("stop" if ended else "length")
        stop_reasons.append(s[-1] if ended else None)
    return GenerationOutput(
        seqs, reasons, stop_reasons, scores=finished_scores[:, 0].tolist(), prompt_lengths=lens
    )
