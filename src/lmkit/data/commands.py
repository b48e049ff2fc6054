"""CLI: `lmkit data prepare` (corpus -> memmap token shards), `dedup` and `decontaminate`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lmkit.cli_grammar import progress_flags


@click.group("data")
def data_group() -> None:
    """Pretraining data: deduplicate, decontaminate, corpus -> token shards."""


@data_group.command("prepare")
@progress_flags
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-t", "--tokenizer", "tokenizer_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Tokenizer file.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Shard directory to create.")
@click.option("--split-by", type=click.Choice(["line", "paragraph", "file"]), default="line", show_default=True, help="What one document is.")
@click.option("--val-fraction", type=float, default=0.0, show_default=True, help="Fraction of documents held out for validation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Key of the train/validation split.")
@click.option("--workers", type=int, default=1, show_default=True, help="Tokenizer processes.")
@click.option("--eos-token", default=None, help="Special token ending each document (default: guessed, e.g. <|endoftext|>).")
@click.option("--shard-tokens", type=int, default=1 << 28, show_default=True, help="Tokens per shard file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing shard directory.")
def data_prepare(corpus, tokenizer_path, out_dir, split_by, val_fraction, seed, workers, eos_token, shard_tokens, overwrite) -> None:
    """Tokenize CORPUS files/folders into memmap token shards in OUT."""
    from lmkit.data.shards import ShardConfig, prepare_shards

    try:
        cfg = ShardConfig(split_by=split_by, val_fraction=val_fraction, seed=seed, workers=workers, eos_token=eos_token, shard_tokens=shard_tokens)
        index = prepare_shards(list(corpus), tokenizer_path, out_dir, cfg, overwrite=overwrite)
    except ValueError as exc:  # a bad ShardConfig value; an LmkitError is reported by the root group
        raise click.ClickException(str(exc)) from exc
    for split, info in index["splits"].items():
        click.echo(f"{split}: {info['documents']} documents, {info['tokens']} tokens in {len(info['shards'])} shard(s)")
    click.echo(f"wrote {out_dir} ({index['dtype']}, vocab {index['vocab_size']}, eos id {index['eos_id']})")


def _report_path(out: str | None, report: str | None) -> Path:
    if report is not None:
        return Path(report)
    if out is None:
        raise click.UsageError("give -o/--out, --report, or both")
    return Path(out).with_name(Path(out).name + ".report.json")


def _refuse_overwriting_inputs(inputs: tuple[str, ...], *outputs: Path | None) -> None:
    from lmkit.data.shards import corpus_files

    sources = {p.resolve() for p in corpus_files(list(inputs))}
    for out in outputs:
        if out is not None and out.resolve() in sources:
            raise click.UsageError(f"{out} is also an input; write the output somewhere else")


def _write_report(path: Path, report: dict) -> None:
    from lmkit.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


@data_group.command("dedup")
@progress_flags
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Deduplicated output: JSON Lines if it ends in .jsonl, else text.")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Report JSON [default: OUT.report.json].")
@click.option("--mode", type=click.Choice(["exact", "near", "both"]), default="both", show_default=True,
              help="Exact hashing, MinHash-LSH near duplicates, or exact first and then near.")
@click.option("--level", type=click.Choice(["doc", "paragraph"]), default="doc", show_default=True,
              help="Exact dedup of whole documents or of their blank-line paragraphs.")
@click.option("--threshold", type=float, default=0.7, show_default=True, help="Jaccard similarity of near duplicates.")
@click.option("--ngram", type=int, default=5, show_default=True, help="Units per shingle.")
@click.option("--unit", type=click.Choice(["word", "char"]), default="word", show_default=True, help="Shingle unit.")
@click.option("--num-perm", type=int, default=128, show_default=True, help="MinHash permutations.")
@click.option("--bands", type=int, default=None, help="LSH bands (with --rows; default: chosen from the threshold).")
@click.option("--rows", type=int, default=None, help="LSH rows per band.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the MinHash permutations.")
@click.option("--field", default="text", show_default=True, help="Text field of JSON Lines records.")
@click.option("--split-by", type=click.Choice(["line", "paragraph", "file"]), default="line", show_default=True,
              help="What one document of a text file is.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the signature shards [default: the system's temporary folder].")
def data_dedup(inputs, out, report, mode, level, threshold, ngram, unit, num_perm, bands, rows, seed, field, split_by,
               work_dir) -> None:
    """Remove exact and near-duplicate documents from INPUTS (JSON Lines or text files/folders)."""
    from lmkit.data.dedup import DedupConfig, deduplicate
    from lmkit.data.records import RecordWriter, iter_records

    out_path, report_path = Path(out), _report_path(out, report)
    _refuse_overwriting_inputs(inputs, out_path, report_path)
    cfg = DedupConfig(mode=mode, level=level, threshold=threshold, ngram=ngram, unit=unit, num_perm=num_perm,
                      seed=seed, bands=bands, rows=rows)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with RecordWriter(out_path, split_by) as writer:
        result = deduplicate(lambda: iter_records(list(inputs), field, split_by), writer.write, cfg,
                             work_dir=work_dir, field_name=field)
    _write_report(report_path, result.to_dict())
    paragraphs = f", {result.paragraphs_removed} of {result.paragraphs} paragraphs" if level == "paragraph" else ""
    click.echo(f"{result.documents} documents: {result.exact_duplicates} exact and {result.near_duplicates} near "
               f"duplicates removed ({100 * result.duplicate_rate:.2f} %){paragraphs}, {result.clusters} clusters; "
               f"kept {result.kept} in {out_path}; report {report_path}")


@data_group.command("decontaminate")
@progress_flags
@click.argument("train", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-e", "--eval", "eval_files", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Evaluation set (JSON Lines or one item per line); repeat for several.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="Cleaned training data (JSON Lines if it ends in .jsonl, else text).")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Report JSON [default: OUT.report.json].")
@click.option("--report-only", is_flag=True, help="Only report what overlaps; write no cleaned data.")
@click.option("--ngram", type=int, default=13, show_default=True, help="N-gram size (shorter items: their length).")
@click.option("--min-words", type=int, default=5, show_default=True, help="Items with fewer words are left out.")
@click.option("--shingle", type=int, default=5, show_default=True, help="Shingle size of the containment and MinHash checks.")
@click.option("--containment", type=float, default=0.5, show_default=True,
              help="Share of an item's shingles found in one document that flags it.")
@click.option("--threshold", type=float, default=0.7, show_default=True, help="MinHash Jaccard similarity that flags a document.")
@click.option("--num-perm", type=int, default=128, show_default=True, help="MinHash permutations.")
@click.option("--field", default="text", show_default=True, help="Text field of training JSON Lines records.")
@click.option("--eval-field", default=None, help="Text field of evaluation records [default: text, else all strings].")
@click.option("--split-by", type=click.Choice(["line", "paragraph", "file"]), default="line", show_default=True,
              help="What one document of a training text file is.")
def data_decontaminate(train, eval_files, out, report, report_only, ngram, min_words, shingle, containment, threshold,
                       num_perm, field, eval_field, split_by) -> None:
    """Find evaluation items in the TRAIN data; write the training documents that contain none."""
    from lmkit.data.decontaminate import DecontamConfig, decontaminate, read_eval_set
    from lmkit.data.records import RecordWriter, iter_records

    if out is None and not report_only:
        raise click.UsageError("give -o/--out for the cleaned data, or --report-only with --report")
    out_path = None if report_only or out is None else Path(out)
    report_path = _report_path(out, report)
    _refuse_overwriting_inputs(train + tuple(eval_files), out_path, report_path)
    cfg = DecontamConfig(ngram=ngram, min_words=min_words, shingle=shingle, containment=containment,
                         threshold=threshold, num_perm=num_perm)
    eval_sets: dict[str, list[str]] = {}
    for path in eval_files:
        name = Path(path).stem
        while name in eval_sets:
            name += "_"
        eval_sets[name] = read_eval_set(path, eval_field)
    records = lambda: iter_records(list(train), field, split_by)  # noqa: E731
    if out_path is None:
        result = decontaminate(records, eval_sets, None, cfg, remove=False)
    else:
        with RecordWriter(out_path, split_by) as writer:
            result = decontaminate(records, eval_sets, writer.write, cfg)
    _write_report(report_path, result.to_dict())
    for name, info in result.eval_sets.items():
        click.echo(f"{name}: {info['contaminated_items']} of {info['items']} items found in training data "
                   f"({info['too_short']} too short to check)")
    where = f"kept {result.kept} in {out_path}" if out_path else "nothing removed (--report-only)"
    click.echo(f"{result.documents} training documents, {result.contaminated_documents} contain evaluation items; "
               f"{where}; report {report_path}")


COMMANDS: list[click.Command] = [data_group]
