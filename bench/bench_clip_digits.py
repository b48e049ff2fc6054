"""CLIP trained on scikit-learn's digits: zero-shot accuracy on held-out digits, lmkit vs transformers.

The same small CLIP (ViT 16x16 grey images, patch 4, d_model 64, 2 layers per tower) is built by
lmkit; its initial weights are saved as a transformers `CLIPModel` folder and loaded by
transformers, so both start from the same numbers. Each is trained with the same loop
(lmkit.vision.clip_train.train_clip: AdamW, warm-up + cosine, the same random batches of
image-caption pairs, symmetric InfoNCE) and scored on the 450 held-out digits by zero-shot
classification with the prompts "a photo of the digit {d}".

    OMP_NUM_THREADS=1 python3 bench/bench_clip_digits.py              # ~2 x 6 min on a busy 2-core CPU
    OMP_NUM_THREADS=1 python3 bench/bench_clip_digits.py --no-peer    # lmkit only

Subnormal floats are flushed to zero (both models; `--keep-denormals` to keep them: lmkit's
run then slows ~2x in its later steps). Also timed: one training step of each, alternating (the end-to-end times are minutes apart
and a shared machine's load changes in between).

Last line: "ours/peer step time <r>  accuracy ours <a> peer <b>".
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


class PeerCLIP(torch.nn.Module):
    """transformers' CLIPModel behind the interface train_clip and zero_shot_accuracy use."""

    def __init__(self, hf) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, pixels, ids, mask, return_loss=False):
        out = self.hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, return_loss=return_loss)
        return {"loss": out.loss, "logits_per_image": out.logits_per_image}

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.hf.logit_scale.clamp_(0, 4.6052)

    @torch.no_grad()
    def zero_shot_classify(self, pixels, prompt_ids, prompt_mask=None):
        out = self.hf(pixel_values=pixels, input_ids=prompt_ids, attention_mask=prompt_mask)
        return out.logits_per_image.softmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not flush subnormal floats to zero (ours then slows down ~2x late in training)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from lmkit.vision.clip_digits import (TEMPLATES, caption_tokenizer, digit_captions, digit_prompt_ensemble,
                                          digit_prompts, load_digit_split, new_digits_clip, tokenize)
    from lmkit.vision.clip_hub import save_clip
    from lmkit.vision.clip_train import train_clip, zero_shot_accuracy

    tok = caption_tokenizer()
    split = load_digit_split(args.image_size, seed=args.seed)
    ids, mask = tokenize(tok, digit_captions(split.train_labels, seed=args.seed))
    prompts, prompt_mask = digit_prompts(tok)
    ours = new_digits_clip(tok, seed=args.seed, image_size=args.image_size)
    tmp = tempfile.TemporaryDirectory()
    save_clip(ours, tmp.name)  # the peer starts from the same weights
    print(f"train {len(split.train_labels)} digits, held out {len(split.test_labels)}, "
          f"{sum(p.numel() for p in ours.parameters())} parameters, {args.steps} steps x {args.batch_size}")

    kw = dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed, flush_denormals=not args.keep_denormals)
    t0 = time.perf_counter()
    r = train_clip(ours, split.train_pixels, ids, mask, **kw)
    ours_s = time.perf_counter() - t0
    acc = zero_shot_accuracy(ours, split.test_pixels, split.test_labels, prompts, prompt_mask)
    ens_ids, ens_mask = digit_prompt_ensemble(tok)
    ens = zero_shot_accuracy(ours, split.test_pixels, split.test_labels, ens_ids, ens_mask,
                             prompts_per_class=len(TEMPLATES))
    print(f"lmkit:        {ours_s:7.1f} s  final loss {r.final_loss:.3f}  zero-shot accuracy {acc:.3f}"
          f"  (ensemble of the {len(TEMPLATES)} caption templates: {ens:.3f})")
    if args.no_peer:
        print(f"accuracy ours {acc:.3f} (prompt ensemble {ens:.3f})")
        return

    import transformers

    peer = PeerCLIP(transformers.CLIPModel.from_pretrained(tmp.name))
    t0 = time.perf_counter()
    rp = train_clip(peer, split.train_pixels, ids, mask, **kw)
    peer_s = time.perf_counter() - t0
    peer_acc = zero_shot_accuracy(peer, split.test_pixels, split.test_labels, prompts, prompt_mask)
    print(f"transformers: {peer_s:7.1f} s  final loss {rp.final_loss:.3f}  zero-shot accuracy {peer_acc:.3f}")
    step_ratio = interleaved_step_ratio(ours, peer, split.train_pixels[: args.batch_size], ids[: args.batch_size],
                                        mask[: args.batch_size])
    print(f"end-to-end train time ours/peer {ours_s / peer_s:.2f} (the two runs are minutes apart: load noise)")
    print(f"ours/peer step time {step_ratio:.2f}  accuracy ours {acc:.3f} peer {peer_acc:.3f}")


def interleaved_step_ratio(ours, peer, pixels, ids, mask, reps: int = 20) -> float:
    """Median time of one forward+backward training step, ours / peer, the two alternating
    (so a machine shared with other jobs slows both alike)."""
    times = {"ours": [], "peer": []}
    for _ in range(reps):
        for name, model in (("ours", ours), ("peer", peer)):
            t0 = time.perf_counter()
            model(pixels, ids, mask, return_loss=True)["loss"].backward()
            times[name].append(time.perf_counter() - t0)
    ours_t, peer_t = (sorted(v)[len(v) // 2] for v in (times["ours"], times["peer"]))
    print(f"one training step (batch {pixels.shape[0]}, forward+backward, median of {reps}): "
          f"ours {ours_t * 1000:.1f} ms, transformers {peer_t * 1000:.1f} ms")
    return ours_t / peer_t


if __name__ == "__main__":
    main()
