"""`EncoderDecoderLM`: a sequence-to-sequence Transformer (T5; the original Transformer).

source ids -> embed_tokens -> encoder (N x bidirectional self-attention + FFN) -> norm -> encoder_states
target ids -> embed_tokens -> decoder (M x causal self-attention + cross-attention to
              encoder_states + FFN) -> norm [-> * d_model^-0.5 when tied] -> lm_head -> logits

T5 specifics (all driven by the config, see hub/arch_t5.py): RMSNorm without bias, no
biases anywhere, no 1/sqrt(d) score scaling (scale_attn=False; the initialisation folds it
into the query weights), and a learned relative position bias (position="t5_bias") computed
once per stack and shared by all its layers — bidirectional buckets in the encoder,
causal ones in the decoder; cross-attention has no position bias. With tied embeddings the
decoder output is multiplied by d_model^-0.5 before the (shared) output projection, as
Mesh TensorFlow and transformers do. The decoder starts from decoder_start_token_id (T5: the
pad id); given only `labels`, the decoder input is the labels shifted right by one.

Parameter names (hub/arch_t5.py maps Hugging Face names onto these):
  embed_tokens.weight (shared by both stacks), lm_head.weight (the same tensor when tied),
  {encoder,decoder}.relative_bias.embedding.weight (t5_bias) or .embed_positions.weight (learned),
  {encoder,decoder}.layers.{i}.attn_norm / self_attn.{q,k,v,o}_proj / mlp_norm /
  mlp.{gate,up,down}_proj, decoder.layers.{i}.cross_attn_norm / cross_attn.{q,k,v,o}_proj,
  {encoder,decoder}.norm.weight (pre-norm only).

Incremental decoding: `decode(..., kv_cache=cache)` with a `KVCache` from `make_cache`
stores the decoder self-attention keys/values; the cross-attention keys/values are
recomputed from encoder_states at each step (cheap next to the encoder, and it keeps the
cache a plain self-attention cache). `gradient_checkpointing_enable()` recomputes the layers
of both stacks in the backward pass (training mode, no cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.attention import Attention
from lmkit.models.block import TransformerBlock, run_layers
from lmkit.models.config import ModelConfig
from lmkit.models.ffn import FeedForward
from lmkit.models.masks import attention_bias, real_tokens
from lmkit.models.norms import RMSNorm, make_norm
from lmkit.models.output import ModelOutput
from lmkit.models.positional import (
    T5RelativeBias, add_absolute_positions, add_position_modules, position_score_bias,
)


class Stack(nn.Module):
    """One side of the model: positions, layers and the final norm (the embedding is shared, outside)."""

    def __init__(self, config: ModelConfig, n_layers: int, is_decoder: bool) -> None:
        super().__init__()
        self.config = config
        self.is_decoder = is_decoder
        add_position_modules(self, config, bidirectional=not is_decoder)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(config, cross_attention=is_decoder, layer_idx=i) for i in range(n_layers)
        )
        self.norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = False  # set by EncoderDecoderLM.gradient_checkpointing_enable

    def forward(
        self,
        x: torch.Tensor,
        *,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        padding: torch.Tensor | None = None,
        kv_cache=None,
        encoder_states: torch.Tensor | None = None,
        cross_bias: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: embedded tokens [B, T, d] at slots q_pos [T] over keys k_pos [S] (cached + new);
        padding: bool [B, S] (True = real token) or None. The decoder stack is causal."""
        cfg = self.config
        if cfg.position in ("learned", "sinusoidal") and int(k_pos[-1]) >= cfg.max_seq_len:
            raise ValueError(
                f"sequence of {int(k_pos[-1]) + 1} positions is longer than max_seq_len={cfg.max_seq_len} "
                f"({cfg.position} position embeddings have no entry beyond it)"
            )
        x = self.dropout(add_absolute_positions(self, x, q_pos))
        rope = self.rotary(q_pos[None].expand(x.shape[0], -1), x.dtype) if cfg.position == "rope" else None
        causal = self.is_decoder
        attn_bias = attention_bias(
            q_pos, k_pos, x.dtype, causal=causal, padding=padding,
            score_bias=position_score_bias(self, q_pos, k_pos, causal=causal),
        )
        is_causal = causal and attn_bias is None
        x, attentions = run_layers(
            self.layers, x, checkpointing=self.gradient_checkpointing and self.training and kv_cache is None,
            kv_cache=kv_cache, return_weights=return_weights, attn_bias=attn_bias, rope=rope, is_causal=is_causal,
            encoder_states=encoder_states, cross_bias=cross_bias,
        )
        return self.dropout(self.norm(x)), attentions


class EncoderDecoderLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "encoder_decoder":
            raise ValueError(f"EncoderDecoderLM needs config.arch='encoder_decoder', got {config.arch!r}")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, config.n_layers, is_decoder=False)
        self.decoder = Stack(config, config.n_decoder_layers, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    # ---- construction -------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """T5 (Mesh TensorFlow) initialisation: each weight ~ N(0, fan_in^-0.5), the query's
        additionally divided by sqrt(head_dim) — the score scaling T5 leaves out of attention
        — embeddings ~ N(0, 1), unit norm gains, zero biases."""
        d = self.config.d_model
        for m in self.modules():
            if isinstance(m, Attention):
                nn.init.normal_(m.q_proj.weight, 0.0, (d * m.head_dim) ** -0.5)
                for lin in (m.k_proj, m.v_proj):
                    nn.init.normal_(lin.weight, 0.0, d**-0.5)
                nn.init.normal_(m.o_proj.weight, 0.0, (m.n_heads * m.head_dim) ** -0.5)
            elif isinstance(m, FeedForward):
                for name in ("gate_proj", "up_proj"):
                    if hasattr(m, name):
                        nn.init.normal_(getattr(m, name).weight, 0.0, d**-0.5)
                nn.init.normal_(m.down_proj.weight, 0.0, m.down_proj.in_features**-0.5)
            elif isinstance(m, T5RelativeBias):
                nn.init.normal_(m.embedding.weight, 0.0, d**-0.5)
            elif isinstance(m, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(m.weight)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.LayerNorm) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for stack in (self.encoder, self.decoder):
            if hasattr(stack, "embed_positions"):
                nn.init.normal_(stack.embed_positions.weight, 0.0, self.config.initializer_range)
        nn.init.normal_(self.embed_tokens.weight, 0.0, 1.0)
        nn.init.normal_(self.lm_head.weight, 0.0, 1.0)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied lm_head counts once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute each layer's activations (both stacks) in the backward pass instead of
        storing them (training mode, no KV cache): activation memory drops from O(layers)
        to O(1) layers for about one more forward pass of compute."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def make_cache(self, batch_size: int, max_len: int | None = None):
        """A `KVCache` for the decoder's self-attention (max_len defaults to config.max_seq_len)."""
        from lmkit.models.kv_cache import KVCache

        cfg = self.config
        p = next(self.parameters())
        return KVCache(
            cfg.n_decoder_layers, batch_size, cfg.n_kv_heads, cfg.head_dim, max_len or cfg.max_seq_len,
            dtype=p.dtype, device=p.device,
        )

    @property
    def decoder_start_token_id(self) -> int:
        cfg = self.config
        if cfg.decoder_start_token_id is not None:
            return cfg.decoder_start_token_id
        return cfg.pad_token_id if cfg.pad_token_id is not None else 0

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: [start, y_0, ..., y_{n-2}], with -100 replaced by pad."""
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        out = labels.new_full(labels.shape, self.decoder_start_token_id)
        out[..., 1:] = labels[..., :-1]
        return out.masked_fill(out == -100, pad)

    # ---- forward ------------------------------------------------------------------------
    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, return_weights: bool = False
    ) -> torch.Tensor:
        """input_ids [B, S] -> encoder states [B, S, d_model] (pass them to `decode` / `forward`)."""
        return self._encode(input_ids, attention_mask, return_weights)[0]

    def _encode(self, input_ids, attention_mask, return_weights):
        b, s = input_ids.shape
        pos = torch.arange(s, device=input_ids.device)
        padding = real_tokens(attention_mask, b, s, input_ids.device)
        return self.encoder(
            self.embed_tokens(input_ids), q_pos=pos, k_pos=pos, padding=padding, return_weights=return_weights
        )

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        kv_cache=None,
        labels: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> ModelOutput:
        """One decoder pass: all target positions at once, or the next ones after a `KVCache`.

        attention_mask [B, S]: the encoder's padding mask (masks the cross-attention keys).
        decoder_attention_mask [B, past + T]: 1/0 over cached + new target positions.
        labels [B, T]: targets aligned with decoder_input_ids (no shift); -100 is ignored.
        """
        cfg = self.config
        b, t = decoder_input_ids.shape
        device = decoder_input_ids.device
        past = kv_cache.seq_len if kv_cache is not None else 0
        s = past + t
        q_pos = torch.arange(past, s, device=device)
        k_pos = torch.arange(s, device=device)
        padding = real_tokens(decoder_attention_mask, b, s, device, name="decoder_attention_mask")
        src_len = encoder_states.shape[1]
        cross_bias = attention_bias(
            q_pos, torch.arange(src_len, device=device), encoder_states.dtype, causal=False,
            padding=real_tokens(attention_mask, b, src_len, device),
        )
        h, attentions = self.decoder(
            self.embed_tokens(decoder_input_ids), q_pos=q_pos, k_pos=k_pos, padding=padding, kv_cache=kv_cache,
            encoder_states=encoder_states, cross_bias=cross_bias, return_weights=return_weights,
        )
        out = h * cfg.d_model**-0.5 if cfg.tie_embeddings else h
        logits = self.lm_head(out)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.to(device).reshape(-1), ignore_index=-100
            )
        return ModelOutput(
            logits=logits, loss=loss, hidden_states=h, attentions=attentions, encoder_states=encoder_states,
            kv_cache=kv_cache,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_states: torch.Tensor | None = None,
        kv_cache=None,
        return_weights: bool = False,
    ) -> ModelOutput:
        """Encode `input_ids` (unless `encoder_states` is given) and decode.

        Without decoder_input_ids the decoder reads shift_right(labels). The loss is the mean
        cross-entropy of the logits against `labels` (-100 ignored). `attentions` holds the
        decoder self-attention weights when return_weights.
        """
        if encoder_states is None:
            if input_ids is None:
                raise ValueError("give input_ids (to encode) or encoder_states (already encoded)")
            encoder_states, _ = self._encode(input_ids, attention_mask, False)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("give decoder_input_ids, or labels to build them from (shifted right)")
            decoder_input_ids = self.shift_right(labels)
        return self.decode(
            decoder_input_ids, encoder_states, attention_mask=attention_mask,
            decoder_attention_mask=decoder_attention_mask, kv_cache=kv_cache, labels=labels,
            return_weights=return_weights,
        )
