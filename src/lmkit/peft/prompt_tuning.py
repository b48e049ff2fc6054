"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

n trainable "virtual token" embeddings are prepended to the input embeddings; the model is
frozen. Only the input layer changes (unlike prefix tuning / P-tuning v2, which add
keys/values in every layer), and there is no reparameterisation MLP. Trainable: n·d.

Initialisation (the notes list all three):
  random  N(0, σ²) with σ the standard deviation of the model's embedding table
  vocab   the embeddings of n token ids sampled uniformly from the vocabulary (PEFT's SAMPLE_VOCAB)
  text    the embeddings of given token ids (label words or a task description), repeated /
          cut to n as PEFT's TEXT init does (`init_token_ids`, or `init_text` + a tokenizer)

`VirtualTokenModel` does the insertion for prompt tuning and P-tuning v1: it puts
placeholder ids where the virtual tokens go, extends attention_mask (1), labels (-100) and
token_type_ids (0), replaces the placeholders' embeddings through a forward hook on the
model's `embed_tokens`, and returns logits / hidden states for the real positions only.
Virtual tokens take positions 0..n-1, the real tokens follow (as in PEFT). With a KVCache the
virtual tokens are inserted on the first forward (empty cache) and kept in the cache; later
calls only extend the attention mask and shift position_ids. `make_cache` returns a cache n
slots larger whose `seq_len` counts real tokens only, so `lmkit.infer.generate` works on a
prompt-tuned model unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.output import ModelOutput
from lmkit.peft.method_common import MethodConfig, bad, check_choice, check_int, freeze, model_config_of

INITS = ("random", "vocab", "text")


@dataclass
class PromptTuningConfig(MethodConfig):
    method = "prompt"
    n_virtual_tokens: int = 8
    init: str = "vocab"
    init_token_ids: list[int] | None = None  # init="text": label words / task text, as token ids
    init_text: str | None = None  # init="text": tokenised with the tokenizer passed to apply_prompt
    seed: int = 0  # for random / vocab init

    def __post_init__(self) -> None:
        check_int(self, "n_virtual_tokens")
        check_choice(self, "init", INITS)
        if self.init == "text":
            if not self.init_token_ids and not self.init_text:
                bad(self, "init_token_ids", "init='text' needs init_token_ids (or init_text and a tokenizer)")
        if self.init_token_ids is not None:
            self.init_token_ids = [int(i) for i in self.init_token_ids]


class VirtualTokenCache:
    """A KVCache that also holds the n virtual tokens but reports only the real ones in
    `seq_len` (what callers such as `generate` count); everything else is delegated."""

    def __init__(self, inner, n_virtual: int) -> None:
        self.inner = inner
        self.n_virtual = n_virtual

    @property
    def seq_len(self) -> int:
        return max(self.inner.seq_len - self.n_virtual, 0)

    def truncate(self, n: int) -> None:
        self.inner.truncate(n + self.n_virtual)

    def reset(self) -> None:
        self.inner.reset()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class VirtualTokenModel(nn.Module):
    """Insert the n virtual token embeddings produced by `encoder()` ([n, d]) into the input.

    n_before go in front of the sequence; n_after right after each row's last real token
    (P-tuning's template positions). Works around any lmkit DecoderLM / EncoderLM.
    """

    def __init__(self, base: nn.Module, encoder: nn.Module, n_before: int, n_after: int = 0) -> None:
        super().__init__()
        self.base_model = base
        self.prompt_encoder = encoder
        self.config = model_config_of(base)
        self.n_before, self.n_after = n_before, n_after
        self.n_virtual = n_before + n_after
        embed = getattr(base, "embed_tokens", None)
        if not isinstance(embed, nn.Embedding):
            raise ConfigError(f"{type(base).__name__} has no embed_tokens embedding to put virtual tokens into")
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hook = embed.register_forward_hook(self._embed_hook)

    def _embed_hook(self, module, args, out):
        if self._pending is None:
            return None
        mask, src = self._pending
        out = out.clone()
        out[mask] = src.to(out.dtype)
        return out

    def make_cache(self, batch_size: int, max_len: int | None = None) -> VirtualTokenCache:
        inner = self.base_model.make_cache(batch_size, (max_len or self.config.max_seq_len) + self.n_virtual)
        return VirtualTokenCache(inner, self.n_virtual)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        self.base_model.gradient_checkpointing_enable(enabled)

    def _layout(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """-> (index of each original token in the new sequence [B, T], virtual mask [B, T+n])."""
        b, t = input_ids.shape
        dev = input_ids.device
        j = torch.arange(t, device=dev)[None].expand(b, t)
        idx = j + self.n_before
        if self.n_after:
            if attention_mask is None:
                last = torch.full((b,), t - 1, device=dev)
            else:
                m = attention_mask.to(dev).bool()
                last = torch.where(m, j, torch.full_like(j, -1)).max(1).values
            idx = idx + self.n_after * (j > last[:, None])
        virt = torch.ones(b, t + self.n_virtual, dtype=torch.bool, device=dev)
        virt[torch.arange(b, device=dev)[:, None], idx] = False
        return idx, virt

    @staticmethod
    def _scatter(values: torch.Tensor, idx: torch.Tensor, total: int, fill) -> torch.Tensor:
        b = values.shape[0]
        out = torch.full((b, total, *values.shape[2:]), fill, dtype=values.dtype, device=values.device)
        out[torch.arange(b, device=values.device)[:, None], idx] = values
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, kv_cache=None, **kwargs) -> ModelOutput:
        b, t = input_ids.shape
        n = self.n_virtual
        if isinstance(kv_cache, VirtualTokenCache):
            kv_cache = kv_cache.inner
        if kv_cache is not None and kv_cache.seq_len > 0:
            # continuing a cached sequence: the virtual tokens are already in the cache
            if self.n_after:
                raise ConfigError("cached continuation needs all virtual tokens in front (n_after=0)")
            if attention_mask is not None:
                ones = torch.ones(b, n, dtype=attention_mask.dtype, device=attention_mask.device)
                attention_mask = torch.cat([ones, attention_mask], dim=1)
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = kwargs["position_ids"] + n
            return self.base_model(input_ids, attention_mask=attention_mask, labels=labels, kv_cache=kv_cache, **kwargs)
        if kv_cache is not None:
            kwargs["kv_cache"] = kv_cache

        idx, virt = self._layout(input_ids, attention_mask)
        total = t + n
        new_ids = self._scatter(input_ids, idx, total, 0)
        new_mask = None
        if attention_mask is not None:
            new_mask = self._scatter(attention_mask, idx, total, 1)
        if labels is not None:
            labels = self._scatter(labels, idx, total, -100)
        if kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = self._scatter(kwargs["token_type_ids"], idx, total, 0)
        kwargs.pop("position_ids", None)  # recomputed by the model from the new mask
        keep = kwargs.get("num_logits_to_keep", 0)
        if keep and self.n_after:
            raise ConfigError("num_logits_to_keep needs all virtual tokens in front (n_after=0)")
        prompts = self.prompt_encoder()  # [n, d]
        src = prompts[None].expand(b, n, prompts.shape[-1]).reshape(b * n, -1)
        self._pending = (virt, src)
        try:
            out = self.base_model(new_ids, attention_mask=new_mask, labels=labels, **kwargs)
        finally:
            self._pending = None
        rows = torch.arange(b, device=input_ids.device)[:, None]
        if out.logits is not None and not keep and out.logits.dim() == 3 and out.logits.shape[1] == total:
            out.logits = out.logits[rows, idx]
        if out.hidden_states is not None and out.hidden_states.shape[1] == total:
            out.hidden_states = out.hidden_states[rows, idx]
        return out


class SoftPrompt(nn.Module):
    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, d)  # PEFT's PromptEmbedding layout

    def forward(self) -> torch.Tensor:
        return self.embedding.weight


