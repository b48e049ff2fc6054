"""`DecoderLM`: a decoder-only causal language model (GPT-2, Llama, Qwen2, Mistral, Mixtral).

tokens -> embed_tokens (+ embed_positions) -> N x TransformerBlock -> norm -> lm_head -> logits

Parameter names (the hub maps Hugging Face names onto these):
  embed_tokens.weight, embed_positions.weight (learned positions only),
  layers.{i}.attn_norm / self_attn.{q,k,v,o}_proj / mlp_norm / mlp.{gate,up,down}_proj
  (MoE: layers.{i}.mlp.gate, layers.{i}.mlp.experts.{j}.{gate,up,down}_proj),
  norm.weight (+ .bias for LayerNorm; pre-norm models only), lm_head.weight
  (the same tensor as embed_tokens.weight when config.tie_embeddings).

Masks are built once per forward from the slot indices of the queries and keys (cache
offset included) and shared by every layer:
  causal         (SDPA's is_causal kernel when nothing else restricts attention)
  sliding window key j visible to query i iff 0 <= i - j < window (as transformers' Mistral)
  padding        attention_mask [B, S] of 1/0 over cached + new positions
  prefix-LM      prefix_len [B]: the first prefix_len real tokens of each row see each other
                 bidirectionally; later tokens see the prefix and their own past.
Position ids default to cumsum(attention_mask) - 1, so a left-padded row numbers its first
real token 0 exactly as an unpadded one would; with a cache they continue from the cache.
With a KV cache the window is applied by the mask: the cache keeps every position (no
rolling buffer), and a prefix-LM prefix must be fed in one chunk to be bidirectional.
MoE layers are told which tokens are padding (MoE.token_mask) so padding neither counts
in the load-balancing statistics nor takes expert capacity; ModelOutput.aux_loss is the
sum of the per-layer weighted MoE losses (transformers pools the statistics over layers
before multiplying instead, which differs when there is more than one MoE layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmkit.models.block import TransformerBlock
from lmkit.models.config import ModelConfig
from lmkit.models.init import init_normal_weights
from lmkit.models.masks import sliding_window_mask, to_additive_bias
from lmkit.models.norms import make_norm
from lmkit.models.output import ModelOutput
from lmkit.models.positional import RotaryEmbedding, SinusoidalPositions, T5RelativeBias, alibi_bias


def add_position_modules(module: nn.Module, config: ModelConfig, bidirectional: bool) -> None:
    """Register on `module` the position encoding ``config.position`` asks for, under the names
    the parameter scheme uses: ``embed_positions`` (learned), ``sinusoidal``, ``rotary``, or
    ``relative_bias`` (t5_bias; `bidirectional` buckets for encoders). Shared by every stack."""
    if config.position == "learned":
        module.embed_positions = nn.Embedding(config.max_seq_len, config.d_model)
    elif config.position == "sinusoidal":
        module.sinusoidal = SinusoidalPositions(config)
    elif config.position == "rope":
        module.rotary = RotaryEmbedding(config)
    elif config.position == "t5_bias":
        module.relative_bias = T5RelativeBias(config, bidirectional=bidirectional)


class DecoderLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "decoder":
            raise ValueError(f"DecoderLM needs config.arch='decoder', got {config.arch!r}")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.position = config.position
        add_position_modules(self, config, bidirectional=False)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    # ---- construction -------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2/Llama initialisation: N(0, initializer_range) weights, zero biases, unit norms."""
        init_normal_weights(self, self.config.initializer_range)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied lm_head counts once)."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for m in (self.embed_tokens, getattr(self, "embed_positions", None)):
                if m is not None:
                    params.pop(id(m.weight), None)
        return sum(p.numel() for p in params.values())

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them:
        activation memory drops from O(layers) to O(1) layers for ~1/3 more compute."""
        self.gradient_checkpointing = enabled

    def make_cache(self, batch_size: int, max_len: int | None = None):
        from lmkit.models.kv_cache import KVCache

        return KVCache.for_model(self, batch_size, max_len)

    # ---- forward ------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        kv_cache=None,
        prefix_len: torch.Tensor | None = None,
        return_weights: bool = False,
        num_logits_to_keep: int = 0,
        document_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """input_ids [B, T] -> ModelOutput(logits [B, T, V] (or the last num_logits_to_keep), ...).

        attention_mask [B, past + T]: 1 for tokens, 0 for padding, covering cached positions too.
        labels [B, T]: next-token targets are labels shifted left by one; -100 is ignored.
        kv_cache: a `KVCache` (updated in place); the new tokens continue after its seq_len.
        document_ids [B, T]: several examples packed in one row (SFT packing); a token attends
        only to earlier tokens with the same id, and default positions restart at 0 per example.
        """
        cfg = self.config
        b, t = input_ids.shape
        past = kv_cache.seq_len if kv_cache is not None else 0
        s = past + t
        device = input_ids.device
        if cfg.position in ("learned", "sinusoidal") and s > cfg.max_seq_len:
            raise ValueError(
                f"sequence of {s} positions is longer than max_seq_len={cfg.max_seq_len} "
                f"({cfg.position} position embeddings have no entry beyond it)"
            )
        if labels is not None and num_logits_to_keep:
            raise ValueError("num_logits_to_keep cannot be combined with labels (the loss needs every logit)")
        if attention_mask is not None:
            if attention_mask.shape != (b, s):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected [batch={b}, "
                    f"cached + new = {s}]"
                )
            attention_mask = attention_mask.to(device)
            padded = not bool(attention_mask.all())
        else:
            padded = False

        if document_ids is not None:
            if kv_cache is not None or prefix_len is not None:
                raise ValueError("document_ids (packed examples) cannot be combined with kv_cache or prefix_len")
            if document_ids.shape != (b, t):
                raise ValueError(f"document_ids has shape {tuple(document_ids.shape)}, expected [batch={b}, {t}]")
            document_ids = document_ids.to(device)
            if position_ids is None:  # restart at 0 where a new example begins
                idx = torch.arange(t, device=device).expand(b, t)
                starts = torch.ones(b, t, dtype=torch.bool, device=device)
                starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
                position_ids = idx - torch.where(starts, idx, 0).cummax(dim=-1).values

        # positions: cumsum of the mask so left padding starts every row at 0
        if position_ids is None or prefix_len is not None:
            if padded:
                key_pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            else:
                key_pos = torch.arange(s, device=device)[None].expand(b, s)
            if position_ids is None:
                position_ids = key_pos[:, past:]

        x = self.embed_tokens(input_ids)
        if cfg.position == "learned":
            x = x + self.embed_positions(position_ids)
        elif cfg.position == "sinusoidal":
            x = x + self.sinusoidal(position_ids).to(x.dtype)
        x = self.dropout(x)
        rope = self.rotary(position_ids, x.dtype) if cfg.position == "rope" else None

        # attention mask, built once for all layers
        q_idx = torch.arange(past, s, device=device)
        k_idx = torch.arange(s, device=device)
        window = cfg.sliding_window if cfg.sliding_window is not None and cfg.sliding_window < s else None
        score_bias = None
        if cfg.position == "alibi":
            score_bias = alibi_bias(cfg.n_heads, q_idx, k_idx, causal=True)
        elif cfg.position == "t5_bias":
            score_bias = self.relative_bias(q_idx, k_idx)
        if (not padded and window is None and prefix_len is None and score_bias is None and document_ids is None
                and (past == 0 or t == 1)):
            attn_bias, is_causal = None, past == 0  # SDPA's causal kernel, or one new query that sees all
        else:
            if window is not None:
                allowed = sliding_window_mask(q_idx, k_idx, window)[None]
            else:
                allowed = (k_idx[None, :] <= q_idx[:, None])[None]
            if prefix_len is not None:
                prefix_len = torch.as_tensor(prefix_len, device=device).reshape(b)
                in_prefix = key_pos < prefix_len[:, None]  # [B, S], counted in real tokens
                if padded:
                    in_prefix = in_prefix & attention_mask.bool()
                q_in_prefix = in_prefix[:, past:]
                allowed = allowed | (in_prefix[:, None, :] & q_in_prefix[:, :, None])
            if padded:
                allowed = allowed & attention_mask.bool()[:, None, :]
            if document_ids is not None:  # block-diagonal: no attention across packed examples
                allowed = allowed & (document_ids[:, :, None] == document_ids[:, None, :])
            attn_bias = to_additive_bias(allowed, x.dtype, score_bias)
            is_causal = False

        moes = [layer.mlp for layer in self.layers if hasattr(layer.mlp, "aux_loss")]
        token_mask = attention_mask[:, past:].bool() if padded else None
        for m in moes:
            m.token_mask = token_mask
        attentions = []
        try:
            checkpointing = getattr(self, "gradient_checkpointing", False) and self.training and kv_cache is None
            for i, layer in enumerate(self.layers):
                if checkpointing:
                    x, w = checkpoint(
                        layer, x, use_reentrant=False, attn_bias=attn_bias, rope=rope, is_causal=is_causal,
                        return_weights=return_weights,
                    )
                else:
                    x, w = layer(
                        x, attn_bias=attn_bias, rope=rope, is_causal=is_causal,
                        kv_cache=kv_cache.layer(i) if kv_cache is not None else None,
                        return_weights=return_weights,
                    )
                if return_weights:
                    attentions.append(w)
        finally:
            for m in moes:
                m.token_mask = None
        h = self.norm(x)
        logits = self.lm_head(h[:, -num_logits_to_keep:] if num_logits_to_keep else h)

        aux_loss = sum(m.aux_loss for m in moes) if moes else None
        loss = None
        if labels is not None:
            # shift the labels, not the logits: slicing the logits would copy the largest
            # activation of the model in the forward pass and again in the backward pass
            targets = F.pad(labels.to(device), (0, 1), value=-100)[:, 1:]
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
            if aux_loss is not None:
                loss = loss + aux_loss
        return ModelOutput(
            logits=logits, loss=loss, hidden_states=h, aux_loss=aux_loss, attentions=attentions, kv_cache=kv_cache
        )
