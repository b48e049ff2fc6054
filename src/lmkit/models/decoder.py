"""`DecoderLM`: a decoder-only causal language model (GPT-2, Llama, Qwen2, Mistral, Mixtral).

tokens -> embed_tokens (+ embed_positions) -> N x TransformerBlock -> norm -> lm_head -> logits

Parameter names (the hub maps Hugging Face names onto these):
  embed_tokens.weight, embed_positions.weight (learned positions only),
  layers.{i}.attn_norm / self_attn.{q,k,v,o}_proj / mlp_norm / mlp.{gate,up,down}_proj
  (MoE: layers.{i}.mlp.gate, layers.{i}.mlp.experts.{j}.{gate,up,down}_proj),
  norm.weight (+ .bias for LayerNorm; pre-norm models only), lm_head.weight
  (the same tensor as embed_tokens.weight when config.tie_embeddings).

Masks are built once per forward from the slot indices of the queries and keys (cache
offset included) and shared by every layer of one kind (`config.layer_types`: Gemma's
sliding-window local layers and full global layers each get their own mask and RoPE tables):
  causal         (SDPA's is_causal kernel when nothing else restricts attention)
  sliding window key j visible to query i iff 0 <= i - j < window (as transformers' Mistral)
  padding        attention_mask [B, S] of 1/0 over cached + new positions
  prefix-LM      prefix_len [B]: the first prefix_len real tokens of each row see each other
                 bidirectionally; later tokens see the prefix and their own past.
Position ids default to cumsum(attention_mask) - 1, so a left-padded row numbers its first
real token 0 exactly as an unpadded one would; with a cache they continue from the cache.
With a KV cache the window is applied by the mask: the cache keeps every position (no
rolling buffer), and a prefix-LM prefix must be fed in one chunk to be bidirectional.
MoE layers are given which tokens are padding (their token_mask argument) so padding neither counts
in the load-balancing statistics nor takes expert capacity; ModelOutput.aux_loss is the
sum of the per-layer weighted MoE losses (transformers pools the statistics over layers
before multiplying instead, which differs when there is more than one MoE layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.block import TransformerBlock, run_layers
from lmkit.models.config import ModelConfig
from lmkit.models.init import init_normal_weights
from lmkit.models.masks import attention_bias, real_tokens
from lmkit.models.moe import MoE
from lmkit.models.norms import make_norm
from lmkit.models.output import ModelOutput
from lmkit.models.positional import add_absolute_positions, add_position_modules, position_score_bias
from lmkit.models.softcap import soft_cap


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
        self.layers = nn.ModuleList(TransformerBlock(config, layer_idx=i) for i in range(config.n_layers))
        self.norm = make_norm(config) if config.norm_position != "post" else nn.Identity()
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
        b, t = input_ids.shape
        device = input_ids.device
        past = kv_cache.seq_len if kv_cache is not None else 0
        self._check_inputs(past + t, labels, num_logits_to_keep)
        padding = real_tokens(attention_mask, b, past + t, device)
        if document_ids is not None:
            document_ids = check_document_ids(document_ids, b, t, device, kv_cache, prefix_len)
        if position_ids is None:
            position_ids = default_position_ids(b, t, past, device, padding, document_ids)

        x = self._embed(input_ids, position_ids)
        per_layer = self._layer_inputs(past, t, x, position_ids, padding, prefix_len, document_ids)
        token_mask = padding[:, past:] if padding is not None else None
        checkpointing = getattr(self, "gradient_checkpointing", False) and self.training and kv_cache is None
        x, attentions = run_layers(
            self.layers, x, checkpointing=checkpointing, kv_cache=kv_cache, return_weights=return_weights,
            per_layer=per_layer, token_mask=token_mask,
        )
        h = self.norm(x)
        logits = self.lm_head(h[:, -num_logits_to_keep:] if num_logits_to_keep else h)
        if self.config.final_logit_softcapping is not None:
            logits = soft_cap(logits, self.config.final_logit_softcapping)

        moes = [layer.mlp for layer in self.layers if isinstance(layer.mlp, MoE)]
        aux_loss = sum(m.aux_loss for m in moes) if moes else None
        loss = None
        if labels is not None:
            loss = next_token_loss(logits, labels)
            if aux_loss is not None:
                loss = loss + aux_loss
        return ModelOutput(
            logits=logits, loss=loss, hidden_states=h, aux_loss=aux_loss, attentions=attentions, kv_cache=kv_cache
        )

    def _check_inputs(self, s: int, labels: torch.Tensor | None, num_logits_to_keep: int) -> None:
        cfg = self.config
        if cfg.position in ("learned", "sinusoidal") and s > cfg.max_seq_len:
            raise ValueError(
                f"sequence of {s} positions is longer than max_seq_len={cfg.max_seq_len} "
                f"({cfg.position} position embeddings have no entry beyond it)"
            )
        if labels is not None and num_logits_to_keep:
            raise ValueError("num_logits_to_keep cannot be combined with labels (the loss needs every logit)")

    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token (+ absolute position) embeddings after dropout; Gemma scales the token
        embeddings by sqrt(d_model), rounded to their dtype as transformers does."""
        x = self.embed_tokens(input_ids)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.d_model**0.5, dtype=x.dtype)
        return self.dropout(add_absolute_positions(self, x, position_ids))

    def _layer_inputs(self, past, t, x, position_ids, padding, prefix_len, document_ids) -> list[dict]:
        """Per layer: attention bias (None: SDPA's causal kernel), RoPE tables and is_causal.
        Layers differ only in their sliding window and (Gemma 3) RoPE base, so each kind is
        built once per forward and shared by the layers of that kind."""
        cfg = self.config
        rotary, local = getattr(self, "rotary", None), getattr(self, "rotary_local", None)
        rope = rotary(position_ids, x.dtype) if rotary is not None else None
        local_rope = local(position_ids, x.dtype) if local is not None else rope
        windows = [cfg.layer_window(i) for i in range(cfg.n_layers)]
        kinds = {}
        for window in dict.fromkeys(windows):
            bias = self._attention_bias(past, t, x, padding, prefix_len, document_ids, window)
            kinds[window] = dict(attn_bias=bias, rope=rope if window is None else local_rope, is_causal=bias is None)
        return [kinds[w] for w in windows]

    def _attention_bias(self, past, t, x, padding, prefix_len, document_ids, window) -> torch.Tensor | None:
        """The self-attention bias of the layers with sliding `window`, in x's dtype (None: SDPA's causal kernel)."""
        device = x.device
        q_pos = torch.arange(past, past + t, device=device)
        k_pos = torch.arange(past + t, device=device)
        return attention_bias(
            q_pos, k_pos, x.dtype, causal=True, window=window, padding=padding, prefix_len=prefix_len,
            document_ids=document_ids, score_bias=position_score_bias(self, q_pos, k_pos, causal=True),
        )


