"""`lmkit blip train` and `lmkit blip caption`: BLIP on the synthetic shapes scenes.

    lmkit blip train -o OUT [--steps 2400 --batch-size 64 --train-scenes 4000 --test-scenes 500]
    lmkit blip caption MODEL_DIR [IMAGE.png ...] [--eval-scenes N]

`train` writes OUT/captioning (a transformers `BlipForConditionalGeneration` folder),
OUT/retrieval (a `BlipForImageTextRetrieval` folder; both hold the same ViT) and the caption
tokenizer OUT/tokenizer.lmkit.json, and prints the held-out caption exact-attribute accuracy and
ITM AUC. `caption` prints a greedy caption per image file, or (`--eval-scenes N`) the figures on
N held-out scenes.
"""

from __future__ import annotations

import click

TOKENIZER_FILE = "tokenizer.lmkit.json"


@click.group("blip")
def blip() -> None:
    """BLIP: image captioning and image-text matching (ITC + ITM + LM) on shapes scenes."""


def _figures(model, tok, n: int, seed: int) -> str:
    from lmkit.vision.blip_shapes import caption_accuracy, itm_auc
    from lmkit.vision.shapes import make_scenes, scene_pixels

    scenes = make_scenes(n, seed + 1)
    pixels = scene_pixels(scenes, model.config.vision.image_size)
    acc, _ = caption_accuracy(model, tok, scenes, pixels)
    line = f"on {n} held-out scenes: caption exact-attribute accuracy {acc:.3f}"
    if "retrieval" in model.config.parts:
        aucs = itm_auc(model, tok, scenes, pixels, seed=seed)
        line += f", ITM AUC {aucs['random']:.3f} (hard negatives, one attribute changed: {aucs['hard']:.3f})"
    return line


@blip.command("train")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="directory for the model")
@click.option("--steps", type=click.IntRange(1), default=2400, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--train-scenes", type=click.IntRange(2), default=4000, show_default=True)
@click.option("--test-scenes", type=click.IntRange(2), default=500, show_default=True)
@click.option("--patch-size", type=click.IntRange(1), default=8, show_default=True, help="of the 32x32 scenes")
@click.option("--d-model", type=click.IntRange(16), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--hard-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="share of ITM negatives drawn by ITC similarity (the rest uniformly; BLIP: 1)")
@click.option("--seed", type=int, default=0, show_default=True)
def train_command(out, steps, batch_size, lr, train_scenes, test_scenes, patch_size, d_model, layers, hard_share,
                  seed) -> None:
    """Train a small BLIP on Pillow-rendered shapes scenes with their compositional captions."""
    from pathlib import Path

    from lmkit.vision.blip_hub import save_blip
    from lmkit.vision.blip_shapes import new_shapes_blip, shapes_tokenizer, tokenize
    from lmkit.vision.blip_train import train_blip
    from lmkit.vision.shapes import make_scenes, scene_pixels

    tok = shapes_tokenizer()
    scenes = make_scenes(train_scenes, seed)
    ids, mask = tokenize(tok, [s.caption() for s in scenes])
    model = new_shapes_blip(tok, seed=seed, patch_size=patch_size, d_model=d_model, n_layers=layers)
    result = train_blip(model, scene_pixels(scenes), ids, mask, steps=steps, batch_size=batch_size, lr=lr,
                        enc_token_id=tok.token_to_id("<enc>"), hard_share=hard_share, seed=seed)
    save_blip(model, Path(out) / "captioning", "captioning")
    save_blip(model, Path(out) / "retrieval", "retrieval")
    tok.save(Path(out) / TOKENIZER_FILE)
    losses = ", ".join(f"{k} {v:.3f}" for k, v in result.final.items())
    click.echo(f"trained {result.steps} steps in {result.seconds:.1f} s (last batch: {losses})")
    click.echo(_figures(model, tok, test_scenes, seed))
    click.echo(f"saved to {out} (captioning/, retrieval/, {TOKENIZER_FILE})")


@blip.command("caption")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--eval-scenes", type=click.IntRange(2), default=None, help="score N held-out scenes instead")
@click.option("--seed", type=int, default=0, show_default=True, help="the scene seed used by `blip train`")
def caption_command(model_dir, images, eval_scenes, seed) -> None:
    """Greedy captions for image files (RGB, resized to the model's size), or the held-out figures."""
    from pathlib import Path

    from lmkit.errors import CheckpointError
    from lmkit.tokenizers.simple import WhitespaceTokenizer
    from lmkit.vision.blip_hub import load_blip
    from lmkit.vision.blip_shapes import decode_caption
    from lmkit.vision.clip_commands import read_images

    if not images and eval_scenes is None:
        raise click.UsageError("give image files to caption, or --eval-scenes N")
    root = Path(model_dir)
    if not (root / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{model_dir}: no {TOKENIZER_FILE} (the caption tokenizer `lmkit blip train` writes)")
    folders = [root / p for p in ("captioning", "retrieval") if (root / p / "config.json").is_file()] or [root]
    model = load_blip(*folders).eval()
    tok = WhitespaceTokenizer.load(root / TOKENIZER_FILE)
    if eval_scenes is not None:
        click.echo(_figures(model, tok, eval_scenes, seed))
    if images:
        vcfg = model.config.vision
        out = model.generate_captions(read_images(list(images), vcfg.image_size, vcfg.num_channels))
        for path, row in zip(images, out):
            click.echo(f"{path}\t{decode_caption(tok, row)}")


COMMANDS = [blip]
