"""CLIP image->text retrieval on the synthetic shapes scenes (issue 22: "R@1 on the shapes scenes reported").

Trains the small CLIP (vision/clip.py, loop of clip_train.py) on rendered scenes (32x32 RGB,
vision/shapes.py, seed 0) paired with their captions ("a red circle left of a blue square"; a
two-shape scene is also paired with its equivalent swapped caption, "a blue square right of a
red circle"), then, for held-out scenes (another seed), ranks the distinct captions of the
held-out scenes for each image and reports image->text R@1 and R@5 (a caption is right when it
describes the scene exactly: `clip_shapes.caption_variants`), beside chance and the same
figures for attribute-only matching. One thread, as on the 2-core CI machine.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 bench/bench_clip_shapes.py [--steps 1200] [--train-scenes 5000]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from lmkit.vision.clip_digits import tokenize
from lmkit.vision.clip_retrieval import image_to_text_recall
from lmkit.vision.clip_shapes import MAX_LEN, caption_variants, new_shapes_clip, shapes_tokenizer
from lmkit.vision.clip_train import train_clip
from lmkit.vision.shapes import make_scenes, scene_pixels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-scenes", type=int, default=5000)
    ap.add_argument("--test-scenes", type=int, default=500)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/data/clip_shapes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = shapes_tokenizer()

    train_scenes = make_scenes(args.train_scenes, seed=args.seed)
    pixels = scene_pixels(train_scenes, args.image_size)
    rows, captions = [], []
    for i, scene in enumerate(train_scenes):  # every exact description of a scene is a training pair
        for text in sorted(caption_variants(scene)):
            rows.append(i)
            captions.append(text)
    ids, mask = tokenize(tok, captions, MAX_LEN)
    model = new_shapes_clip(tok, seed=args.seed, image_size=args.image_size, patch_size=args.patch_size,
                            d_model=args.d_model, n_layers=args.layers)
    result = train_clip(model, pixels[torch.tensor(rows)], ids, mask, steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr, seed=args.seed)

    test_scenes = make_scenes(args.test_scenes, seed=1000 + args.seed)
    test_pixels = scene_pixels(test_scenes, args.image_size)
    candidates = sorted({s.caption() for s in test_scenes})
    cand_ids, cand_mask = tokenize(tok, candidates, MAX_LEN)
    exact = torch.tensor([[c in caption_variants(s) for c in candidates] for s in test_scenes])
    recall = image_to_text_recall(model, test_pixels, cand_ids, cand_mask, exact, ks=(1, 5, 10))
    two = torch.tensor([len(s.objects) == 2 for s in test_scenes])
    recall_two = image_to_text_recall(model, test_pixels[two], cand_ids, cand_mask, exact[two], ks=(1, 5))

    def attributes(text: str) -> frozenset[str]:  # the colour-shape pairs, ignoring where they are
        words = text.split()
        return frozenset(f"{words[i]} {words[i + 1]}" for i in range(len(words) - 1) if words[i] == "a")

    same_objects = torch.tensor([[attributes(c) == attributes(s.caption()) for c in candidates] for s in test_scenes])
    recall_objects = image_to_text_recall(model, test_pixels, cand_ids, cand_mask, same_objects, ks=(1,))
    out = {"train_scenes": args.train_scenes, "train_pairs": len(captions), "test_scenes": args.test_scenes,
           "candidate_captions": len(candidates), "image_size": args.image_size, "patch_size": args.patch_size,
           "d_model": args.d_model, "layers": args.layers,
           "params": sum(p.numel() for p in model.parameters()), "steps": args.steps, "batch_size": args.batch_size,
           "train_seconds": round(result.seconds, 1), "final_loss": round(result.final_loss, 3),
           "load_average_1min": round(os.getloadavg()[0], 1),
           "image_to_text_R@1": round(recall[1], 4), "image_to_text_R@5": round(recall[5], 4),
           "image_to_text_R@10": round(recall[10], 4),
           "chance_R@1": round(float(exact.float().sum(1).mean()) / len(candidates), 4),
           "two_shape_scenes": int(two.sum()), "two_shape_R@1": round(recall_two[1], 4),
           "two_shape_R@5": round(recall_two[5], 4),
           "R@1_right_objects_any_relation": round(recall_objects[1], 4)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
