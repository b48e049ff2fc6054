"""CLIP (Radford et al. 2021): contrastive image-text pretraining with two encoders.

image -> ViT -> pooled -> visual_projection (no bias) -> L2-normalise -> image embedding
text  -> CLIPTextEncoder -> pooled (EOS) -> text_projection (no bias) -> L2-normalise -> text embedding
logits_per_image = exp(logit_scale) * image_emb @ text_emb.T    (cosine times a learned temperature)

Training is symmetric InfoNCE: in a batch of N matched pairs, cross-entropy of each image
over the N captions plus of each caption over the N images, halved. Zero-shot
classification embeds one prompt per class ("a photo of the digit 3") and picks the
class whose prompt is most similar to the image.

Parameter names: vision.* (vision/vit.py), text.* (vision/clip_text.py),
visual_projection.weight, text_projection.weight, logit_scale (a scalar: log of 1/temperature).
vision/clip_hub.py maps them to and from transformers' `CLIPModel`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import dataclass_from_dict
from lmkit.vision.clip_text import CLIPTextConfig, CLIPTextEncoder
from lmkit.vision.vit import ViT, ViTConfig


def clip_vision_config(**kw: Any) -> ViTConfig:
    """A ViTConfig with CLIP's layout: pre-LN on the embeddings, bias-free patch conv, class-token pooling."""
    base = dict(pre_norm=True, patch_bias=False, pooling="cls", activation="quick_gelu")
    return ViTConfig(**{**base, **kw})


@dataclass
class CLIPConfig:
    vision: ViTConfig = field(default_factory=clip_vision_config)
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    projection_dim: int = 512
    logit_scale_init: float = math.log(1 / 0.07)  # 2.6592, CLIP's initial temperature 0.07
    max_logit_scale: float = math.log(100.0)  # CLIP clamps exp(logit_scale) at 100 during training

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = ViTConfig.from_dict(self.vision)
        if isinstance(self.text, dict):
            self.text = CLIPTextConfig.from_dict(self.text)
        if not isinstance(self.projection_dim, int) or self.projection_dim <= 0:
            raise ConfigError(f"CLIPConfig.projection_dim={self.projection_dim!r}: must be a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        return dataclass_from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE for N matched pairs: logits [N images, N texts], pair i on the diagonal."""
    target = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    logits = logits_per_image.float()
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = ViT(config.vision)
        self.text = CLIPTextEncoder(config.text)
        self.visual_projection = nn.Linear(config.vision.d_model, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text.d_model, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        nn.init.normal_(self.visual_projection.weight, 0.0, config.vision.d_model ** -0.5)
        nn.init.normal_(self.text_projection.weight, 0.0, config.text.d_model ** -0.5)

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """pixels [B, C, H, W] -> image embeddings [B, projection_dim] (unit length when normalize)."""
        emb = self.visual_projection(self.vision(pixel_values))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """ids [B, T] -> text embeddings [B, projection_dim] (unit length when normalize)."""
        emb = self.text_projection(self.text(input_ids, attention_mask))
        return F.normalize(emb, dim=-1) if normalize else emb

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        return_loss: bool = False,
    ) -> dict[str, torch.Tensor]:
        """-> {"logits_per_image" [Ni, Nt], "logits_per_text" [Nt, Ni], "image_embeds", "text_embeds"
        (normalised), "loss" (symmetric InfoNCE, when return_loss: needs Ni == Nt matched pairs)}."""
        image = self.encode_image(pixel_values)
        text = self.encode_text(input_ids, attention_mask)
        logits_per_image = self.logit_scale.exp() * image @ text.t()
        out = {"logits_per_image": logits_per_image, "logits_per_text": logits_per_image.t(),
               "image_embeds": image, "text_embeds": text}
        if return_loss:
            if image.shape[0] != text.shape[0]:
                raise ValueError(f"the contrastive loss needs matched pairs: {image.shape[0]} images, "
                                 f"{text.shape[0]} texts")
            out["loss"] = clip_loss(logits_per_image)
        return out

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep exp(logit_scale) <= 100, as CLIP does after each optimizer step."""
        self.logit_scale.clamp_(0.0, self.config.max_logit_scale)

    @torch.no_grad()
    def zero_shot_classify(
        self, pixel_values: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None = None,
        prompts_per_class: int = 1,
    ) -> torch.Tensor:
        """Class probabilities [B, n_classes]: softmax over the images' similarity to each class's prompt
        (prompt_ids [n_classes * prompts_per_class, T], class-major: e.g. the tokens of "a photo of the
        digit {c}"). With several prompts per class their normalised embeddings are averaged and
        renormalised (CLIP's prompt ensembling)."""
        n = prompt_ids.shape[0]
        if n % prompts_per_class:
            raise ValueError(f"{n} prompts do not split into groups of prompts_per_class={prompts_per_class}")
        classes = self.encode_text(prompt_ids, prompt_mask)
        classes = F.normalize(classes.view(n // prompts_per_class, prompts_per_class, -1).mean(1), dim=-1)
        images = self.encode_image(pixel_values)
        return (self.logit_scale.exp() * images @ classes.t()).softmax(dim=-1)
