"""BLIP (Li et al. 2022): one image encoder and three text parts, trained with ITC, ITM and LM.

  image encoder                ViT (vision/vit.py, pre-LN) -> final norm -> image tokens [B, 1 + P, dv]
  text encoder                 BLIPText, bidirectional, no image: [CLS] state -> text_proj  } ITC: cosine
                               image tokens[:, 0] -> vision_proj                              } x learned scale
  image-grounded text encoder  the same BLIPText with cross-attention to the image tokens:
                               [CLS] state -> itm_head -> (no match, match) logits             ITM
  image-grounded text decoder  a second BLIPText, causal, cross-attention, LM head              LM (captions)

ITC is CLIP's symmetric InfoNCE on the unimodal embeddings (`clip_loss`). ITM is a binary
classifier on the fused [CLS] state, trained on every matched pair plus one *hard* negative per
image and per text, drawn in proportion to the ITC similarity (the wrong captions the
contrastive model finds most similar teach the matcher the most). LM is next-token
cross-entropy of the caption given the image (with label smoothing). The ITC/ITM losses live in
vision/blip_losses.py; training in vision/blip_train.py.

As in Hugging Face (and unlike the paper, which shares the encoder's and decoder's FFN and
cross-attention), the encoder and the decoder own their parameters: a `BlipForImageTextRetrieval`
checkpoint holds vision + text encoder + projections + itm_head, a `BlipForConditionalGeneration`
one holds vision + decoder. `BLIPConfig.parts` says which of the two a model holds
("retrieval", "captioning" or both); vision/blip_hub.py loads and saves each.

Parameter names: vision.* (vision/vit.py), text_encoder.* / text_decoder.* (vision/blip_text.py),
vision_proj, text_proj, itm_head (Linear with bias), logit_scale (log of 1/temperature).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import dataclass_from_dict
from lmkit.vision.blip_text import BLIPText, BLIPTextConfig
from lmkit.vision.vit import ViT, ViTConfig

PARTS = ("retrieval", "captioning")


def blip_vision_config(**kw: Any) -> ViTConfig:
    """A ViTConfig with BLIP's layout: no norm before the blocks, biased patch conv, class token, GELU."""
    base = dict(pre_norm=False, patch_bias=True, pooling="cls", activation="gelu", norm_eps=1e-5)
    return ViTConfig(**{**base, **kw})


@dataclass
class BLIPConfig:
    vision: ViTConfig = field(default_factory=blip_vision_config)
    text: BLIPTextConfig = field(default_factory=BLIPTextConfig)
    embed_dim: int = 256  # ITC embedding size (HF: image_text_hidden_size)
    logit_scale_init: float = math.log(1 / 0.07)  # BLIP's initial ITC temperature 0.07
    max_logit_scale: float = math.log(100.0)  # BLIP clamps the temperature at >= 0.01 (scale <= 100)
    parts: list[str] = field(default_factory=lambda: list(PARTS))

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = ViTConfig.from_dict(self.vision)
        if isinstance(self.text, dict):
            self.text = BLIPTextConfig.from_dict(self.text)
        if not isinstance(self.embed_dim, int) or self.embed_dim <= 0:
            raise ConfigError(f"BLIPConfig.embed_dim={self.embed_dim!r}: must be a positive integer")
        if self.text.encoder_width != self.vision.d_model:
            raise ConfigError(f"BLIPConfig: text.encoder_width={self.text.encoder_width} must equal the ViT's "
                              f"d_model={self.vision.d_model} (the cross-attention reads the image tokens)")
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise ConfigError(f"BLIPConfig.parts={self.parts!r}: choose one or both of {PARTS}")
        self.parts = [p for p in PARTS if p in self.parts]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BLIPConfig":
        return dataclass_from_dict(cls, d)


