"""BLIP trained on the synthetic shapes scenes: caption exact-attribute accuracy and ITM AUC on held-out scenes.

A small BLIP (ViT 32x32 RGB, patch 8, d_model 64, 2 layers; BERT-like text encoder and decoder of
2 layers each, cross-attention to the 17 image tokens) is trained with ITC + ITM (hard negatives)
+ LM on the canonical captions of `make_scenes(n_train, seed)` and scored on `make_scenes(n_test,
seed + 1)`:
  caption exact-attribute accuracy  greedy captions whose colours, shapes and relation equal the scene's;
  ITM AUC                           matched vs unmatched pairs ("random": another scene's different
                                    caption; "hard": the scene's caption with one attribute changed).
The peer check: the trained captioner is saved as a transformers `BlipForConditionalGeneration`
folder, transformers' own `generate` (greedy) captions the same held-out images, and the share
of captions equal to ours is printed.

    OMP_NUM_THREADS=1 python3 bench/bench_blip_shapes.py                 # ~8 min on a busy 2-core CPU
    OMP_NUM_THREADS=1 python3 bench/bench_blip_shapes.py --steps 100     # a quick look

Last line: "caption accuracy <a>  ITM AUC random <r> hard <h>  train <s> s  transformers generate agrees <g>".
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-scenes", type=int, default=4000)
    ap.add_argument("--test-scenes", type=int, default=500)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--hard-share", type=float, default=None, help="share of ITM negatives drawn by similarity "
                    "(default blip_shapes.HARD_SHARE; 1 = BLIP's, all hard)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--save", default=None, help="also write the trained model here (as `lmkit blip train` does)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from lmkit.vision.blip_hub import save_blip
    from lmkit.vision.blip_shapes import (HARD_SHARE, caption_accuracy, decode_caption, itm_auc, new_shapes_blip,
                                          shapes_tokenizer, tokenize)
    from lmkit.vision.blip_train import train_blip
    from lmkit.vision.shapes import make_scenes, scene_pixels

    tok = shapes_tokenizer()
    train, test = make_scenes(args.train_scenes, args.seed), make_scenes(args.test_scenes, args.seed + 1)
    pixels, test_pixels = scene_pixels(train), scene_pixels(test)
    ids, mask = tokenize(tok, [s.caption() for s in train])
    model = new_shapes_blip(tok, seed=args.seed, patch_size=args.patch_size)
    seen = {s.caption() for s in train}
    print(f"train {len(train)} scenes ({len(seen)} distinct captions), held out {len(test)} "
          f"({sum(s.caption() not in seen for s in test)} with a caption never seen in training); "
          f"{sum(p.numel() for p in model.parameters())} parameters, {args.steps} steps x {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s)")
    r = train_blip(model, pixels, ids, mask, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   enc_token_id=tok.token_to_id("<enc>"), seed=args.seed,
                   hard_share=HARD_SHARE if args.hard_share is None else args.hard_share)
    print(f"trained in {r.seconds:.1f} s; last batch: " + ", ".join(f"{k} {v:.3f}" for k, v in r.final.items()))
    acc, captions = caption_accuracy(model, tok, test, test_pixels)
    aucs = itm_auc(model, tok, test, test_pixels, seed=args.seed)
    for scene, cap in list(zip(test, captions))[:5]:
        print(f"  true: {scene.caption():40s} generated: {cap}")
    print(f"caption exact-attribute accuracy {acc:.3f}; ITM AUC random negatives {aucs['random']:.3f}, "
          f"hard (one attribute changed) {aucs['hard']:.3f}")
    print(breakdown(test, captions))
    if args.save:
        save_blip(model, f"{args.save}/captioning", "captioning")
        save_blip(model, f"{args.save}/retrieval", "retrieval")
        tok.save(f"{args.save}/tokenizer.lmkit.json")
    agree = float("nan")
    if not args.no_peer:
        import transformers

        with tempfile.TemporaryDirectory() as tmp:
            save_blip(model, tmp, "captioning")
            peer = transformers.BlipForConditionalGeneration.from_pretrained(tmp).eval()
            with torch.no_grad():
                out = peer.generate(pixel_values=test_pixels, max_new_tokens=11, do_sample=False, num_beams=1)
        dec = torch.full((out.shape[0], 1), tok.token_to_id("<dec>"))
        peer_caps = [decode_caption(tok, torch.cat([d, row[row != tok.token_to_id("<dec>")]]))
                     for d, row in zip(dec, out)]
        agree = sum(a == b for a, b in zip(captions, peer_caps)) / len(captions)
        print(f"transformers BlipForConditionalGeneration.generate on the saved captioner: "
              f"{agree:.3f} of captions equal to ours")
    print(f"caption accuracy {acc:.3f}  ITM AUC random {aucs['random']:.3f} hard {aucs['hard']:.3f}  "
          f"train {r.seconds:.0f} s  transformers generate agrees {agree:.3f}")


def breakdown(scenes, captions) -> str:
    """Where the captions go wrong: one-shape scenes; two-shape scenes' objects (colour + shape, as a set)
    and, where both objects are right, the relation."""
    from lmkit.vision.blip_shapes import caption_attributes

    one = [(s, c) for s, c in zip(scenes, captions) if len(s.objects) == 1]
    two = [(s, c) for s, c in zip(scenes, captions) if len(s.objects) == 2]
    one_ok = sum(caption_attributes(c) == caption_attributes(s.caption()) for s, c in one)
    objects_ok, relation_ok = 0, 0
    for s, c in two:
        got, want = caption_attributes(c), caption_attributes(s.caption())
        if got is not None and len(got) == 3 and {got[0], got[2]} == {want[0], want[2]}:
            objects_ok += 1
            relation_ok += got == want
    return (f"one-shape scenes {one_ok}/{len(one)} right; two-shape scenes: both objects right {objects_ok}/{len(two)}, "
            f"of those the relation right {relation_ok}/{max(1, objects_ok)}")


if __name__ == "__main__":
    main()
