"""CLI: `lmkit generate` (continue a prompt) and `lmkit quickstart` (train a small model, then sample).

The quickstart lives here because it ends by generating: its training pipeline is
`lmkit.train.quickstart`, and infer sits below train in the layering rule.
"""

from __future__ import annotations

import sys

import click


@click.command("generate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-p", "--prompt", required=True, help="Text to continue ('-' reads it from stdin).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True,
              help="0: greedy decoding; > 0: sample at this temperature.")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Sampling: keep the k best (0: off).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Sampling: nucleus probability mass.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); it is not printed.")
@click.option("--stream/--no-stream", default=False, help="Print the text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print {text, tokens, finish_reason} as JSON.")
@click.option("--compile", "compile_step", is_flag=True,
              help="torch.compile the decode step (CPU: ~10 s once, then about 1.3x faster per token).")
def generate_cmd(model_dir, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, stream, as_json,
                 compile_step) -> None:
    """Continue PROMPT with the Hugging Face checkpoint in MODEL_DIR (and the tokenizer beside it)."""
    import json

    from lmkit.hub import load_pretrained
    from lmkit.infer import GenerationConfig, generate, stream_text
    from lmkit.infer.generate import encode_prompt
    from lmkit.tokenizers.loading import load_tokenizer

    text = sys.stdin.read() if prompt == "-" else prompt
    tok = load_tokenizer(model_dir)
    model = load_pretrained(model_dir)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                           temperature=temperature or 1.0, top_k=top_k or None, top_p=top_p, seed=seed,
                           stop=list(stop) or None, compile=compile_step)
    if as_json:
        out = generate(model, [encode_prompt(tok, text)], cfg, tokenizer=tok)
        click.echo(json.dumps({"text": out.texts[0], "tokens": out.sequences[0],
                               "finish_reason": out.finish_reasons[0]}, ensure_ascii=False))
    elif stream:
        click.echo(text, nl=False)
        for delta in stream_text(model, tok, text, cfg):
            click.echo(delta, nl=False)
        click.echo()
    else:
        out = generate(model, [encode_prompt(tok, text)], cfg, tokenizer=tok)
        click.echo(text + out.texts[0])


@click.command("quickstart")
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


COMMANDS: list[click.Command] = [generate_cmd, quickstart]
