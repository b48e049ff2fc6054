"""CLI: `lmkit data prepare` (corpus -> memmap token shards), `clean`, `dedup`, `decontaminate`,
`augment`, `mix` and `stats`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lmkit.cli_grammar import progress_flags


@click.group("data")
def data_group() -> None:
    """Pretraining and fine-tuning data: clean, deduplicate, decontaminate, augment, mix, datasheets, token shards."""


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


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@data_group.command("clean")
@progress_flags
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the cleaned shards (one per input file), their state files and clean_report.json.")
@click.option("--preset", type=click.Choice(["web", "docs"]), default="web", show_default=True,
              help="Thresholds for a kind of corpus: web (datatrove's Gopher defaults) or docs (prose mixed with code).")
@click.option("--filters", "filter_names", default=None,
              help="Filters in order: unicode, boilerplate, language, gopher_quality, gopher_repetition, c4, pii "
                   "[default: the preset's: unicode,boilerplate,language,gopher_quality,gopher_repetition,pii].")
@click.option("--dropped", "dropped_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for what was dropped and why (SHARD.dropped.jsonl).")
@click.option("--languages", default=None, help="Labels the language filter keeps (en, zh, code) [default: web en,zh; docs en,zh,code].")
@click.option("--min-confidence", type=float, default=0.5, show_default=True, help="Language filter: least confidence.")
@click.option("--form", type=click.Choice(["NFC", "NFKC", "none"]), default="NFKC", show_default=True, help="Unicode normal form.")
@click.option("--pii", "pii_kinds", default="email,ip,id,phone", show_default=True, help="PII kinds to mask.")
@click.option("--no-resume", is_flag=True, help="Redo every shard, even those a previous run finished.")
@click.option("--field", default="text", show_default=True, help="Text field of JSON Lines / Parquet records.")
@click.option("--split-by", type=click.Choice(["line", "paragraph", "file"]), default="paragraph", show_default=True,
              help="What one document of a text file is.")
def data_clean(inputs, out_dir, preset, filter_names, dropped_dir, languages, min_confidence, form, pii_kinds, no_resume,
               field, split_by) -> None:
    """Clean INPUTS (JSON Lines, text or Parquet files/folders) through quality filters into OUT."""
    from lmkit.data.clean import CleanPipeline
    from lmkit.data.filters import preset_filters

    language = {"min_confidence": min_confidence, **({"keep": _csv(languages)} if languages else {})}
    options = {"unicode": {"form": form}, "language": language, "pii": {"kinds": _csv(pii_kinds)}}
    filters = preset_filters(preset, _csv(filter_names) or None, options)
    out = Path(out_dir)
    _refuse_overwriting_inputs(inputs, *(out / p.name for p in _input_files(inputs)))
    pipeline = CleanPipeline(filters, field, split_by)
    stats = pipeline.run(list(inputs), out, dropped_dir, resume=not no_resume)
    report = pipeline.last_report
    drops = ", ".join(f"{k} {v}" for k, v in stats.drop_counts().items()) or "none"
    click.echo(f"{stats.documents_in} documents in, {stats.documents_out} kept ({report['shards_skipped']} of "
               f"{report['shards']} shards already done); dropped: {drops}; report {out / 'clean_report.json'}")


def _input_files(inputs) -> list[Path]:
    from lmkit.data.shards import corpus_files

    return corpus_files(list(inputs))


@data_group.command("augment")
@progress_flags
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Augmented JSON Lines.")
@click.option("--num-aug", type=int, default=4, show_default=True, help="Augmented copies per example.")
@click.option("--ops", default="sr,ri,rs,rd", show_default=True, help="EDA operations: sr, ri, rs, rd, mask, shuffle.")
@click.option("--alpha", type=float, default=0.1, show_default=True, help="Share of words each operation changes.")
@click.option("--mask-token", default="<mask>", show_default=True, help="Token of span masking.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--field", default="text", show_default=True, help="Text field (every other field, e.g. the label, is kept).")
@click.option("--no-original", is_flag=True, help="Write only the augmented copies.")
def data_augment(input_path, out, num_aug, ops, alpha, mask_token, seed, field, no_original) -> None:
    """EDA-augment the JSON Lines examples of INPUT_PATH, keeping their labels."""
    from lmkit.data.augment import EDAConfig, EDAugmenter
    from lmkit.jsonl import iter_jsonl
    from lmkit.progress import Progress

    out_path = Path(out)
    _refuse_overwriting_inputs((input_path,), out_path)
    cfg = EDAConfig(alpha_sr=alpha, alpha_ri=alpha, alpha_rs=alpha, p_rd=alpha, alpha_mask=max(alpha, 0.01),
                    mask_token=mask_token, num_aug=num_aug, operations=tuple(_csv(ops)), seed=seed,
                    keep_original=not no_original)
    from lmkit.atomic import atomic_write_text

    records = [obj for _, obj in iter_jsonl(input_path)]
    augmenter, lines = EDAugmenter(cfg), []
    for rec in augmenter.augment_records(Progress(total=len(records), desc="augment", unit="example").track(records), field):
        lines.append(json.dumps(rec, ensure_ascii=False))

    atomic_write_text(out_path, "\n".join(lines) + ("\n" if lines else ""))
    click.echo(f"{len(records)} examples -> {len(lines)} in {out_path}")


@data_group.command("mix")
@progress_flags
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Mixed JSON Lines.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="p_i ∝ n_i^(1/T); inf = uniform.")
@click.option("--samples", type=int, default=None, help="Examples to draw [default: all sources' total].")
@click.option("--balance", type=click.Choice(["none", "over", "under"]), default="none", show_default=True,
              help="Then over- or under-sample the classes of --label-field to equal counts.")
@click.option("--label-field", default="label", show_default=True)
@click.option("--field", default="text", show_default=True, help="Text field of text sources' records.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_mix(sources, out, temperature, samples, balance, label_field, field, seed) -> None:
    """Mix NAME=PATH SOURCES (JSON Lines or text) by temperature sampling into one JSON Lines file."""
    from lmkit.atomic import atomic_write_text
    from lmkit.data.balance import resample
    from lmkit.data.mixture import MixtureDataset
    from lmkit.data.records import iter_records

    named: dict[str, list[dict]] = {}
    for spec in sources:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).exists():
            raise click.UsageError(f"{spec!r}: give each source as NAME=PATH to an existing file or folder")
        named[name] = [r.obj if r.obj is not None else {field: r.text} for r in iter_records([path], field)]
    mix = MixtureDataset(named, temperature=temperature, samples_per_epoch=samples, seed=seed, with_source=True)
    drawn = list(iter(mix))
    if balance != "none":
        labels = [d.get(label_field) for d in drawn]
        drawn = resample(drawn, labels, balance, seed)
    counts: dict[str, int] = {}
    for d in drawn:
        counts[d["source"]] = counts.get(d["source"], 0) + 1
    _refuse_overwriting_inputs(tuple(s.partition("=")[2] for s in sources), Path(out))
    atomic_write_text(out, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in drawn))
    shares = ", ".join(f"{k} {mix.weights[k]:.3f} ({counts.get(k, 0)})" for k in mix.names)
    click.echo(f"{len(drawn)} examples in {out}; p(source) (drawn): {shares}")


@data_group.command("stats")
@progress_flags
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", "prefix", required=True, type=click.Path(dir_okay=False),
              help="Datasheet prefix: writes PREFIX.md and PREFIX.json.")
@click.option("--name", default=None, help="Dataset name [default: the prefix's name].")
@click.option("-t", "--tokenizer", "tokenizer_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Count tokens with this tokenizer; repeat for several.")
@click.option("--clean-report", type=click.Path(exists=True, dir_okay=False), default=None, help="clean_report.json of `lmkit data clean`.")
@click.option("--dedup-report", type=click.Path(exists=True, dir_okay=False), default=None, help="Report of `lmkit data dedup`.")
@click.option("--contamination-report", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Report of `lmkit data decontaminate`.")
@click.option("--no-languages", is_flag=True, help="Skip language identification.")
@click.option("--field", default="text", show_default=True)
@click.option("--split-by", type=click.Choice(["line", "paragraph", "file"]), default="paragraph", show_default=True)
def data_stats(inputs, prefix, name, tokenizer_paths, clean_report, dedup_report, contamination_report, no_languages,
               field, split_by) -> None:
    """Write a datasheet (Markdown + JSON) of INPUTS: sizes, languages, filters, duplicates, contamination, tokens."""
    from lmkit.data.datasheet import build_datasheet, write_datasheet
    from lmkit.data.filters import default_identifier
    from lmkit.data.records import iter_records
    from lmkit.progress import Progress
    from lmkit.tokenizers.loading import load_tokenizer

    tokenizers = {Path(p).name: load_tokenizer(p) for p in tokenizer_paths}
    records = (r.text for r in iter_records(list(inputs), field, split_by))
    with Progress(desc="stats", unit="doc", progress=None) as bar:
        def counted():
            for text in records:
                yield text
                bar.update(1)
        sheet = build_datasheet(name or Path(prefix).name, counted(), clean_report=clean_report, dedup_report=dedup_report,
                                contamination_report=contamination_report, tokenizers=tokenizers,
                                identifier=None if no_languages else default_identifier())
    md, js = write_datasheet(sheet, prefix)
    s = sheet["sizes"]
    click.echo(f"{s['documents']} documents, {s['characters']} characters; datasheet {md} and {js}")


COMMANDS: list[click.Command] = [data_group]
