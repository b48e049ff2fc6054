#!/usr/bin/env python3
"""Cleaning pays: raw vs cleaned data, same model, same token budget (issue 19).

1. Documents: bench/corpus/en.txt (`lmkit.corpus`, the quickstart's text), its blank-line
   paragraphs grouped six at a time. 5 % of the documents are held out (clean held-out text).
2. Raw training set: the rest plus 20 % planted junk (counted in documents):
   * 10 % duplicates: 1 % of the documents copied ~10 times each, half exactly, half with one
     word changed per paragraph (near copies);
   * 5 % junk documents: cookie/navigation boilerplate pages, keyword spam (one phrase
     repeated), symbol garbage, lorem-ipsum filler, bullet lists of links;
   * 5 % of the documents get junk lines inside them: boilerplate lines, control and
     zero-width characters, e-mail addresses and phone numbers.
3. Clean with each `--preset` (`lmkit.data.filters.presets`; default `docs`, for prose mixed
   with code): unicode NFKC, boilerplate lines, language, Gopher quality, Gopher repetition, PII
   masking, then `lmkit.data.dedup` (exact + MinHash-LSH near duplicates, `--threshold`), then a
   datasheet with each filter's drop count. The accounting gives, per kind of raw document, what
   the filters dropped, what dedup removed and what was kept, the recall of the planted junk and
   the share of the genuine text kept.
4. Train identical small Llama-style models (lmkit's Trainer, a BPE tokenizer trained on the
   raw text, the same seed) for the same number of steps x batch x sequence length on the raw
   and on each cleaned set; report the mean training loss of the last 20 % of steps and the
   perplexity on the held-out clean text (the same for every arm).

    OMP_NUM_THREADS=1 python3 bench/bench_clean_pipeline.py [--steps 300] [--seed 0] [--preset docs,web] [--json r0.json] [--out DIR]
    python3 bench/bench_clean_pipeline.py --summary r0.json r1.json r2.json     # mean ± sd over seeds
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmkit.corpus import write_corpora
from lmkit.data.clean import CleanPipeline
from lmkit.data.datasheet import build_datasheet, datasheet_markdown, write_datasheet
from lmkit.data.dedup import DedupConfig, deduplicate
from lmkit.data.filters import preset_filters
from lmkit.data.records import RecordWriter, iter_records

BOILERPLATE = ["Home | About | Contact | Blog", "This site uses cookies. Accept cookies", "Share on Facebook",
               "© 2024 Example Corp. All rights reserved.", "Click here to subscribe!", "Sign up", "Read more »",
               "Privacy policy", "Skip to main content"]


def junk_document(rng: random.Random, vocab: list[str]) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return "\n".join(rng.choice(BOILERPLATE) for _ in range(rng.randint(5, 12)))
    if kind == 1:
        phrase = " ".join(rng.sample(vocab, 3))
        return " ".join([phrase] * rng.randint(30, 80)) + "."
    if kind == 2:
        return "\n".join("".join(rng.choice("#@$%^&*{}[]<>|~=+-_/\\0123456789") for _ in range(rng.randint(20, 60)))
                         for _ in range(rng.randint(3, 10)))
    if kind == 3:
        return ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
                "et dolore magna aliqua. ") * rng.randint(3, 8)
    return "\n".join(f"- http://example.com/{rng.choice(vocab)}/{rng.randint(1, 999)}" for _ in range(rng.randint(8, 20)))


JUNK_LINES = ("boilerplate", "pii", "control")
PII_LINE = "Contact: jane.doe@example.com, +1 415-555-0132"
CONTROL_LINE = "zero\u200bwidth\x07 control\x1b[0m characters"


def junk_lines(doc: str, rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """`doc` with 1-3 junk lines inserted, and the (kind, line) planted."""
    lines = doc.split("\n")
    planted = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(JUNK_LINES)
        junk = {"boilerplate": rng.choice(BOILERPLATE), "pii": PII_LINE, "control": CONTROL_LINE}[kind]
        lines.insert(rng.randint(0, len(lines)), junk)
        planted.append((kind, junk))
    return "\n".join(lines), planted


def near_copy(doc: str, rng: random.Random) -> str:
    out = []
    for para in doc.split("\n\n"):
        words = para.split(" ")
        if len(words) > 4:
            words[rng.randrange(len(words))] = rng.choice(["value", "object", "result", "item"])
        out.append(" ".join(words))
    return "\n\n".join(out)


@dataclass
class Planted:
    """What one raw document is: `kind` (genuine, genuine with junk lines, exact copy, near copy,
    junk document), `family` (the index of the genuine document a copy copies, else its own
    index among the genuine ones; -1 for junk) and the junk lines planted in it."""

    kind: str
    family: int
    lines: list[tuple[str, str]] = field(default_factory=list)


def build_corpus(seed: int) -> tuple[list[str], list[str], dict[str, int], list[Planted]]:
    """(raw training documents, held-out documents, planted counts, what each raw document is)."""
    text = (write_corpora(Path(__file__).resolve().parent / "corpus") / "en.txt").read_text(encoding="utf-8")
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    docs = ["\n\n".join(paras[i:i + 6]) for i in range(0, len(paras), 6)]
    rng = random.Random(seed)
    rng.shuffle(docs)
    n_held = len(docs) // 20
    held, train = docs[:n_held], docs[n_held:]
    n = len(train)
    vocab = sorted({w for d in train[:200] for w in d.split() if w.isalpha() and len(w) > 3})
    raw = list(train)
    meta = [Planted("genuine", i) for i in range(n)]
    for i in rng.sample(range(n), n // 20):  # junk lines inside 5 % of the documents
        raw[i], lines = junk_lines(raw[i], rng)
        meta[i] = Planted("genuine with junk lines", i, lines)
    sources = rng.sample(range(n), n // 100)
    for k in range(n // 10):  # 10 % duplicates of 1 % of the documents
        src = sources[k % len(sources)]
        exact = k % 2 == 0
        raw.append(train[src] if exact else near_copy(train[src], rng))  # a copy of the original, not of its junk lines
        meta.append(Planted("exact copy" if exact else "near copy", src))
    for _ in range(n // 20):
        raw.append(junk_document(rng, vocab))
        meta.append(Planted("junk document", -1))
    order = list(range(len(raw)))
    rng.shuffle(order)
    raw, meta = [raw[i] for i in order], [meta[i] for i in order]
    return raw, held, {"documents": n, "held_out": n_held, "duplicates": n // 10, "junk_documents": n // 20,
                       "junk_line_documents": n // 20}, meta


def accounting(raw: list[str], meta: list[Planted], dropped_path: Path, cleaned_path: Path) -> dict[str, Any]:
    """Where each kind of raw document went (dropped by a filter, removed by dedup, kept), the
    recall of the planted junk and the share of the genuine text kept.

    Raw records carry their index (`id`), which the cleaner and dedup keep; the dropped file
    names each document by its line (`source` = path:line). A genuine document counts as kept
    when it or one of its copies is kept (dedup keeps the first of a family, which may be a
    copy); a family's copies beyond the one kept are the planted duplicates."""
    dropped = {int(json.loads(line)["source"].rsplit(":", 1)[1]) - 1
               for line in dropped_path.read_text(encoding="utf-8").splitlines()}
    kept = {r["id"]: r["text"] for r in map(json.loads, cleaned_path.read_text(encoding="utf-8").splitlines())}
    table: dict[str, dict[str, int]] = {}
    for i, m in enumerate(meta):
        row = table.setdefault(m.kind, {"documents": 0, "dropped_by_filters": 0, "removed_by_dedup": 0, "kept": 0})
        row["documents"] += 1
        row["dropped_by_filters" if i in dropped else "kept" if i in kept else "removed_by_dedup"] += 1
    families: dict[int, list[int]] = {}
    for i, m in enumerate(meta):
        if m.family >= 0:
            families.setdefault(m.family, []).append(i)
    genuine_chars = sum(len(raw[i]) for i, m in enumerate(meta) if m.kind.startswith("genuine"))
    kept_families = [f for f, members in families.items() if any(i in kept for i in members)]
    kept_chars = sum(max(len(raw[i]) for i in families[f] if meta[i].kind.startswith("genuine")) for f in kept_families)
    copies = sum(len(members) - 1 for members in families.values())
    copies_removed = sum(len(members) - max(1, sum(i in kept for i in members)) for members in families.values())
    junk = [i for i, m in enumerate(meta) if m.kind == "junk document"]
    lines = {kind: [0, 0] for kind in JUNK_LINES}  # kind -> [planted in kept documents, gone from them]
    for i, m in enumerate(meta):
        for kind, line in m.lines:
            if i in kept:
                lines[kind][0] += 1
                text = kept[i]
                gone = {"boilerplate": line not in text, "pii": "@example.com" not in text and "555-0132" not in text,
                        "control": not any(c in text for c in "\u200b\x07\x1b")}[kind]
                lines[kind][1] += gone
    return {"table": dict(sorted(table.items())),
            "genuine_documents_kept": len(kept_families) / len(families),
            "genuine_chars_kept": kept_chars / genuine_chars,
            "junk_documents_removed": sum(i not in kept for i in junk) / len(junk),
            "duplicates_removed": copies_removed / copies,
            "junk_lines_removed": {k: v[1] / v[0] if v[0] else float("nan") for k, v in lines.items()}}


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t, "id": i}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")


