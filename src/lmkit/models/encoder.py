"""`EncoderLM`: a bidirectional Transformer encoder with BERT's pretraining heads.

tokens -> embed_tokens + embed_positions + embed_types -> embed_norm -> N x TransformerBlock
       -> hidden_states -> pooler (tanh(dense(h[CLS])))            -> nsp_head -> nsp_logits
                        -> mlm_head (dense, act, norm, decoder+bias) -> logits

Every token sees every other token (no causal mask); padding keys are masked out. BERT is
post-norm (`x = Norm(x + Attn(x))`), so the stack has no final norm; a pre-norm config gets
one (`norm`). BERT's GELU is the exact erf one (activation "gelu"), its LayerNorm eps 1e-12.

Parameter names (hub/arch_bert.py maps Hugging Face names onto these):
  embed_tokens.weight, embed_positions.weight (learned positions), embed_types.weight
  (type_vocab_size > 0), embed_norm.{weight,bias},
  layers.{i}.self_attn.{q,k,v,o}_proj, layers.{i}.attn_norm, layers.{i}.mlp.{up,down}_proj,
  layers.{i}.mlp_norm, norm (pre-norm only),
  pooler.dense, mlm_head.dense, mlm_head.norm, mlm_head.decoder.weight (the same tensor as
  embed_tokens.weight when config.tie_embeddings), mlm_head.bias, nsp_head.{weight,bias}.

Heads. A checkpoint may carry any subset of the heads: a plain `BertModel` (such as
all-MiniLM-L6-v2) has only the pooler (or nothing, when exported without it),
`BertForMaskedLM` only the MLM head. The set is part of the config —
``config.extra["heads"]``, a list drawn from ("pooler", "mlm", "nsp"), default all three —
so a model rebuilt from its config always has the same parameters, and a strict load of a
model never leaves a silently random head: a head that is built must find all its tensors.
hub/arch_bert.py sets the list from the heads whose tensors a checkpoint actually holds.
``EncoderLM(config, heads=...)`` overrides the set and records it in the model's own copy
of the config. Gradient checkpointing: `gradient_checkpointing_enable()`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.block import TransformerBlock, run_layers
from lmkit.models.init import init_normal_weights
from lmkit.models.config import ModelConfig
from lmkit.models.ffn import activation_fn
from lmkit.models.masks import attention_bias, real_tokens
from lmkit.models.norms import make_norm
from lmkit.models.output import ModelOutput
from lmkit.models.positional import add_absolute_positions, add_position_modules, position_score_bias

HEADS = ("pooler", "mlm", "nsp")


def encoder_heads(config: ModelConfig) -> tuple[str, ...]:
    """The heads a config asks for (``config.extra["heads"]``, default all), validated."""
    heads = config.extra.get("heads", HEADS) if isinstance(config.extra, dict) else HEADS
    return _check_heads(heads)


def _check_heads(heads: Iterable[str]) -> tuple[str, ...]:
    heads = tuple(heads)
    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        raise ValueError(f"EncoderLM heads {unknown} are unknown; choose from {HEADS}")
    if "nsp" in heads and "pooler" not in heads:
        raise ValueError("EncoderLM: the 'nsp' head reads the pooler output, so it needs the 'pooler' head too")
    return tuple(h for h in HEADS if h in heads)  # canonical order


class Pooler(nn.Module):
    """tanh(dense(h[CLS])): BERT's sentence vector, trained by next-sentence prediction."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class MLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> vocabulary projection (tied to the input embedding) + bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = activation_fn(config.activation)
        self.norm = make_norm(config)
        self.decoder = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden)))) + self.bias


