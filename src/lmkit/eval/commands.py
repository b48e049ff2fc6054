"""`lmkit eval ppl|mc|gen|run`: evaluate a model or generated text and write a JSON report (atomically);
`run` runs lm-eval-format YAML tasks (eval/harness)."""

from __future__ import annotations

import json
import time

import click

from lmkit.cli_grammar import dtype_option


def _write_report(path: str | None, report: dict) -> None:
    from lmkit.atomic import atomic_write_text

    text = json.dumps(report, ensure_ascii=False, indent=2) + "\n"
    if path:
        atomic_write_text(path, text)
    summary = {k: v for k, v in report.items() if not isinstance(v, (list, dict)) or k in ("bleu",)}
    click.echo(json.dumps(summary, ensure_ascii=False))


def _load_model(model_dir: str, tokenizer: str | None, dtype: str = "fp32"):
    from lmkit.errors import LmkitError
    from lmkit.hub.adapter_folder import require_full_checkpoint
    from lmkit.hub.pretrained import load_pretrained
    from lmkit.tokenizers.loading import load_tokenizer

    require_full_checkpoint(model_dir, "lmkit eval")  # an adapter folder: say `lmkit merge`
    try:
        model = load_pretrained(model_dir, dtype=dtype)
        if dtype == "fp32":
            model = model.float()  # as before --dtype: also a quantized checkpoint's float tensors
        tok = load_tokenizer(tokenizer or model_dir)
    except (LmkitError, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot load the model/tokenizer: {exc}") from None
    return model, tok


@click.group("eval")
def eval_group() -> None:
    """Evaluate models (perplexity, multiple choice) and generated text (BLEU, ROUGE, EM/F1, facts)."""


@eval_group.command("ppl")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("text_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", type=click.Path(exists=True), default=None, help="Default: the model directory's.")
@click.option("--max-length", type=click.IntRange(1), default=None,
              help="Window length (default: the model's context; longer is an error).")
@click.option("--stride", type=int, default=None, help="Window step (default: max-length).")
@click.option("--bos-id", type=int, default=None, help="Prepend this token id so the first token is scored too.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None, help="JSON report path.")
@dtype_option(default="fp32")
def eval_ppl(model_dir, text_file, tokenizer, max_length, stride, bos_id, out, dtype) -> None:
    """Sliding-window perplexity and bits per byte of MODEL_DIR on TEXT_FILE."""
    from pathlib import Path

    from lmkit.cli_grammar import check_fits_context
    from lmkit.eval.perplexity import text_perplexity

    text = Path(text_file).read_text(encoding="utf-8")
    if not text.strip():
        raise click.ClickException(f"{text_file} is empty")
    model, tok = _load_model(model_dir, tokenizer, dtype)
    check_fits_context("--max-length", max_length, model.config.max_seq_len)
    t0 = time.perf_counter()
    rep = text_perplexity(model, tok, text, max_length, stride, bos_id=bos_id)
    _write_report(out, {"task": "perplexity", "model": str(model_dir), "text": str(text_file), **rep.to_dict(),
                        "seconds": round(time.perf_counter() - t0, 3)})


@eval_group.command("mc")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("task_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", type=click.Path(exists=True), default=None)
@click.option("--norm", type=click.Choice(["chars", "bytes"]), default="chars", show_default=True,
              help="Length used by acc_norm.")
@click.option("--limit", type=int, default=None, help="Only the first N examples.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None)
@dtype_option(default="fp32")
def eval_mc(model_dir, task_file, tokenizer, norm, limit, out, dtype) -> None:
    """Multiple-choice accuracy (acc, acc_norm) of MODEL_DIR on a JSONL TASK_FILE."""
    from lmkit.eval.multiple_choice import LMScorer, evaluate_mc, load_task

    examples = load_task(task_file)[:limit]
    model, tok = _load_model(model_dir, tokenizer, dtype)
    res = evaluate_mc(examples, LMScorer(model, tok), norm=norm)
    _write_report(out, {"task": "multiple_choice", "model": str(model_dir), "file": str(task_file), **res})


def _read_texts(path: str, keys: tuple[str, ...]) -> list:
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines()]
    if path.endswith(".jsonl"):
        out = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path}:{i}: invalid JSON ({exc.msg})") from None
            val = d if isinstance(d, str) else next((d[k] for k in keys if k in d), None)
            if val is None:
                raise click.ClickException(f"{path}:{i}: no field among {list(keys)}")
            out.append(val)
        return out
    while lines and not lines[-1]:
        lines.pop()
    return lines


@eval_group.command("gen")
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False))
@click.argument("references", type=click.Path(exists=True, dir_okay=False))
@click.option("--metrics", default="bleu,rouge,squad", show_default=True,
              help="Comma list of: bleu, rouge, squad (exact match + token F1), facts (entity/number overlap).")
