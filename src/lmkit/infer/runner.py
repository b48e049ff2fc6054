"""The model step of a generation: prefill, then decode steps eager, fused or compiled.

Three ways to compute the logits of new tokens over a `KVCache`, all with the same results:

    eager     `model.forward` with mask and positions (any architecture)
    fused     `FusedDecoder` (fused_step.py): merged projections, far fewer operations
    compiled  `CompiledDecoder` (compiled_step.py): the fused step torch.compile'd over a
              static cache (GenerationConfig.compile)

Both of the last two hand a one-token step of one unpadded fp32 or bf16 sequence to `NativeStep`
(native_step.py): the whole step as one native call.

`fast_decoder` and `forward_step` are the choice and the call; `ModelRunner` adds what one
generation needs (positions from the padding mask, the padding bias, beam reordering).
`generate`, beam search, speculative decoding and the serving engine all step through here.
"""

from __future__ import annotations

import torch

from lmkit.infer import compiled_step
from lmkit.infer.fused_step import FusedDecoder, padding_bias


def fast_decoder(model, total: int) -> FusedDecoder | None:
    """The fused step for `model` over sequences up to `total` tokens, or None when it cannot run it."""
    if FusedDecoder.unsupported(model, total) is not None:
        return None
    fused = FusedDecoder.for_model(model)
    fused.reserve(total)
    return fused


def forward_step(model, fast, ids: torch.Tensor, positions: torch.Tensor, cache, mask: torch.Tensor | None,
                 pad_bias: torch.Tensor | None, last_only: bool = True) -> torch.Tensor:
    """New tokens [B, T] continuing `cache` -> logits [B, 1, V] (or [B, T, V] with last_only=False).

    fast: a fused/compiled decoder (uses pad_bias, the additive form of the mask) or None
    (model.forward, uses mask [B, >= past + T]).
    """
    if fast is not None:
        return fast(ids, positions, cache, pad_bias, last_only)
    s = cache.seq_len + ids.shape[1]
    mask = mask[:, :s] if mask is not None else None
    return model(ids, attention_mask=mask, position_ids=positions, kv_cache=cache,
                 num_logits_to_keep=1 if last_only else 0).logits


class ModelRunner:
    """Feeds tokens to a model for one generation: steps through `FusedDecoder` when the
    architecture allows (through the compiled `CompiledDecoder` when compiled=True and it
    allows; it runs prompts of several tokens eagerly), else `model.forward`. The prefill runs
    through the fused step too when no row is padded, else through `model.forward` (whose
    masking keeps fully padded query rows finite).

    mask [B, total] (1 real / 0 left padding, None when no row is padded) covers the prompt and
    every position still to be generated; positions are derived from it once.
    """

    def __init__(self, model, batch_size: int, total: int, mask: torch.Tensor | None, fused: bool = True,
                 compiled: bool = False) -> None:
        self.model = model
        device = next(model.parameters()).device
        self.mask = mask
        if mask is not None:
            self.positions = (mask.cumsum(-1) - 1).clamp(min=0)
        else:
            self.positions = torch.arange(total, device=device)[None].expand(batch_size, total)
        self.fused = fast_decoder(model, total) if fused else None
        if self.fused is not None and compiled:  # compiles once per shape
            compiled_step.use_compiled(self, model, total)
        dtype = next(model.parameters()).dtype
        self.pad_bias = padding_bias(mask, dtype if dtype.is_floating_point else torch.float32) \
            if mask is not None and self.fused is not None else None
        # LongRoPE (Phi-3.5) uses its short tables while the sequence fits the original length and
        # its long ones for every position after: like transformers, the cache is rebuilt over the
        # whole sequence when it first outgrows that length; until then the fed ids are kept
        cfg = getattr(model, "config", None)
        self._switch = cfg.rope_original_max_seq_len or cfg.max_seq_len \
            if getattr(cfg, "rope_scaling", None) == "longrope" else None
        self._short_ids: torch.Tensor | None = None

    def prefill(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Prompt [B, T] (padding slots may hold any valid id) -> logits of the last position [B, 1, V]."""
        t = ids.shape[1]
        mask = self.mask[:, :t] if self.mask is not None else None
        pos = self.positions[:, :t] if self.mask is not None else None
        if self._switch is not None and int(self.positions[:, :t].max()) + 1 <= self._switch:
            self._short_ids = ids
        if self.fused is not None and self.mask is None and cache.seq_len == 0:
            # no padding: the fused step's causal prefill gives the same logits with its faster GEMMs
            # (fp32 on CPU: oneDNN 2.7x faster than MKL's sgemm at 16 rows on the benchmark CPU)
            return forward_step(self.model, self.fused, ids, self.positions[:, :t], cache, None, None)
        return self.model(ids, attention_mask=mask, position_ids=pos, kv_cache=cache, num_logits_to_keep=1).logits

    def step(self, ids: torch.Tensor, cache, last_only: bool = True) -> torch.Tensor:
        """New tokens [B, T] continuing `cache` -> logits [B, 1, V] (or [B, T, V])."""
        if self._short_ids is not None:
            fit = self._fitting(ids, cache)
            if fit < ids.shape[1]:
                return self._cross_switch(ids, fit, cache, last_only)
            self._short_ids = torch.cat([self._short_ids, ids], dim=1)
        past = cache.seq_len
        pos = self.positions[:, past : past + ids.shape[1]]
        return forward_step(self.model, self.fused, ids, pos, cache, self.mask, self.pad_bias, last_only)

    def _fitting(self, ids: torch.Tensor, cache) -> int:
        """LongRoPE before its switch: how many of `ids` still fit the original length."""
        past = cache.seq_len
        self._short_ids = self._short_ids[:, :past]  # speculative decoding may have truncated the cache
        longest = self.positions[:, : past + ids.shape[1]].amax(0).cummax(0).values[past:]
        return int((longest + 1 <= self._switch).sum())

    def _cross_switch(self, ids: torch.Tensor, fit: int, cache, last_only: bool) -> torch.Tensor:
        """The first `fit` tokens on the short tables (their logits as one step at a time gives them),
        then the cache emptied and the whole sequence run on the long tables -> the new tokens' logits."""
        head = None
        if fit and not last_only:
            head = self.step(ids[:, :fit], cache, last_only=False)
            ids = ids[:, fit:]
        full = torch.cat([self._short_ids, ids], dim=1)
        self._short_ids = None
        cache.truncate(0)
        logits = forward_step(self.model, None, full, self.positions[:, : full.shape[1]], cache, self.mask, None,
                              last_only)
        if last_only:
            return logits
        logits = logits[:, -ids.shape[1]:]
        return logits if head is None else torch.cat([head, logits], dim=1)

    def select(self, rows: torch.Tensor) -> None:
        """Follow a reordering / repetition of the batch rows (beam search)."""
        if self._short_ids is not None:
            self._short_ids = self._short_ids[rows]
        self.positions = self.positions[rows]
        if self.mask is not None:
            self.mask = self.mask[rows]
        if self.pad_bias is not None:
            self.pad_bias = self.pad_bias[rows]