def train_and_eval(name: str, corpus: Path, held: Path, tok_path: Path, work: Path, steps: int, seed: int) -> dict:
    from lmkit.data.packing import PackedDataset, PackedLoader
    from lmkit.data.shards import ShardConfig, TokenShards, load_tokenizer, prepare_shards
    from lmkit.models.build import build_model
    from lmkit.train import TrainConfig, Trainer, set_seed
    from lmkit.train.pretrain import resolve_model_config

    tok = load_tokenizer(str(tok_path))
    seq, batch = 128, 16
    shards = work / f"shards-{name}"
    info = prepare_shards([corpus], tok, shards, ShardConfig(split_by="paragraph", val_fraction=0.0, seed=seed),
                          overwrite=True, progress=False)
    held_shards = work / "shards-held"
    if not held_shards.exists():
        prepare_shards([held], tok, held_shards, ShardConfig(split_by="paragraph", val_fraction=0.0, seed=seed),
                       overwrite=True, progress=False)
    train_data = PackedLoader(PackedDataset(TokenShards(shards, "train"), seq), batch, shuffle=True, seed=seed)
    eval_data = PackedLoader(PackedDataset(TokenShards(held_shards, "train"), seq), batch, shuffle=False, drop_last=False)
    mcfg = resolve_model_config("llama-tiny", "clm", tok.vocab_size, seq)
    set_seed(seed)
    model = build_model(mcfg)
    cfg = TrainConfig(max_steps=steps, lr=3e-3, warmup_steps=max(1, steps // 10), schedule="cosine", min_lr_ratio=0.1,
                      weight_decay=0.1, out_dir=str(work / f"run-{name}"), progress=False, seed=seed, eval_steps=0,
                      log_every=1)
    start = time.perf_counter()
    trainer = Trainer(model, cfg, train_data, eval_data)
    history = trainer.train()
    losses = [r["loss"] for r in history if "loss" in r]
    tail = losses[-max(1, len(losses) // 5):]
    result = trainer.evaluate()
    return {"train_tokens": info["splits"]["train"]["tokens"],
            "budget_tokens": steps * batch * seq, "final_train_loss": sum(tail) / len(tail),
            "held_out_loss": result["eval_loss"], "held_out_ppl": math.exp(result["eval_loss"]),
            "seconds": round(time.perf_counter() - start, 1)}


def clean_and_dedup(raw: list[str], meta: list[Planted], work: Path, preset: str, filter_names: str | None,
                    alpha: float | None, threshold: float) -> tuple[list[str], dict[str, Any]]:
    """Clean + dedup the raw documents under `work`; (cleaned texts, counts and accounting)."""
    work.mkdir(parents=True, exist_ok=True)
    raw_path = work / "raw.jsonl"
    write_jsonl(raw_path, raw)
    t0 = time.perf_counter()
    overrides = {"gopher_quality": {"max_non_alpha_words_ratio": alpha}} if alpha is not None else {}
    filters = preset_filters(preset, filter_names.split(",") if filter_names else None, overrides)
    pipeline = CleanPipeline(filters, progress=False)
    stats = pipeline.run([raw_path], work / "clean", work / "dropped", resume=False)
    dedup_out = work / "cleaned.jsonl"
    with RecordWriter(dedup_out) as writer:
        dedup = deduplicate(lambda: iter_records([work / "clean" / "raw.jsonl"]), writer.write,
                            DedupConfig(mode="both", threshold=threshold), work_dir=str(work), progress=False)
    seconds = time.perf_counter() - t0
    cleaned = [r.text for r in iter_records([dedup_out])]
    print(f"[{preset}] clean + dedup: {stats.documents_in} -> {stats.documents_out} -> {len(cleaned)} documents "
          f"in {seconds:.1f} s; drops per filter: {stats.drop_counts()}; changed: {stats.changed}; "
          f"dedup removed {dedup.exact_duplicates} exact + {dedup.near_duplicates} near")
    acc = accounting(raw, meta, work / "dropped" / "raw.jsonl.dropped.jsonl", dedup_out)
    print("| raw documents | count | dropped by a filter | removed by dedup | kept |")
    print("|---|---|---|---|---|")
    for kind, row in acc["table"].items():
        print(f"| {kind} | {row['documents']} | {row['dropped_by_filters']} | {row['removed_by_dedup']} | {row['kept']} |")
    lines = ", ".join(f"{k} {v:.1%}" for k, v in acc["junk_lines_removed"].items())
    print(f"genuine kept: {acc['genuine_documents_kept']:.1%} of documents, {acc['genuine_chars_kept']:.1%} of characters; "
          f"planted junk removed: documents {acc['junk_documents_removed']:.1%}, duplicates {acc['duplicates_removed']:.1%}, "
          f"junk lines (in kept documents) {lines}")
    identifier = next((f.identifier for f in filters if f.name == "language"), None)
    return cleaned, {"pipeline": pipeline, "dedup": dedup, "identifier": identifier, "accounting": acc,
                     "drop_counts": stats.drop_counts(), "documents": len(cleaned)}


def summarize(paths: list[str]) -> None:
    """Mean and standard deviation over the seeds of `--json` result files."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    print(f"{len(runs)} seeds: {[r['seed'] for r in runs]}, {runs[0]['steps']} steps")

    def ms(values: list[float], fmt: str = ".3f") -> str:
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:{fmt}} ± {sd:{fmt}}"

    print("| data | documents | tokens | final train loss | held-out loss | held-out ppl | ppl / raw ppl (per seed) |")
    print("|---|---|---|---|---|---|---|")
    for arm in runs[0]["arms"]:
        rs = [r["arms"][arm] for r in runs]
        ratios = [r["arms"][arm]["held_out_ppl"] / r["arms"]["raw"]["held_out_ppl"] for r in runs]
        print(f"| {arm} | {ms([x['documents'] for x in rs], '.0f')} | {ms([x['train_tokens'] for x in rs], '.0f')} | "
              f"{ms([x['final_train_loss'] for x in rs])} | {ms([x['held_out_loss'] for x in rs])} | "
              f"{ms([x['held_out_ppl'] for x in rs], '.2f')} | {ms(ratios)} ({', '.join(f'{q:.3f}' for q in ratios)}) |")
    for arm in runs[0]["arms"]:
        if arm == "raw":
            continue
        for key, label in (("final_train_loss", "final train loss"), ("held_out_loss", "held-out loss")):
            diffs = [r["arms"]["raw"][key] - r["arms"][arm][key] for r in runs]
            print(f"{arm}: raw - cleaned {label} {ms(diffs)}, lower on {sum(d > 0 for d in diffs)} of {len(diffs)} seeds")
    for arm in runs[0].get("cleaning", {}):
        accs = [r["cleaning"][arm] for r in runs]
        lines = {k: ms([a["junk_lines_removed"][k] for a in accs]) for k in JUNK_LINES}
        print(f"{arm}: genuine documents kept {ms([a['genuine_documents_kept'] for a in accs])}, characters "
              f"{ms([a['genuine_chars_kept'] for a in accs])}; junk documents removed "
              f"{ms([a['junk_documents_removed'] for a in accs])}; duplicates removed {ms([a['duplicates_removed'] for a in accs])}; "
              f"junk lines gone from kept documents {lines}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="docs",
                    help="Cleaning presets to compare, comma-separated (web, docs); each is one cleaned arm.")
    ap.add_argument("--alpha", type=float, default=None, help="Override Gopher quality's least share of words with a letter.")
    ap.add_argument("--filters", default=None,
                    help="Cleaning filters in order (default: the preset's; include language: the datasheet counts its labels).")
    ap.add_argument("--threshold", type=float, default=0.7, help="MinHash-LSH near-duplicate threshold.")
    ap.add_argument("--no-train", action="store_true", help="Clean, dedup and report only.")
    ap.add_argument("--out", default=None, help="Keep the work files here (default: a temporary folder).")
    ap.add_argument("--json", default=None, help="Write the figures of this seed here.")
    ap.add_argument("--summary", nargs="+", default=None, help="Only print mean ± sd over these --json files.")
    args = ap.parse_args()
    if args.summary:
        return summarize(args.summary)
    torch.set_num_threads(1)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_clean_"))
    work.mkdir(parents=True, exist_ok=True)
    raw, held, planted, meta = build_corpus(args.seed)
    held_path = work / "held_out.txt"
    held_path.write_text("\n\n".join(held) + "\n", encoding="utf-8")
    print(f"raw: {len(raw)} documents ({planted}); held out: {len(held)} documents")

    from lmkit.tokenizers import BPETokenizer

    tok = BPETokenizer.train(raw, vocab_size=2048, special_tokens=["<|endoftext|>"])
    tok_path = work / "tokenizer.lmkit.json"
    tok.save(tok_path)
    arms: dict[str, list[str]] = {"raw": raw}
    cleaning: dict[str, dict[str, Any]] = {}
    for preset in args.preset.split(","):
        name = f"cleaned-{preset}"
        cleaned, info = clean_and_dedup(raw, meta, work / name, preset, args.filters, args.alpha, args.threshold)
        arms[name] = cleaned
        cleaning[name] = info["accounting"]
        sheet = build_datasheet(f"bench-clean ({name})", cleaned, clean_report=info["pipeline"].last_report,
                                dedup_report=info["dedup"], tokenizers={"bpe-2048": tok}, identifier=info["identifier"],
                                description=f"bench/corpus/en.txt + 20 % planted duplicates and junk, preset {preset}, "
                                            f"cleaned and deduplicated (t = {args.threshold})")
        write_datasheet(sheet, work / name / "datasheet")
        print(datasheet_markdown(sheet))
    result: dict[str, Any] = {"seed": args.seed, "steps": args.steps, "preset": args.preset, "threshold": args.threshold,
                              "cleaning": cleaning, "arms": {}}
    if not args.no_train:
        for name, texts in arms.items():
            path = work / f"{name}.txt"
            path.write_text("\n\n".join(t.replace("\n\n", "\n") for t in texts) + "\n", encoding="utf-8")
            r = train_and_eval(name, path, held_path, tok_path, work, args.steps, args.seed)
            result["arms"][name] = {"documents": len(texts), **r}
            print(name, json.dumps(result["arms"][name]))
        print(f"\nmachine: {platform.machine()}, {platform.python_version()}, torch {torch.__version__}, work dir {work}")
        print("| data | documents | tokens | final train loss | held-out loss | held-out ppl | seconds |")
        print("|---|---|---|---|---|---|---|")
        for name, r in result["arms"].items():
            print(f"| {name} | {r['documents']} | {r['train_tokens']} | {r['final_train_loss']:.3f} | {r['held_out_loss']:.3f} | "
                  f"{r['held_out_ppl']:.2f} | {r['seconds']} |")
        for name in arms:
            if name != "raw":
                print(f"held-out ppl {name}/raw = {result['arms'][name]['held_out_ppl'] / result['arms']['raw']['held_out_ppl']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
