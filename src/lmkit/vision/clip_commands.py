"""`lmkit clip train` and `lmkit clip classify`: CLIP on scikit-learn's digits, zero-shot on images.

    lmkit clip train -o OUT [--steps 1000 --batch-size 128 --image-size 16 --d-model 64 --layers 2]
    lmkit clip classify MODEL_DIR [IMAGE.png ...] [--labels 0,1,...] [--template "a photo of the digit {}"]
                        [--eval-digits]

`train` writes a transformers `CLIPModel` folder (config.json + model.safetensors) plus the
caption tokenizer (tokenizer.lmkit.json) and prints the zero-shot accuracy on held-out digits.
`classify` prints, for each image file, the label whose prompt is most similar and its
probability; `--eval-digits` prints the held-out digits' zero-shot accuracy instead.
"""

from __future__ import annotations

import click



@click.group("clip")
def clip() -> None:
    """CLIP: contrastive image-text training and zero-shot classification."""


@clip.command("train")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="directory for the model")
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=128, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--image-size", type=click.IntRange(8), default=16, show_default=True, help="digits are upsampled to this")
@click.option("--d-model", type=click.IntRange(16), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_command(out, steps, batch_size, lr, image_size, d_model, layers, seed) -> None:
    """Train a small CLIP on scikit-learn's digits with captions built from the labels."""
    from pathlib import Path

    from lmkit.vision.clip_folder import TOKENIZER_FILE
    from lmkit.vision.clip_digits import (TEMPLATES, caption_tokenizer, digit_captions, digit_prompt_ensemble,
                                          digit_prompts, load_digit_split, new_digits_clip, tokenize)
    from lmkit.vision.clip_hub import save_clip
    from lmkit.vision.clip_train import train_clip, zero_shot_accuracy

    tok = caption_tokenizer()
    split = load_digit_split(image_size, seed=seed)
    ids, mask = tokenize(tok, digit_captions(split.train_labels, seed=seed))
    model = new_digits_clip(tok, seed=seed, image_size=image_size, d_model=d_model, n_layers=layers)
    result = train_clip(model, split.train_pixels, ids, mask, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    prompts, prompt_mask = digit_prompts(tok)
    acc = zero_shot_accuracy(model, split.test_pixels, split.test_labels, prompts, prompt_mask)
    ens_ids, ens_mask = digit_prompt_ensemble(tok)
    ens = zero_shot_accuracy(model, split.test_pixels, split.test_labels, ens_ids, ens_mask,
                             prompts_per_class=len(TEMPLATES))
    save_clip(model, out)
    tok.save(Path(out) / TOKENIZER_FILE)
    click.echo(f"trained {result.steps} steps in {result.seconds:.1f} s, final loss {result.final_loss:.3f}")
    click.echo(f"zero-shot accuracy on {len(split.test_labels)} held-out digits: {acc:.3f} "
               f"(prompt ensemble of the {len(TEMPLATES)} caption templates: {ens:.3f})")
    click.echo(f"saved to {out}")


def _load(model_dir: str):
    from lmkit.vision.clip_folder import load_clip_folder

    return load_clip_folder(model_dir)


def read_images(paths: list[str], image_size: int, channels: int):
    """Image files -> [N, channels, image_size, image_size] in [-1, 1] (Pillow; grey for one channel)."""
    import torch

    from lmkit.vision.image_input import image_pixels

    return torch.stack([image_pixels(p, image_size, channels) for p in paths])


@clip.command("classify")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--labels", default="0,1,2,3,4,5,6,7,8,9", show_default=True, help="comma-separated class labels")
@click.option("--template", default="a photo of the digit {}", show_default=True, help="prompt; {} is the label")
@click.option("--eval-digits", is_flag=True, help="print the zero-shot accuracy on the held-out digits")
@click.option("--seed", type=int, default=0, show_default=True, help="the split seed used by `clip train`")
def classify_command(model_dir, images, labels, template, eval_digits, seed) -> None:
    """Zero-shot classification: each image gets the label whose prompt it is most similar to."""
    from lmkit.vision.clip_digits import load_digit_split, tokenize
    from lmkit.vision.clip_train import zero_shot_accuracy

    if not images and not eval_digits:
        raise click.UsageError("give image files to classify, or --eval-digits")
    model, tok = _load(model_dir)
    names = [s.strip() for s in labels.split(",") if s.strip()]
    prompts, mask = tokenize(tok, [template.replace("{}", n) for n in names], model.config.text.max_seq_len)
    vcfg = model.config.vision
    if eval_digits:
        split = load_digit_split(vcfg.image_size, seed=seed)
        if names != [str(d) for d in range(10)]:
            raise click.UsageError("--eval-digits needs the labels 0..9 in order")
        acc = zero_shot_accuracy(model, split.test_pixels, split.test_labels, prompts, mask)
        click.echo(f"zero-shot accuracy on {len(split.test_labels)} held-out digits: {acc:.3f}")
    if images:
        probs = model.zero_shot_classify(read_images(list(images), vcfg.image_size, vcfg.num_channels), prompts, mask)
        for path, row in zip(images, probs):
            best = int(row.argmax())
            click.echo(f"{path}\t{names[best]}\t{float(row[best]):.3f}")


COMMANDS = [clip]
