"""/v1/embeddings for a CLIP model: texts and images embedded into one space.

Texts go through the text tower (``<s> words </s>``, as `lmkit clip train` tokenizes captions),
images through the vision tower; both come out of CLIP's projections L2-normalised, so the dot
product of a text vector and an image vector is their cosine, the score CLIP ranks by.

An image input is a data URL, ``data:image/png;base64,...`` (the form OpenAI's `image_url`
content parts use), given as the input string itself or as ``{"image": URL}``; ``{"text": ...}``
is a text. Remote http(s) URLs are refused: the server fetches nothing.
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any, Sequence

import torch

from lmkit.errors import ConfigError

DATA_URL_PREFIX = "data:"


def is_data_url(text: str) -> bool:
    return isinstance(text, str) and text.startswith(DATA_URL_PREFIX)


def data_url_bytes(url: str) -> bytes:
    """The decoded payload of ``data:<mime>;base64,<data>`` (an image file's bytes)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith(DATA_URL_PREFIX) or not header.endswith(";base64"):
        raise ConfigError("an image must be a base64 data URL: data:image/png;base64,...")
    if not header[len(DATA_URL_PREFIX):].startswith("image/"):
        raise ConfigError(f"a data URL of type {header[len(DATA_URL_PREFIX):-len(';base64')]!r} is not an image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("the image data URL holds invalid base64") from None


class CLIPEmbedder:
    """embed_inputs(items) -> ([N, projection_dim] normalised vectors, token count); an item is a
    text, an image data URL, {"image": URL} or {"text": TEXT}. `embed(token lists)` and
    `encode_texts` serve the text-only path of /v1/embeddings (token-id inputs)."""

    accepts_images = True

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        text = model.config.text
        self.max_len = text.max_seq_len
        self.vocab_rows = text.vocab_size
        self.bos, self.eos, self.pad = text.bos_token_id, text.eos_token_id, text.pad_token_id or 0
        self.image_size = model.config.vision.image_size
        self.channels = model.config.vision.num_channels
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """``<s> words </s>``, cut to the text tower's context (the end token kept)."""
        out = []
        for t in texts:
            start = [self.bos] if self.bos is not None else []
            ids = [*start, *self.tokenizer.encode(t)][: self.max_len - 1] + [self.eos]
            out.append([int(i) for i in ids])
        return out

    @torch.inference_mode()
    def embed(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Text embeddings of token-id lists."""
        if not batch:
            raise ConfigError("input is empty: give at least one text or image")
        for i, ids in enumerate(batch):
            if not ids:
                raise ConfigError(f"input[{i}] is empty")
            if len(ids) > self.max_len:
                raise ConfigError(f"input[{i}] has {len(ids)} tokens, more than the text tower's context "
                                  f"({self.max_len})")
            bad = next((t for t in ids if not 0 <= t < self.vocab_rows), None)
            if bad is not None:
                raise ConfigError(f"input[{i}] holds token id {bad}, outside the vocabulary [0, {self.vocab_rows})")
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(list(x))
            mask[i, : len(x)] = 1
        device = next(self.model.parameters()).device
        with self._lock:
            return self.model.encode_text(ids.to(device), mask.to(device)).float().cpu()

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings of pixels [N, C, H, W] in [-1, 1]."""
        param = next(self.model.parameters())
        with self._lock:
            return self.model.encode_image(pixels.to(param.device, param.dtype)).float().cpu()

    def image_pixels(self, url: str) -> torch.Tensor:
        from lmkit.vision.image_input import image_pixels

        return image_pixels(data_url_bytes(url), self.image_size, self.channels)

    def embed_inputs(self, items: Sequence[Any]) -> tuple[torch.Tensor, int]:
        """Vectors in input order for mixed texts and images, and the number of text tokens."""
        texts: list[tuple[int, str]] = []
        images: list[tuple[int, torch.Tensor]] = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                if set(item) == {"image"} and isinstance(item["image"], str):
                    images.append((i, self._pixels_of(i, item["image"])))
                elif set(item) == {"text"} and isinstance(item["text"], str):
                    texts.append((i, item["text"]))
                else:
                    raise ConfigError(f'input[{i}]: an object must be {{"image": DATA_URL}} or {{"text": TEXT}}')
            elif isinstance(item, str):
                if is_data_url(item):
                    images.append((i, self._pixels_of(i, item)))
                else:
                    texts.append((i, item))
            else:
                raise ConfigError(f"input[{i}]: give a text, an image data URL or an object, not {type(item).__name__}")
        out = torch.empty(len(items), self.dim)
        n_tokens = 0
        if texts:
            ids = self.encode_texts([t for _, t in texts])
            n_tokens = sum(len(x) for x in ids)
            out[[i for i, _ in texts]] = self.embed(ids)
        if images:
            out[[i for i, _ in images]] = self.embed_pixels(torch.stack([p for _, p in images]))
        return out, n_tokens

    def _pixels_of(self, index: int, url: str) -> torch.Tensor:
        if url.startswith(("http://", "https://")):
            raise ConfigError(f"input[{index}]: remote image URLs are not fetched; send a data:image/...;base64 URL")
        try:
            return self.image_pixels(url)
        except ConfigError as exc:
            raise ConfigError(f"input[{index}]: {exc}") from None
