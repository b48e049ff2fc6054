"""Sentence embeddings from a model: what POST /v1/embeddings returns.

Encoders (BERT-style `EncoderLM`) embed by **mean pooling**: the average of the last hidden
states over the real tokens, as sentence-transformers does for MiniLM and friends.
Decoders (`DecoderLM`) see only the past, so the **last token**'s hidden state is the only
one that has read the whole input (the pooling of E5-Mistral, GTE-Qwen and other decoder
embedders); mean pooling is offered too. Vectors are L2-normalised (a dot product is then
the cosine similarity).
"""

from __future__ import annotations

import threading
from typing import Sequence

import torch
import torch.nn.functional as F

from lmkit.errors import ConfigError


class ModelEmbedder:
    """embed(list of token-id lists) -> tensor [N, d_model] (float32, normalised)."""

    def __init__(self, model, tokenizer, pooling: str | None = None, normalize: bool = True) -> None:
        kind = type(model).__name__
        if kind not in ("DecoderLM", "EncoderLM"):
            raise ConfigError(f"embeddings need a DecoderLM or an EncoderLM, got {kind}")
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.pooling = pooling or ("mean" if kind == "EncoderLM" else "last")
        if self.pooling not in ("mean", "last", "cls"):
            raise ConfigError(f"pooling must be 'mean', 'last' or 'cls', got {self.pooling!r}")
        self.normalize = normalize
        self.max_len = model.config.max_seq_len
        self.vocab_rows = model.config.vocab_size  # token ids must index the embedding
        self._lock = threading.Lock()  # the generation engine may use the same model on its own thread

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        cls_id = getattr(self.tokenizer, "cls_token_id", None)
        sep_id = getattr(self.tokenizer, "sep_token_id", None)
        for t in texts:
            ids = list(self.tokenizer.encode(t))
            if self.kind == "EncoderLM" and cls_id is not None and sep_id is not None:
                ids = [cls_id] + ids + [sep_id]  # BERT inputs: [CLS] text [SEP]
            out.append(ids)
        return out

    @torch.inference_mode()
    def embed(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        if not batch:
            raise ConfigError("input is empty: give at least one text")
        for i, ids in enumerate(batch):
            if not ids:
                raise ConfigError(f"input[{i}] is empty")
            if len(ids) > self.max_len:
                raise ConfigError(f"input[{i}] has {len(ids)} tokens, more than the model's context ({self.max_len})")
            bad = next((t for t in ids if not 0 <= t < self.vocab_rows), None)
            if bad is not None:
                raise ConfigError(f"input[{i}] holds token id {bad}, outside the vocabulary [0, {self.vocab_rows})")
        device = next(self.model.parameters()).device
        width = max(len(x) for x in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, x in enumerate(batch):  # right padding: with causal attention the real tokens never see it
            ids[i, : len(x)] = torch.tensor(list(x))
            mask[i, : len(x)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with self._lock:
            if self.kind == "EncoderLM":
                h, _ = self.model.encode(ids, mask)
            else:
                h = self.model(ids, attention_mask=mask).hidden_states
        h = h.float()
        if self.pooling == "last":
            last = mask.sum(1) - 1
            out = h[torch.arange(len(batch), device=h.device), last]
        elif self.pooling == "cls":
            out = h[:, 0]
        else:
            m = mask[..., None].to(h.dtype)
            out = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(out, p=2, dim=-1) if self.normalize else out