def _init_ids(config: PromptTuningConfig, vocab_size: int, tokenizer=None) -> list[int]:
    ids = config.init_token_ids
    if not ids:
        if tokenizer is None:
            raise ConfigError("PromptTuningConfig.init_text needs a tokenizer: apply_prompt(model, config, tokenizer=...)")
        ids = list(tokenizer.encode(config.init_text))
        ids = getattr(ids, "ids", ids)
    if not ids:
        raise ConfigError("PromptTuningConfig: the init text has no tokens")
    bad_ids = [i for i in ids if not 0 <= i < vocab_size]
    if bad_ids:
        raise ConfigError(f"PromptTuningConfig.init_token_ids {bad_ids[:5]} are outside the vocabulary [0, {vocab_size})")
    n = config.n_virtual_tokens
    return (ids * math.ceil(n / len(ids)))[:n]  # repeat / cut to n, as PEFT does


def apply_prompt(model: nn.Module, config: PromptTuningConfig | None = None, tokenizer=None) -> VirtualTokenModel:
    """Freeze `model`; return a VirtualTokenModel whose soft prompt is the only trainable part."""
    config = config or PromptTuningConfig()
    mcfg = model_config_of(model)
    freeze(model)
    emb = model.embed_tokens.weight
    prompt = SoftPrompt(config.n_virtual_tokens, mcfg.d_model).to(device=emb.device, dtype=emb.dtype)
    g = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        if config.init == "random":
            std = float(emb.float().std())
            prompt.embedding.weight.copy_(torch.randn(config.n_virtual_tokens, mcfg.d_model, generator=g) * std)
        else:
            if config.init == "vocab":
                ids = torch.randint(0, mcfg.vocab_size, (config.n_virtual_tokens,), generator=g)
            else:
                ids = torch.tensor(_init_ids(config, mcfg.vocab_size, tokenizer))
            prompt.embedding.weight.copy_(emb[ids.to(emb.device)])
    return VirtualTokenModel(model, prompt, config.n_virtual_tokens, 0)


def prompt_param_count(model_config: ModelConfig, config: PromptTuningConfig) -> int:
    return config.n_virtual_tokens * model_config.d_model