@click.option("--rouge-tokenize", type=click.Choice(["default", "whitespace", "char"]), default="default",
              show_default=True, help="'char' or 'whitespace' for Chinese (rouge-score drops non-ASCII).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None)
def eval_gen(predictions, references, metrics, rouge_tokenize, out) -> None:
    """Score PREDICTIONS against REFERENCES (text files, one per line, or JSONL with
    "prediction" / "reference" or "references" fields)."""
    preds = _read_texts(predictions, ("prediction", "text", "output"))
    refs = _read_texts(references, ("references", "reference", "answers", "answer", "text"))
    if not preds:
        raise click.ClickException(f"{predictions} holds no predictions")
    if len(preds) != len(refs):
        raise click.ClickException(f"{len(preds)} predictions but {len(refs)} references")
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    bad = set(wanted) - {"bleu", "rouge", "squad", "facts"}
    if bad:
        raise click.ClickException(f"unknown metrics {sorted(bad)}")
    report: dict = {"task": "generation", "n": len(preds)}
    if "bleu" in wanted:
        from lmkit.eval.text_metrics import bleu

        report["bleu"] = bleu(preds, refs)
    if "rouge" in wanted:
        from lmkit.eval.text_metrics import rouge

        first = [r if isinstance(r, str) else r[0] for r in refs]
        report["rouge"] = rouge(preds, first, tokenize=rouge_tokenize)
    if "squad" in wanted:
        from lmkit.eval.text_metrics import squad_scores

        report.update(squad_scores(preds, refs))
    if "facts" in wanted:
        from lmkit.eval.hallucination import fact_overlap

        rows = [fact_overlap(p, r if isinstance(r, str) else " ".join(r)) for p, r in zip(preds, refs)]
        report["hallucination_rate"] = sum(r["hallucination_rate"] for r in rows) / len(rows)
        report["facts"] = rows
    _write_report(out, report)


@eval_group.command("run")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A local checkpoint directory (full or quantized by `lmkit quantize`).")
@click.option("--base-url", default=None, help="An OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1).")
@click.option("--model-name", default=None, help="With --base-url: the model to ask for (default: the first listed).")
@click.option("--api-key", envvar="OPENAI_API_KEY", default=None, help="With --base-url (default: $OPENAI_API_KEY).")
@click.option("--tasks", required=True,
              help="Comma list of bundled task names, task YAML files or directories of them.")
@click.option("--num-fewshot", type=click.IntRange(0), default=None, help="Override every task's num_fewshot.")
@click.option("--limit", type=float, default=None, help="Only the first N documents of each task (N < 1: a fraction).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--seed", type=int, default=1234, show_default=True, help="Few-shot sampler seed (lm-eval's default).")
@click.option("--log-samples", is_flag=True, help="Also write every document's prompt, answers and scores.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="results.json path.")
def eval_run(model_dir, base_url, model_name, api_key, tasks, num_fewshot, limit, batch_size, seed, log_samples,
             output) -> None:
    """Run lm-evaluation-harness YAML tasks; print a table and write lm-eval's results JSON."""
    from lmkit.errors import LmkitError
    from lmkit.eval.harness.bundled_tasks import resolve_task_files
    from lmkit.eval.harness.evaluator import evaluate_tasks
    from lmkit.eval.harness.results import results_document, results_table
    from lmkit.eval.harness.task_config import load_task_config

    if (model_dir is None) == (base_url is None):
        raise click.UsageError("give exactly one of --model DIR or --base-url URL")
    if limit is not None and limit <= 0:
        raise click.UsageError("--limit must be positive")
    lim = int(limit) if limit is not None and limit >= 1 else limit
    try:
        configs = [load_task_config(p) for p in resolve_task_files(tasks)]
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from None
    t0 = time.perf_counter()
    try:
        if model_dir is not None:
            from lmkit.hub.adapter_folder import require_full_checkpoint
            from lmkit.eval.harness.local_model import LocalLM

            require_full_checkpoint(model_dir, "lmkit eval run")
            model = LocalLM.from_checkpoint(model_dir, batch_size=batch_size)
        else:
            from lmkit.eval.harness.endpoint_model import EndpointLM

            model = EndpointLM(base_url, model_name, api_key)
        results = evaluate_tasks(model, configs, num_fewshot, lim, seed)
    except (LmkitError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    doc = results_document(results, model.name, {"batch_size": batch_size, "limit": limit, "fewshot_seed": seed,
                                                 "num_fewshot": num_fewshot}, log_samples=log_samples)
    doc["total_evaluation_time_seconds"] = str(round(time.perf_counter() - t0, 3))
    click.echo(results_table(doc))
    if output:
        from lmkit.atomic import atomic_write_text

        atomic_write_text(output, json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n")
        click.echo(f"wrote {output}", err=True)


COMMANDS = [eval_group]
