"""Build the right model class for a `ModelConfig`'s architecture."""

from __future__ import annotations

from torch import nn

from lmkit.models.config import ModelConfig


def build_model(config: ModelConfig) -> nn.Module:
    if config.arch == "decoder":
        from lmkit.models.decoder import DecoderLM

        return DecoderLM(config)
    if config.arch == "encoder":
        from lmkit.models.encoder import EncoderLM

        return EncoderLM(config)
    if config.arch == "encoder_decoder":
        from lmkit.models.encoder_decoder import EncoderDecoderLM

        return EncoderDecoderLM(config)
    from lmkit.models.lstm import LSTMLM

    return LSTMLM(config)
