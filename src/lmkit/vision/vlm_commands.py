"""`lmkit vlm train` and `lmkit vlm chat`: a LLaVA-style vision-language model on shapes scenes.

    lmkit vlm train -o OUT [--steps 1500 --align-steps 200 --clip-steps 1500 --scenes 10000 --test-scenes 200
                           --lora-rank 0 --image-size 32 --patch-size 8 --d-model 64 --layers 2]
    lmkit vlm chat MODEL_DIR --image IMAGE.png [-q "what colour is the circle?" ...]
    lmkit vlm chat MODEL_DIR --eval-shapes 100

`train` runs the three stages of vision/vlm_train.py (CLIP tower, projector alignment,
instruction tuning), writes a transformers `LlavaForConditionalGeneration` folder plus the
word-level tokenizer (tokenizer.lmkit.json), and prints each stage's time and the accuracy of
its answers on held-out scenes. `chat` answers each -q question about the image (or, without
-q, each line read from stdin); `--eval-shapes N` prints the accuracy on N held-out scenes.
The same folder serves images in chat through `lmkit serve MODEL_DIR`.
"""

from __future__ import annotations

import sys

import click


@click.group("vlm")
def vlm() -> None:
    """Vision-language model (LLaVA-style): train on shapes scenes, chat about images."""


@vlm.command("train")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="directory for the model")
@click.option("--steps", type=click.IntRange(0), default=1500, show_default=True, help="instruction-tuning steps")
@click.option("--align-steps", type=click.IntRange(0), default=200, show_default=True,
              help="projector-alignment steps (stage 1)")
@click.option("--clip-steps", type=click.IntRange(0), default=1500, show_default=True,
              help="contrastive steps of the CLIP vision tower (stage 0)")
@click.option("--scenes", type=click.IntRange(1), default=10000, show_default=True, help="training scenes")
@click.option("--test-scenes", type=click.IntRange(0), default=200, show_default=True, help="held-out scenes scored")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--lora-rank", type=click.IntRange(0), default=0, show_default=True,
              help="> 0: instruction tuning trains LoRA adapters of the decoder (merged when saved)")
@click.option("--tune-vision", is_flag=True, help="instruction tuning trains the vision tower too (LLaVA freezes it)")
@click.option("--image-size", type=click.IntRange(8), default=32, show_default=True)
@click.option("--patch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--d-model", type=click.IntRange(16), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_command(out, steps, align_steps, clip_steps, scenes, test_scenes, batch_size, lr, lora_rank, tune_vision,
                  image_size, patch_size, d_model, layers, seed) -> None:
    """Train a small vision-language model on synthetic shapes scenes (three stages)."""
    from lmkit.vision.vlm_hub import save_vlm_dir
    from lmkit.vision.vlm_train import VLMTrainSettings, train_shapes_vlm

    s = VLMTrainSettings(image_size=image_size, patch_size=patch_size, d_model=d_model, layers=layers, n_train=scenes,
                         n_test=test_scenes, clip_steps=clip_steps, align_steps=align_steps, instruct_steps=steps,
                         batch_size=batch_size, lr=lr, lora_rank=lora_rank, tune_vision=tune_vision, seed=seed)
    model, tok, report = train_shapes_vlm(s)
    save_vlm_dir(model, tok, out)
    times = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    click.echo(f"stages: {times}; final losses: " + ", ".join(f"{k} {v:.3f}" for k, v in report.losses.items()))
    if report.accuracy is not None:
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in report.by_kind.items())
        click.echo(f"answer accuracy on the questions of {test_scenes} held-out scenes: {report.accuracy:.3f} ({kinds})")
    click.echo(f"saved to {out}")


@vlm.command("chat")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--image", type=click.Path(exists=True, dir_okay=False), default=None, help="the image to talk about")
@click.option("-q", "--question", "questions", multiple=True, help="a question (repeatable; none: read stdin lines)")
@click.option("--max-tokens", type=click.IntRange(1), default=16, show_default=True)
@click.option("--eval-shapes", type=click.IntRange(1), default=None,
              help="print the answer accuracy on this many held-out shapes scenes instead")
@click.option("--seed", type=int, default=0, show_default=True, help="the scene seed `vlm train` used")
def chat_command(model_dir, image, questions, max_tokens, eval_shapes, seed) -> None:
    """Answer questions about an image with the vision-language model in MODEL_DIR."""
    from lmkit.vision.vlm_hub import load_vlm_dir

    model, tok = load_vlm_dir(model_dir)
    if eval_shapes:
        from lmkit.vision.shapes import make_scenes
        from lmkit.vision.vlm_train import TEST_SEED_OFFSET, qa_accuracy

        acc, kinds = qa_accuracy(model, tok, make_scenes(eval_shapes, seed=seed + TEST_SEED_OFFSET))
        click.echo(f"answer accuracy on the questions of {eval_shapes} held-out scenes: {acc:.3f} (" +
                   ", ".join(f"{k} {v:.3f}" for k, v in kinds.items()) + ")")
        return
    if image is None:
        raise click.UsageError("give --image IMAGE.png (or --eval-shapes N)")
    from PIL import Image

    from lmkit.vision.vlm_chat import images_to_pixels
    from lmkit.vision.vlm_train import answer

    with Image.open(image) as im:
        pixels = images_to_pixels([im], model.config.vision.image_size)
    lines = list(questions) or [line.strip() for line in sys.stdin if line.strip()]
    for q in lines:
        click.echo(f"{q}\t{answer(model, tok, pixels, [q], max_new_tokens=max_tokens)[0]}")


COMMANDS = [vlm]
