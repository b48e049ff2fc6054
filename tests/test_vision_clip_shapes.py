"""CLIP retrieval on the shapes scenes: the recall metric, equivalent captions, the tokenizer."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.vision.clip_digits import tokenize
from lmkit.vision.clip_retrieval import image_to_text_recall, recall_at_k
from lmkit.vision.clip_shapes import MAX_LEN, caption_variants, new_shapes_clip, shapes_tokenizer
from lmkit.vision.shapes import Scene, SceneObject, make_scenes, scene_pixels


def test_recall_at_k_counts_any_relevant_item_in_the_top_k():
    sim = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.7], [0.3, 0.2, 0.1]])
    rel = torch.tensor([[True, False, False], [False, False, True], [False, True, True]])
    # query 0: best is relevant; query 1: relevant item ranked 2nd; query 2: relevant items ranked 2nd and 3rd
    assert recall_at_k(sim, rel, ks=(1, 2, 3)) == {1: pytest.approx(1 / 3), 2: 1.0, 3: 1.0}
    with pytest.raises(ConfigError, match="at least one relevant"):
        recall_at_k(sim, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="shape"):
        recall_at_k(sim, rel[:2])


def test_caption_variants_and_tokenizer_cover_every_caption():
    red, blue = SceneObject("circle", "red", 0.2, 0.5, 0.15), SceneObject("square", "blue", 0.8, 0.5, 0.15)
    assert caption_variants(Scene((red, blue), "left of")) == {"a red circle left of a blue square",
                                                               "a blue square right of a red circle"}
    assert caption_variants(Scene((red,))) == {"a red circle"}
    tok = shapes_tokenizer()
    scenes = make_scenes(200, seed=0)
    texts = [t for s in scenes for t in caption_variants(s)]
    ids, mask = tokenize(tok, texts, MAX_LEN)
    assert tok.token_to_id("<unk>") not in ids.tolist()[0] and not (ids == tok.token_to_id("<unk>")).any()
    assert bool((mask.sum(1) < MAX_LEN).all())  # every caption fits, with its end token


def test_shapes_clip_ranks_texts_per_image():
    tok = shapes_tokenizer()
    model = new_shapes_clip(tok, image_size=16, patch_size=4, d_model=32, n_layers=1)
    scenes = make_scenes(6, seed=1)
    texts = sorted({s.caption() for s in scenes})
    ids, mask = tokenize(tok, texts, MAX_LEN)
    rel = torch.tensor([[t in caption_variants(s) for t in texts] for s in scenes])
    recall = image_to_text_recall(model, scene_pixels(scenes, 16), ids, mask, rel, ks=(1, len(texts)))
    assert 0.0 <= recall[1] <= 1.0 and recall[len(texts)] == 1.0