class EncoderLM(nn.Module):
    def __init__(self, config: ModelConfig, heads: Iterable[str] | None = None) -> None:
        super().__init__()
        if config.arch != "encoder":
            raise ValueError(f"EncoderLM needs config.arch='encoder', got {config.arch!r}")
        if heads is not None:
            config = copy.deepcopy(config)
            config.extra = {**config.extra, "heads": list(_check_heads(heads))}
        self.heads = encoder_heads(config)
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        add_position_modules(self, config, bidirectional=True)
        if config.type_vocab_size:
            self.embed_types = nn.Embedding(config.type_vocab_size, config.d_model)
        self.embed_norm = make_norm(config) if config.norm_position == "post" else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerBlock(config, layer_idx=i) for i in range(config.n_layers))
        self.norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        if "pooler" in self.heads:
            self.pooler = Pooler(config)
        if "mlm" in self.heads:
            self.mlm_head = MLMHead(config)
        if "nsp" in self.heads:
            self.nsp_head = nn.Linear(config.d_model, 2)
        self.reset_parameters()
        if config.tie_embeddings and "mlm" in self.heads:
            self.mlm_head.decoder.weight = self.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BERT initialisation: N(0, initializer_range) weights, zero biases, unit norms."""
        init_normal_weights(self, self.config.initializer_range)
        for m in self.modules():
            if isinstance(m, MLMHead):
                nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied MLM decoder counts once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them
        (training mode only): activation memory drops from O(layers) to O(1) layers for
        about one more forward pass of compute."""
        self.gradient_checkpointing = enabled

    # ---- forward ------------------------------------------------------------------------
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids [B, T] -> (last hidden states [B, T, d_model], per-layer attention weights if asked)."""
        cfg = self.config
        b, t = input_ids.shape
        device = input_ids.device
        if cfg.position in ("learned", "sinusoidal") and t > cfg.max_seq_len:
            raise ValueError(
                f"sequence of {t} tokens is longer than max_seq_len={cfg.max_seq_len} "
                f"({cfg.position} position embeddings have no entry beyond it); truncate the input"
            )
        pos = torch.arange(t, device=device)
        x = add_absolute_positions(self, self.embed_tokens(input_ids), pos)
        if cfg.type_vocab_size:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.embed_types(token_type_ids.to(device))
        elif token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError("token_type_ids given but the config has type_vocab_size=0 (no segment embeddings)")
        x = self.dropout(self.embed_norm(x))
        rope = self.rotary(pos[None].expand(b, t), x.dtype) if cfg.position == "rope" else None

        padding = real_tokens(attention_mask, b, t, device)
        score_bias = position_score_bias(self, pos, pos, causal=False)
        attn_bias = attention_bias(pos, pos, x.dtype, causal=False, padding=padding, score_bias=score_bias)

        checkpointing = getattr(self, "gradient_checkpointing", False) and self.training
        x, attentions = run_layers(
            self.layers, x, checkpointing=checkpointing, return_weights=return_weights, attn_bias=attn_bias, rope=rope
        )
        return self.norm(x), attentions

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> ModelOutput:
        """-> ModelOutput(logits [B, T, V] MLM scores, nsp_logits [B, 2], pooled [B, d], hidden_states, loss).

        labels [B, T]: the original ids at masked positions, -100 elsewhere (MLM loss).
        next_sentence_label [B]: 0 = B follows A, 1 = B is random (NSP loss).
        loss is the sum of the losses whose labels were given.
        """
        h, attentions = self.encode(input_ids, attention_mask, token_type_ids, return_weights)
        pooled = self.pooler(h) if "pooler" in self.heads else None
        logits = self.mlm_head(h) if "mlm" in self.heads else None
        nsp_logits = self.nsp_head(pooled) if "nsp" in self.heads else None
        loss = None
        if labels is not None:
            if logits is None:
                raise ValueError("labels given for the MLM loss, but this EncoderLM has no 'mlm' head")
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1), ignore_index=-100
            )
        if next_sentence_label is not None:
            if nsp_logits is None:
                raise ValueError("next_sentence_label given, but this EncoderLM has no 'nsp' head")
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label.to(nsp_logits.device).reshape(-1))
            loss = nsp_loss if loss is None else loss + nsp_loss
        return ModelOutput(
            logits=logits, loss=loss, hidden_states=h, attentions=attentions, pooled=pooled, nsp_logits=nsp_logits
        )

    @torch.no_grad()
    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sentence embeddings [B, d_model], as sentence-transformers computes them.

        mean: average of the last hidden states over real (unpadded) tokens;
        cls:  the last hidden state of the first token (not the tanh pooler);
        normalize: divide by the L2 norm, so a dot product is the cosine similarity.
        """
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling={pooling!r}: choose 'mean' or 'cls'")
        h, _ = self.encode(input_ids, attention_mask, token_type_ids)
        if pooling == "cls":
            out = h[:, 0]
        else:
            m = torch.ones(input_ids.shape, device=h.device) if attention_mask is None else attention_mask.to(h.device)
            m = m[..., None].to(h.dtype)
            out = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(out, p=2, dim=-1) if normalize else out
