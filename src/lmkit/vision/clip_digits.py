"""CLIP on scikit-learn's handwritten digits: images, captions, tokenizer, training, zero-shot.

`load_digits` ships inside scikit-learn (1,797 8x8 grey images, values 0..16), so nothing is
downloaded. Images are upsampled (bilinear) to `image_size` and scaled to [-1, 1]; a caption
is drawn from a few templates ("a photo of the digit 3", "a handwritten 3", "the number
three"...); captions use a word-level tokenizer learned from all templates, with
``<s> words </s>`` and padding. Zero-shot classification embeds one prompt per digit
("a photo of the digit {d}") and is measured on digits held out from training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmkit.errors import MissingDependencyError
from lmkit.tokenizers.simple import WhitespaceTokenizer
from lmkit.vision.clip import CLIP, CLIPConfig, clip_vision_config
from lmkit.vision.clip_text import CLIPTextConfig

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a photo of the digit {d}", "a handwritten {d}", "the number {w}", "a picture of a {w}",
             "an image of the digit {w}")
PROMPT = "a photo of the digit {d}"
SPECIALS = ("<pad>", "</s>", "<s>")  # </s> is id 1: HF's argmax-of-ids rule applies only when eos is id 2
MAX_LEN = 10


def caption(label: int, template: str) -> str:
    return template.format(d=label, w=WORDS[label])


def caption_tokenizer() -> WhitespaceTokenizer:
    """The word-level vocabulary of every caption the templates can produce."""
    texts = [caption(d, t) for d in range(10) for t in TEMPLATES]
    return WhitespaceTokenizer.train(texts, special_tokens=SPECIALS, unk_token="<unk>")


def tokenize(tok: WhitespaceTokenizer, texts: list[str], max_len: int = MAX_LEN, start: str = "<s>",
             end: str = "</s>") -> tuple[torch.Tensor, torch.Tensor]:
    """texts -> (ids [N, max_len] as ``<s> words </s> <pad>...``, attention mask [N, max_len]);
    `start`/`end` name other framing tokens (BLIP's ``<cls> ... <sep>``)."""
    bos, eos, pad = (tok.token_to_id(s) for s in (start, end, "<pad>"))
    ids = torch.full((len(texts), max_len), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(texts):
        row = [bos, *tok.encode(text)][: max_len - 1] + [eos]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def to_pixels(images: np.ndarray | torch.Tensor, image_size: int, max_value: float) -> torch.Tensor:
    """Grey images [N, h, w] with values in [0, max_value] -> [N, 1, image_size, image_size] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None] / max_value
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1) * 2 - 1


@dataclass
class DigitsSplit:
    train_pixels: torch.Tensor
    train_labels: torch.Tensor
    test_pixels: torch.Tensor
    test_labels: torch.Tensor


def load_digit_split(image_size: int = 16, test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """scikit-learn's digits, shuffled and split into training and held-out images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError("the digits data set needs scikit-learn: pip install scikit-learn") from exc
    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    pixels = to_pixels(data.images[order], image_size, 16.0)
    labels = torch.as_tensor(data.target[order], dtype=torch.long)
    n_test = int(math.ceil(len(labels) * test_fraction))
    return DigitsSplit(pixels[n_test:], labels[n_test:], pixels[:n_test], labels[:n_test])


def digit_captions(labels: torch.Tensor, seed: int = 0) -> list[str]:
    """One caption per label, each from a template drawn at random."""
    rng = np.random.default_rng(seed)
    return [caption(int(d), TEMPLATES[rng.integers(len(TEMPLATES))]) for d in labels]


def digit_prompts(tok: WhitespaceTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-shot prompts, row d for digit d."""
    return tokenize(tok, [caption(d, PROMPT) for d in range(10)])


def digit_prompt_ensemble(tok: WhitespaceTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Every caption template for every digit, class-major (rows d*K .. d*K+K-1 for digit d)."""
    return tokenize(tok, [caption(d, t) for d in range(10) for t in TEMPLATES])


def word_clip_config(tok: WhitespaceTokenizer, *, max_len: int, image_size: int, patch_size: int, num_channels: int,
                     d_model: int, n_layers: int) -> CLIPConfig:
    """A small CLIP whose text tower reads `tok`'s ``<s> words </s>`` captions (one head per 16 dims)."""
    heads = max(1, d_model // 16)
    return CLIPConfig(
        vision=clip_vision_config(image_size=image_size, patch_size=patch_size, num_channels=num_channels,
                                  d_model=d_model, n_layers=n_layers, n_heads=heads, d_ff=4 * d_model),
        text=CLIPTextConfig(vocab_size=tok.vocab_size, max_seq_len=max_len, d_model=d_model, n_layers=n_layers,
                            n_heads=heads, d_ff=4 * d_model, eos_token_id=tok.token_to_id("</s>"),
                            pad_token_id=tok.token_to_id("<pad>"), bos_token_id=tok.token_to_id("<s>")),
        projection_dim=d_model,
    )


def digits_clip_config(tok: WhitespaceTokenizer, image_size: int = 16, d_model: int = 64,
                       n_layers: int = 2) -> CLIPConfig:
    """A small CLIP for grey digits (patch 4: 16 patches at 16x16)."""
    return word_clip_config(tok, max_len=MAX_LEN, image_size=image_size, patch_size=4, num_channels=1,
                            d_model=d_model, n_layers=n_layers)


def new_digits_clip(tok: WhitespaceTokenizer, seed: int = 0, **kw) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(digits_clip_config(tok, **kw))
