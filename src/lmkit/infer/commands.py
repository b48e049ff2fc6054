"""CLI: `lmkit quickstart` (train a small model, then sample).

The quickstart lives here because it ends by generating: its training pipeline is
`lmkit.train.quickstart`, and infer sits below train in the layering rule. (`lmkit generate`
lives in serve/commands.py with `chat` and `serve`: all three run adapter folders, and peft
sits below infer.)
"""

from __future__ import annotations

import click

from lmkit.cli_grammar import progress_flags


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


COMMANDS: list[click.Command] = [quickstart]
