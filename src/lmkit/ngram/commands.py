"""`lmkit ngram train|ppl|generate`.

Text files are read one sentence per line (blank lines skipped). Words are whitespace
tokens by default; with ``--tokenizer FILE`` each line is encoded with that lmkit/HF
tokenizer and the token strings become the n-gram "words" (a token whose text contains
whitespace is written ``<id:N>`` so it survives an ARPA file). Pass the same tokenizer to
``ppl`` and ``generate``.
"""

from __future__ import annotations

import json
import re
import sys

import click

_ID_TOKEN = re.compile(r"<id:(\d+)>")


def _token_word(tok, i: int) -> str:
    s = tok.id_to_token(i)
    return s if s and not any(c.isspace() for c in s) else f"<id:{i}>"


def _read_sentences(paths, tokenizer=None, lowercase=False):
    from pathlib import Path

    tok = None
    if tokenizer:
        from lmkit.tokenizers.loading import load_tokenizer

        tok = load_tokenizer(tokenizer)
    out = []
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise click.ClickException(f"{p}: not UTF-8 text ({exc})") from None
        for line in text.splitlines():
            if lowercase:
                line = line.lower()
            if not line.strip():
                continue
            if tok is None:
                out.append(line.split())
            else:
                out.append([_token_word(tok, i) for i in tok.encode(line)])
    if not out:
        raise click.ClickException(f"no text in {', '.join(paths)}: the file(s) are empty")
    return out, tok


def _load(model_path):
    from lmkit.ngram.storage import load_model

    try:
        return load_model(model_path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("ngram")
def ngram_group() -> None:
    """Classical n-gram language models (counting, smoothing, ARPA, perplexity, sampling)."""


@ngram_group.command("train")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Model file: *.arpa writes ARPA (kn/katz), anything else lmkit's .npz (all methods).")
@click.option("-n", "--order", type=int, default=3, show_default=True, help="n (>= 1).")
@click.option("--method", type=click.Choice(["kn", "katz", "addk", "stupid"]), default="kn", show_default=True)
@click.option("-k", "--add-k", "add_k", type=float, default=1.0, show_default=True, help="k for addk (1 = Laplace).")
@click.option("--alpha", type=float, default=0.4, show_default=True, help="stupid backoff factor.")
@click.option("--min-count", type=int, default=1, show_default=True, help="Rarer words become <unk>.")
@click.option("--tokenizer", type=click.Path(exists=True), default=None, help="Tokenize with this tokenizer.")
@click.option("--lowercase", is_flag=True)
@click.option("--arpa", "arpa_out", type=click.Path(dir_okay=False), default=None, help="Also write an ARPA file.")
def ngram_train(files, out, order, method, add_k, alpha, min_count, tokenizer, lowercase, arpa_out) -> None:
    """Train an n-gram model on FILES (one sentence per line)."""
    import warnings

    from lmkit.ngram.arpa import ArpaError, write_arpa
    from lmkit.ngram.storage import save_counts_model
    from lmkit.ngram.train import train_ngram

    if order < 1:
        raise click.ClickException(f"--order must be >= 1, got {order}")
    params = {"addk": {"k": add_k}, "stupid": {"alpha": alpha}}.get(method, {})
    sents, _ = _read_sentences(files, tokenizer, lowercase)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, counts = train_ngram(sents, order, method, min_count=min_count, return_counts=True, **params)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        if str(out).endswith(".arpa"):
            write_arpa(model, out)
        else:
            save_counts_model(model, counts, params, out)
        if arpa_out:
            write_arpa(model, arpa_out)
    except (ValueError, ArpaError) as exc:
        raise click.ClickException(str(exc)) from None
    sizes = ", ".join(f"{k}-grams {len(t)}" for k, t in enumerate(counts.tables, 1))
    click.echo(f"trained {method} {order}-gram on {counts.n_sentences} sentences, {counts.n_tokens} tokens; "
               f"vocabulary {len(model.vocab)}; {sizes} -> {out}")


@ngram_group.command("ppl")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", type=click.Path(exists=True), default=None)
@click.option("--lowercase", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ngram_ppl(model_path, files, tokenizer, lowercase, as_json) -> None:
    """Perplexity of MODEL on FILES (<unk> for unseen words, </s> per line counted)."""
    model = _load(model_path)
    sents, _ = _read_sentences(files, tokenizer, lowercase)
    r = model.evaluate(sents)
    if as_json:
        click.echo(json.dumps(r.to_dict()))
        return
    click.echo(f"sentences {r.n_sentences}  tokens {r.n_tokens}  OOV {r.n_oov}")
    click.echo(f"log10 prob {r.log10_prob:.4f}  entropy {r.entropy_bits:.4f} bits/token")
    click.echo(f"perplexity {r.perplexity:.4f}  (excluding OOV: {r.perplexity_excluding_oov:.4f})")
    if not r.normalized:
        click.echo("note: stupid-backoff scores are not probabilities; this is not a true perplexity", err=True)


@ngram_group.command("generate")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.option("-n", "--num", type=int, default=1, show_default=True, help="Sentences to sample.")
@click.option("--max-words", type=int, default=50, show_default=True)
@click.option("--prompt", default="", help="Words (or text, with --tokenizer) to continue.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--tokenizer", type=click.Path(exists=True), default=None)
def ngram_generate(model_path, num, max_words, prompt, temperature, seed, tokenizer) -> None:
    """Sample sentences from MODEL."""
    import numpy as np

    from lmkit.ngram.sampling import sample_sentence

    model = _load(model_path)
    tok = None
    words = prompt.split()
    if tokenizer:
        from lmkit.tokenizers.loading import load_tokenizer

        tok = load_tokenizer(tokenizer)
        words = [_token_word(tok, i) for i in tok.encode(prompt)] if prompt else []
    rng = np.random.default_rng(seed)
    for _ in range(num):
        try:
            out = sample_sentence(model, rng, max_words=max_words, prompt=words, temperature=temperature)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        if tok is None:
            click.echo(" ".join(out))
        else:
            ids = []
            for w in out:
                m = _ID_TOKEN.fullmatch(w)
                i = int(m.group(1)) if m else tok.token_to_id(w)
                if i is not None:
                    ids.append(i)
            click.echo(tok.decode(ids))
        sys.stdout.flush()


COMMANDS = [ngram_group]
