"""The shapes scenes: seeded, unambiguous, and drawn where the caption says."""

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.vision.shapes import COLOURS, caption_words, make_scenes, render_scene, scene_pixels


def test_scenes_are_seeded_and_unambiguous():
    a, b = make_scenes(50, seed=3), make_scenes(50, seed=3)
    assert a == b and a != make_scenes(50, seed=4)
    for scene in a:
        shapes = [o.shape for o in scene.objects]
        colours = [o.colour for o in scene.objects]
        assert len(set(shapes)) == len(shapes) and len(set(colours)) == len(colours)
        for question, answer in scene.questions():
            assert answer in caption_words() and all(w in caption_words() for w in question.split())
        assert all(w in caption_words() for w in scene.caption().split())


def test_rendered_colour_sits_at_each_centre_and_relation_holds():
    for scene in make_scenes(30, seed=1):
        image = render_scene(scene, image_size=32)
        for obj in scene.objects:
            pixel = image.getpixel((int(obj.cx * 32), int(obj.cy * 32 + (obj.size * 32 * 0.4 if obj.shape == "triangle" else 0))))
            assert max(abs(p - q) for p, q in zip(pixel, COLOURS[obj.colour])) < 40, (scene, pixel)
        if scene.relation:
            first, second = scene.objects
            axis = {"left of": first.cx < second.cx, "right of": first.cx > second.cx,
                    "above": first.cy < second.cy, "below": first.cy > second.cy}
            assert axis[scene.relation]


def test_pixels_shape_and_range():
    x = scene_pixels(make_scenes(4), image_size=16)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    with pytest.raises(ConfigError):
        make_scenes(-1)
