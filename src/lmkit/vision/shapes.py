"""Synthetic shapes scenes: coloured circles, squares and triangles rendered with Pillow.

They need no download and give compositional captions ("a red circle left of a blue square")
and questions with one right answer ("what colour is the circle?"), the data the issue asks of
CLIP retrieval, BLIP captioning and the vision-language model. A scene holds one or two shapes;
with two, the shapes and the colours differ, so every question about one of them is unambiguous.
Scenes come from a seeded generator: `make_scenes(n, seed)` is the same list on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from lmkit.errors import ConfigError, require

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
BACKGROUND = (20, 20, 20)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    cx: float  # centre in [0, 1] image coordinates
    cy: float
    size: float  # half-width as a share of the image side

    def describe(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    relation: str | None = None  # where objects[0] lies relative to objects[1]

    def caption(self) -> str:
        """The canonical caption: "a red circle" or "a red circle left of a blue square"."""
        first = f"a {self.objects[0].describe()}"
        if len(self.objects) == 1:
            return first
        return f"{first} {self.relation} a {self.objects[1].describe()}"

    def questions(self) -> list[tuple[str, str]]:
        """(question, one-word answer) pairs, each with exactly one right answer in this scene."""
        qa = [("how many shapes are there?", ("one", "two")[len(self.objects) - 1])]
        for obj in self.objects:
            qa.append((f"what colour is the {obj.shape}?", obj.colour))
            qa.append((f"what shape is {obj.colour}?", obj.shape))
        return qa


def _random_object(rng: random.Random, shape: str, colour: str, box: tuple[float, float, float, float]) -> SceneObject:
    x0, y0, x1, y1 = box
    size = rng.uniform(0.12, 0.18)
    cx = rng.uniform(x0 + size, x1 - size)
    cy = rng.uniform(y0 + size, y1 - size)
    return SceneObject(shape, colour, cx, cy, size)


def random_scene(rng: random.Random, two_shape_share: float = 0.7) -> Scene:
    """One scene; with two shapes, they sit in opposite halves so the relation is clear."""
    shapes = rng.sample(SHAPES, 2)
    colours = rng.sample(list(COLOURS), 2)
    if rng.random() >= two_shape_share:
        return Scene((_random_object(rng, shapes[0], colours[0], (0.0, 0.0, 1.0, 1.0)),))
    relation = rng.choice(RELATIONS)
    halves = {  # (box of objects[0], box of objects[1])
        "left of": ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)),
        "right of": ((0.5, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 1.0)),
        "above": ((0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)),
        "below": ((0.0, 0.5, 1.0, 1.0), (0.0, 0.0, 1.0, 0.5)),
    }[relation]
    objects = tuple(_random_object(rng, s, c, box) for s, c, box in zip(shapes, colours, halves))
    return Scene(objects, relation)


def make_scenes(n: int, seed: int = 0, two_shape_share: float = 0.7) -> list[Scene]:
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [random_scene(rng, two_shape_share) for _ in range(n)]


def render_scene(scene: Scene, image_size: int = 32, supersample: int = 4):
    """The scene as a Pillow RGB image (drawn large, then downsampled for smooth edges)."""
    Image = require("PIL.Image", "test")
    ImageDraw = require("PIL.ImageDraw", "test")
    if image_size < 8:
        raise ConfigError(f"image_size must be >= 8, got {image_size}")
    side = image_size * supersample
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy, r = obj.cx * side, obj.cy * side, obj.size * side
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:
            raise ConfigError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


def scene_pixels(scenes: list[Scene], image_size: int = 32) -> torch.Tensor:
    """Scenes -> float tensor [N, 3, image_size, image_size] in [-1, 1]."""
    if not scenes:
        return torch.empty(0, 3, image_size, image_size)
    arrays = np.stack([np.asarray(render_scene(s, image_size), dtype=np.float32) for s in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def caption_words() -> list[str]:
    """Every word a caption or question/answer can use: the vocabulary of a word-level tokenizer."""
    words = {"a", "how", "many", "shapes", "are", "there?", "one", "two", "what", "colour", "shape", "is",
             "the"}
    words.update(COLOURS)
    words.update(SHAPES)
    words.update(f"{c}?" for c in COLOURS)
    words.update(f"{s}?" for s in SHAPES)
    for relation in RELATIONS:
        words.update(relation.split())
    return sorted(words)
