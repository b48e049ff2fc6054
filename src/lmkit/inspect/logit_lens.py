"""Logit lens (nostalgebraist 2020): read every layer's residual stream through the model's
own output head, as if the stack stopped there.

For a decoder the head is the final norm and the LM head (plus Gemma's final soft cap); for an
encoder it is the final norm (identity for post-norm BERT) and the MLM head. Layer 0 is the
embedding output; layer L (the last) reproduces the model's logits exactly. How early the
final prediction appears shows which layers do the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmkit.errors import ConfigError


@dataclass
class LensLayer:
    """One layer's reading: top-k token ids and probabilities at every position."""

    layer: int  # 0 = embeddings, i = output of block i
    top_ids: torch.Tensor  # [T, k]
    top_probs: torch.Tensor  # [T, k]
    logits: torch.Tensor  # [T, V]

    def to_dict(self, decode=None) -> dict:
        """JSON-ready; `decode(id) -> str` names the tokens when given."""
        name = decode or (lambda i: i)
        return {
            "layer": self.layer,
            "top": [[{"token": name(int(i)), "id": int(i), "prob": round(float(p), 6)} for i, p in zip(ids, probs)]
                    for ids, probs in zip(self.top_ids, self.top_probs)],
        }


def output_head(model: nn.Module):
    """The function from a residual-stream state [.., d_model] to vocabulary logits."""
    norm = getattr(model, "norm", nn.Identity())
    if hasattr(model, "lm_head"):
        cap = getattr(model.config, "final_logit_softcapping", None)

        def head(h):
            logits = model.lm_head(norm(h))
            if cap is not None:
                from lmkit.models.softcap import soft_cap

                logits = soft_cap(logits, cap)
            return logits

        return head
    if hasattr(model, "mlm_head"):
        return lambda h: model.mlm_head(norm(h))
    raise ConfigError(f"{type(model).__name__} has no LM or MLM head to read the layers through (logit lens)")


def residual_stream(model: nn.Module, input_ids: torch.Tensor, attention_mask=None) -> list[torch.Tensor]:
    """Hidden states [B, T, d] entering the first block and leaving each block (L + 1 tensors)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no `layers` to read (logit lens needs a Transformer stack)")
    states: list[torch.Tensor] = []
    hooks = [layers[0].register_forward_pre_hook(lambda m, args: states.append(args[0].detach()))]
    hooks += [layer.register_forward_hook(lambda m, args, out: states.append(out[0].detach())) for layer in layers]
    try:
        model(input_ids, attention_mask=attention_mask)
    finally:
        for h in hooks:
            h.remove()
    return states


def logit_lens(model: nn.Module, input_ids: torch.Tensor, top_k: int = 5) -> list[LensLayer]:
    """input_ids [T] or [1, T] -> one LensLayer per layer (embeddings first), probabilities in fp32."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise ValueError(f"logit_lens reads one sequence; got a batch of {input_ids.shape[0]}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            head = output_head(model)
            out = []
            for i, h in enumerate(residual_stream(model, input_ids)):
                logits = head(h)[0].float()
                probs, ids = logits.softmax(-1).topk(min(top_k, logits.shape[-1]), dim=-1)
                out.append(LensLayer(i, ids, probs, logits))
    finally:
        model.train(was_training)
    return out