class BLIP(nn.Module):
    def __init__(self, config: BLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = ViT(config.vision)
        dv, dt = config.vision.d_model, config.text.d_model
        if "retrieval" in config.parts:
            self.text_encoder = BLIPText(config.text)
            self.vision_proj = nn.Linear(dv, config.embed_dim)
            self.text_proj = nn.Linear(dt, config.embed_dim)
            self.itm_head = nn.Linear(dt, 2)
            self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
            for m in (self.vision_proj, self.text_proj, self.itm_head):
                nn.init.normal_(m.weight, 0.0, config.text.initializer_range)
                nn.init.zeros_(m.bias)
        if "captioning" in config.parts:
            self.text_decoder = BLIPText(config.text, lm_head=True)

    def _needs(self, part: str) -> None:
        if part not in self.config.parts:
            arch = "BlipForImageTextRetrieval" if part == "retrieval" else "BlipForConditionalGeneration"
            raise ValueError(f"this BLIP holds only {self.config.parts}; the {part} part is missing "
                             f"(load a {arch} checkpoint or build it with parts including {part!r})")

    # ---- image encoder -------------------------------------------------------------------
    def image_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixels [B, C, H, W] -> image tokens [B, 1 + n_patches, dv] (after the ViT's final norm)."""
        h, _ = self.vision.encode(pixel_values)
        return self.vision.norm(h)

    # ---- ITC: unimodal encoders ----------------------------------------------------------
    def image_embedding(self, image_states: torch.Tensor) -> torch.Tensor:
        """Image tokens -> unit ITC embedding [B, embed_dim] (vision_proj of the class token)."""
        self._needs("retrieval")
        return F.normalize(self.vision_proj(image_states[:, 0]), dim=-1)

    def text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids -> unit ITC embedding [B, embed_dim] (text_proj of the text encoder's [CLS] state, no image)."""
        self._needs("retrieval")
        h = self.text_encoder.encode(input_ids, attention_mask)
        return F.normalize(self.text_proj(h[:, 0]), dim=-1)

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """ITC logits [Ni, Nt]: cosine times exp(logit_scale)."""
        return self.logit_scale.exp() * image_emb @ text_emb.t()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, self.config.max_logit_scale)

    # ---- ITM: image-grounded text encoder ------------------------------------------------
    def itm_logits(
        self, image_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Paired rows (image i, text i) -> [B, 2] logits (column 1: the text matches the image)."""
        self._needs("retrieval")
        h = self.text_encoder.encode(input_ids, attention_mask, image_states=image_states)
        return self.itm_head(h[:, 0])

    def retrieval_scores(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        use_itm_head: bool = True,
    ) -> torch.Tensor:
        """As `BlipForImageTextRetrieval.forward`: ITM logits [B, 2] of paired rows, or (use_itm_head=False)
        the cosine matrix [Ni, Nt] of the ITC embeddings (no temperature)."""
        states = self.image_states(pixel_values)
        if use_itm_head:
            return self.itm_logits(states, input_ids, attention_mask)
        return self.image_embedding(states) @ self.text_embedding(input_ids, attention_mask).t()

    # ---- LM: image-grounded text decoder -------------------------------------------------
    def caption_logits(
        self, image_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Caption ids (starting with bos, the [DEC] token) -> next-token scores [B, T, vocab]."""
        self._needs("captioning")
        h = self.text_decoder.encode(input_ids, attention_mask, image_states=image_states, causal=True)
        return self.text_decoder.logits(h)

    def caption_loss(
        self, image_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over the real caption tokens (label smoothing from the config)."""
        logits = self.caption_logits(image_states, input_ids, attention_mask)
        labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                               ignore_index=-100, label_smoothing=self.config.text.label_smoothing)

    @torch.no_grad()
    def generate_captions(self, pixel_values: torch.Tensor, max_new_tokens: int = 20) -> torch.Tensor:
        """Greedy captions [B, <= 1 + max_new_tokens] (bos first; rows that ended are padded after sep).
        Each step reruns the decoder over the whole prefix (no KV cache): captions here are a few tokens."""
        cfg = self.config.text
        states = self.image_states(pixel_values)
        b = states.shape[0]
        ids = torch.full((b, 1), cfg.bos_token_id, dtype=torch.long, device=states.device)
        done = torch.zeros(b, dtype=torch.bool, device=states.device)
        for _ in range(min(max_new_tokens, cfg.max_seq_len - 1)):
            nxt = self.caption_logits(states, ids)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, cfg.pad_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == cfg.sep_token_id
            if bool(done.all()):
                break
        return ids