def check_document_ids(document_ids, batch: int, t: int, device, kv_cache, prefix_len) -> torch.Tensor:
    """Packed-example ids [B, T] on `device`; they rule out a KV cache and a prefix-LM prefix."""
    if kv_cache is not None or prefix_len is not None:
        raise ValueError("document_ids (packed examples) cannot be combined with kv_cache or prefix_len")
    if document_ids.shape != (batch, t):
        raise ValueError(f"document_ids has shape {tuple(document_ids.shape)}, expected [batch={batch}, {t}]")
    return document_ids.to(device)


def default_position_ids(
    batch: int,
    t: int,
    past: int,
    device: torch.device,
    padding: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions [B, T] of the new tokens: cumsum(padding) - 1, so a left-padded row numbers
    its first real token 0 exactly as an unpadded one would; they continue after a cache of
    `past` slots, and restart at 0 where a new packed example (document_ids) begins."""
    if document_ids is not None:
        idx = torch.arange(t, device=device).expand(batch, t)
        starts = torch.ones(batch, t, dtype=torch.bool, device=device)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        return idx - torch.where(starts, idx, 0).cummax(dim=-1).values
    if padding is not None:
        return (padding.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
    return torch.arange(past, past + t, device=device)[None].expand(batch, t)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, T, V] against labels shifted left by one (-100 ignored).

    The labels are shifted, not the logits: slicing the logits would copy the largest
    activation of the model in the forward pass and again in the backward pass."""
    targets = F.pad(labels.to(logits.device), (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
