"""CLIP on the synthetic shapes scenes (vision/shapes.py): tokenizer, model size, captions.

Captions are the scenes' canonical captions ("a red circle left of a blue square"), encoded by
a word-level tokenizer over `caption_words()` as ``<s> words </s>`` (the digits' conventions,
clip_digits.py). A two-shape scene has a second, equivalent description with the shapes
swapped and the relation inverted ("a blue square right of a red circle"): retrieval counts
either as right (`caption_variants`).
"""

from __future__ import annotations

import torch

from lmkit.tokenizers.simple import WhitespaceTokenizer
from lmkit.vision.clip import CLIP, CLIPConfig
from lmkit.vision.clip_digits import SPECIALS, word_clip_config
from lmkit.vision.shapes import Scene, caption_words

MAX_LEN = 12  # the longest caption has 8 words
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def shapes_tokenizer() -> WhitespaceTokenizer:
    """Specials (<pad>, </s>, <s>, <unk>) then every caption word."""
    return WhitespaceTokenizer.train([" ".join(caption_words())], special_tokens=SPECIALS, unk_token="<unk>")


def caption_variants(scene: Scene) -> set[str]:
    """Every caption that describes `scene` exactly: the canonical one and, with two shapes,
    the swapped one with the inverse relation."""
    variants = {scene.caption()}
    if len(scene.objects) == 2:
        first, second = scene.objects
        variants.add(f"a {second.describe()} {INVERSE[scene.relation]} a {first.describe()}")
    return variants


def shapes_clip_config(tok: WhitespaceTokenizer, image_size: int = 32, patch_size: int = 4, d_model: int = 64,
                       n_layers: int = 2) -> CLIPConfig:
    """A small CLIP for RGB scenes (patch 4: 64 patches at 32x32)."""
    return word_clip_config(tok, max_len=MAX_LEN, image_size=image_size, patch_size=patch_size, num_channels=3,
                            d_model=d_model, n_layers=n_layers)


def new_shapes_clip(tok: WhitespaceTokenizer, seed: int = 0, **kw) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(shapes_clip_config(tok, **kw))
