"""A LLaVA-style vision-language model (Liu et al. 2023): a vision tower, an MLP projector, a decoder LM.

image -> ViT (CLIP layout) -> hidden states of layer `vision_feature_layer` (-2: the one before
the last, as LLaVA) -> drop the class token ("default" strategy; "full" keeps it) ->
projector: linear_1 -> GELU -> linear_2 (vision width -> text width) -> one embedding per patch

text ids, where each image is written as n_image_tokens copies of the `<image>` token id ->
the decoder's token embeddings, with the image embeddings written over the `<image>` positions
(in order: image 0's patches, then image 1's ...; LLaVA's masked_scatter) -> the decoder as usual.

The decoder is lmkit's own `DecoderLM`, unchanged: the image embeddings go in through a forward
hook on its `embed_tokens` (`images_in`), as adversarial training perturbs embeddings, so the
same decoder, KV cache and `lmkit.infer.generate` loop serve text and images. The hook acts only
in the thread that installed it, so a server's engine thread decoding text with the same
decoder is never touched.

Parameter names: vision.* (vision/vit.py), projector.linear_{1,2}.{weight,bias},
language.* (models/decoder.py). vision/vlm_hub.py maps them to transformers'
`LlavaForConditionalGeneration`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.block import run_layers
from lmkit.models.config import ModelConfig, dataclass_from_dict
from lmkit.models.decoder import DecoderLM
from lmkit.models.output import ModelOutput
from lmkit.vision.vit import ViT, ViTConfig

FEATURE_SELECT = ("default", "full")  # "default": drop the class token (LLaVA); "full": keep it
PROJECTOR_ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
                         "relu": lambda: nn.ReLU(), "silu": lambda: nn.SiLU()}


@dataclass
class VLMConfig:
    vision: ViTConfig
    text: ModelConfig
    image_token_id: int
    vision_feature_layer: int = -2  # index into (embeddings, layer 1, ..., layer N), as hidden_states
    feature_select: str = "default"
    projector_activation: str = "gelu"
    projector_bias: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = ViTConfig.from_dict(self.vision)
        if isinstance(self.text, dict):
            self.text = ModelConfig.from_dict(self.text)
        if self.text.arch != "decoder":
            raise ConfigError(f"VLMConfig.text.arch={self.text.arch!r}: the language model must be a decoder")
        if not 0 <= self.image_token_id < self.text.vocab_size:
            raise ConfigError(f"VLMConfig.image_token_id={self.image_token_id}: must be a token id of the "
                              f"language model (0..{self.text.vocab_size - 1})")
        n = self.vision.n_layers
        if not -(n + 1) <= self.vision_feature_layer <= n:
            raise ConfigError(f"VLMConfig.vision_feature_layer={self.vision_feature_layer}: the vision tower has "
                              f"{n} layers, so it must lie in {-(n + 1)}..{n}")
        if self.feature_select not in FEATURE_SELECT:
            raise ConfigError(f"VLMConfig.feature_select={self.feature_select!r}: must be one of {FEATURE_SELECT}")
        if self.projector_activation not in PROJECTOR_ACTIVATIONS:
            raise ConfigError(f"VLMConfig.projector_activation={self.projector_activation!r}: must be one of "
                              f"{sorted(PROJECTOR_ACTIVATIONS)}")

    @property
    def n_image_tokens(self) -> int:
        """How many `<image>` tokens stand for one image in the text."""
        return self.vision.n_patches + (self.feature_select == "full")

    @property
    def vision_layers_run(self) -> int:
        """Vision blocks run to reach `vision_feature_layer` (the later ones are never needed)."""
        k = self.vision_feature_layer
        return k if k >= 0 else self.vision.n_layers + 1 + k

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLMConfig":
        return dataclass_from_dict(cls, d)


class MultiModalProjector(nn.Module):
    """Vision features -> the decoder's embedding space: linear_1 -> activation -> linear_2 (LLaVA-1.5)."""

    def __init__(self, d_vision: int, d_text: int, activation: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_vision, d_text, bias=bias)
        self.act = PROJECTOR_ACTIVATIONS[activation]()
        self.linear_2 = nn.Linear(d_text, d_text, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


@contextlib.contextmanager
def images_in(language: nn.Module, image_embeds: torch.Tensor | None, image_token_id: int) -> Iterator[None]:
    """Inside: the decoder's token embeddings at `<image>` positions are replaced by `image_embeds`
    ([n_images, n_image_tokens, d] or [n, d], written in order), in this thread only.

    The first forward whose ids hold `<image>` tokens takes the embeddings (the prefill of a
    generation, or a training forward); later ones (decode steps) are left alone, so an `<image>`
    id the model itself generates is embedded as a plain token. Holding a different number of
    `<image>` tokens than there are image embeddings is an error (a prompt built with the wrong count)."""
    if image_embeds is None:
        yield
        return
    flat = image_embeds.reshape(-1, image_embeds.shape[-1])
    owner = threading.get_ident()
    used = []

    def hook(_module, args, out):
        if used or threading.get_ident() != owner:
            return out
        where = args[0] == image_token_id
        n = int(where.sum())
        if n == 0:
            return out
        if n != flat.shape[0]:
            raise ValueError(f"the text holds {n} <image> tokens but the images give {flat.shape[0]} embeddings")
        used.append(True)
        return out.masked_scatter(where.unsqueeze(-1), flat.to(out.dtype))

    handle = language.embed_tokens.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class VisionLanguageModel(nn.Module):
    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = ViT(config.vision)
        self.projector = MultiModalProjector(config.vision.d_model, config.text.d_model,
                                             config.projector_activation, config.projector_bias)
        self.language = DecoderLM(config.text)

    def vision_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixels [B, C, H, W] -> the selected vision hidden states [B, n_image_tokens, d_vision]
        (before the projector: what a frozen tower gives, so training can compute it once)."""
        vit = self.vision
        x = vit.dropout(vit.pre_norm(vit.embed(pixel_values)))
        x, _ = run_layers(vit.layers[: self.config.vision_layers_run], x)
        return x[:, 1:] if self.config.feature_select == "default" else x

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixels [B, C, H, W] -> projected image embeddings [B, n_image_tokens, d_text]."""
        return self.projector(self.vision_states(pixel_values))

    def forward(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None, **kwargs: Any,
    ) -> ModelOutput:
        """ids [B, T] with n_image_tokens `<image>` ids per image, pixels [n_images, C, H, W] (or their
        precomputed `image_embeds`) -> the decoder's ModelOutput (loss when labels are given)."""
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.image_features(pixel_values)
        with images_in(self.language, image_embeds, self.config.image_token_id):
            return self.language(input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], pixel_values: torch.Tensor | None = None, config=None, *,
                 tokenizer=None, **overrides: Any):
        """`lmkit.infer.generate` on the decoder (prompts: token id lists, one row each, with n_image_tokens
        `<image>` ids per image; pixel_values [n_images, C, H, W] in the order of those runs), the images
        written into the prompts' `<image>` positions. Steps run eagerly (fused=False): the fused step
        reads the embedding table directly, past the hook."""
        from lmkit.infer import generate

        embeds = self.image_features(pixel_values) if pixel_values is not None else None
        with images_in(self.language, embeds, self.config.image_token_id):
            return generate(self.language, [list(p) for p in prompts], config, tokenizer=tokenizer,
                            **{**overrides, "fused": False})
