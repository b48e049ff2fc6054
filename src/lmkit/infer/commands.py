"""CLI: `lmkit quickstart` (train a small model, then sample) and `lmkit watermark`
(detect the green-list watermark; embed / extract the invisible zero-width one).

The quickstart lives here because it ends by generating: its training pipeline is
`lmkit.train.quickstart`, and infer sits below train in the layering rule. (`lmkit generate`
lives in serve/commands.py with `chat` and `serve`: all three run adapter folders, and peft
sits below infer.)
"""

from __future__ import annotations

import click

from lmkit.cli_grammar import progress_flags, watermark_options


@click.command("quickstart")
@progress_flags
@click.option("--out", "-o", default="lmkit-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="where the corpus, tokenizer, checkpoints and the final model go")
@click.option("--steps", default=1200, show_default=True, envvar="LMKIT_QUICKSTART_STEPS", show_envvar=True,
              help="optimizer steps (about 2-3 minutes on 2 CPU cores)")
@click.option("--vocab-size", default=2048, show_default=True, envvar="LMKIT_QUICKSTART_VOCAB_SIZE", show_envvar=True)
@click.option("--seed", default=0, show_default=True)
def quickstart(out: str, steps: int, vocab_size: int, seed: int) -> None:
    """Train a BPE tokenizer and a small Llama-style model on Python's own documentation, then generate.

    Beside the model it writes the inputs of the README's next steps: chat.jsonl (chat SFT
    data), held_out.txt (text it did not train on) and docs/ (Markdown files to index)."""
    import time

    from lmkit.hub.pretrained import load_pretrained
    from lmkit.infer import generate_text
    from lmkit.train.quickstart import run_quickstart

    t0 = time.perf_counter()
    result = run_quickstart(out, steps=steps, vocab_size=vocab_size, seed=seed, report=click.echo)
    click.echo(f"      validation perplexity {result.eval_ppl:.1f}  (unigram baseline {result.unigram_ppl:.1f}; "
               f"{result.unigram_ppl / result.eval_ppl:.1f}x better), {result.parameters:,} parameters")

    model = load_pretrained(result.model_dir)
    prompt = "The for statement"
    sample = generate_text(model, result.tokenizer, prompt, max_new_tokens=80, do_sample=True, temperature=0.8,
                           top_k=40, seed=seed)
    click.echo(f"[5/5] sample (temperature 0.8, top-k 40):\n\n{prompt}{sample}\n")
    model_dir = result.model_dir
    click.echo(f"done in {time.perf_counter() - t0:.0f} s. The model is a Hugging Face checkpoint in {model_dir}.")
    click.echo("Next, try:")
    click.echo(f"  lmkit info {model_dir}")
    click.echo(f"  lmkit generate {model_dir} --prompt 'Return the' --max-new-tokens 60")
    click.echo(f"  lmkit tokenizer encode {model_dir} 'def main():'")
    click.echo("  lmkit memory llama-7b --method lora")
    click.echo(f"  python -c \"from transformers import AutoModelForCausalLM as M; print(M.from_pretrained('{model_dir}'))\"")


@click.group("watermark")
def watermark() -> None:
    """Watermarks: detect the green-list one (`lmkit generate/serve --watermark`); embed or extract
    an invisible zero-width one."""


def _read_text(text: str | None, file: str | None) -> str:
    import sys

    if (text is None) == (file is None):
        raise click.UsageError("give the text with --text (or '-' for stdin) or --file")
    if file is not None:
        with open(file, encoding="utf-8") as f:
            return f.read()
    return sys.stdin.read() if text == "-" else text


@watermark.command("detect")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--text", default=None, help="The text to test ('-': stdin); leave the prompt out.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False), default=None, help="Or read it from here.")
@click.option("--z-threshold", type=float, default=4.0, show_default=True, help="Call it watermarked above this z.")
@click.option("--ignore-repeated-ngrams", is_flag=True, help="Count each distinct n-gram once.")
@watermark_options(flag=False)
def watermark_detect(model_dir, text, file, z_threshold, ignore_repeated_ngrams, watermark) -> None:
    """Test TEXT for the watermark with MODEL_DIR's tokenizer and vocabulary size: prints JSON with
    the green count, z-score and p-value; exit status 0 either way."""
    import json

    from lmkit.hub.pretrained import read_hf_config
    from lmkit.infer.watermark_detect import WatermarkDetector
    from lmkit.tokenizers.loading import load_tokenizer

    body = _read_text(text, file)
    tok = load_tokenizer(model_dir)
    hf = read_hf_config(model_dir)
    detector = WatermarkDetector(watermark, int(hf["vocab_size"]), bos_token_id=hf.get("bos_token_id"),
                                 ignore_repeated_ngrams=ignore_repeated_ngrams, z_threshold=z_threshold)
    click.echo(json.dumps(detector.score(tok.encode(body)).to_dict()))


@watermark.command("embed")
@click.option("--text", default=None, help="The text ('-': stdin).")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False), default=None, help="Or read it from here.")
@click.option("--payload", required=True, help="What to hide (e.g. a model or request id).")
@click.option("--every", type=click.IntRange(1), default=20, show_default=True, help="A copy every this many words.")
def watermark_embed(text, file, payload, every) -> None:
    """Print the text with PAYLOAD hidden in zero-width characters (see docs/safety.md for the limits)."""
    from lmkit.data.safety.invisible_watermark import embed

    click.echo(embed(_read_text(text, file), payload, every), nl=False)


@watermark.command("extract")
@click.option("--text", default=None, help="The text ('-': stdin).")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False), default=None, help="Or read it from here.")
def watermark_extract(text, file) -> None:
    """Print the payloads of the zero-width marks found in the text, one per line (exit 1: none)."""
    from lmkit.data.safety.invisible_watermark import extract

    found = extract(_read_text(text, file))
    for payload in dict.fromkeys(found):
        click.echo(payload)
    if not found:
        raise click.exceptions.Exit(1)


COMMANDS: list[click.Command] = [quickstart, watermark]
