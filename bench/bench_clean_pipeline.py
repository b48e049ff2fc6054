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
3. Clean: `lmkit.data.clean` (unicode NFKC, boilerplate lines, language (keep en and code: the
   text is Python documentation), Gopher quality (alphabetic words >= 60 % instead of 80 %: see
   ALPHA), Gopher repetition, PII masking), then
   `lmkit.data.dedup` (exact + MinHash-LSH near duplicates, t = 0.7), then a datasheet with each
   filter's drop count.
4. Train two identical small Llama-style models (lmkit's Trainer, a BPE tokenizer trained on the
   raw text, the same seed) for the same number of steps x batch x sequence length on raw and on
   cleaned data; report the mean training loss of the last 20 % of steps and the perplexity on
   the held-out clean text.

    OMP_NUM_THREADS=1 python3 bench/bench_clean_pipeline.py [--steps 300] [--seed 0] [--filters ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmkit.corpus import write_corpora
from lmkit.data.clean import CleanPipeline
from lmkit.data.datasheet import build_datasheet, datasheet_markdown, write_datasheet
from lmkit.data.dedup import DedupConfig, deduplicate
from lmkit.data.filters import build_filters
from lmkit.data.records import RecordWriter, iter_records

BOILERPLATE = ["Home | About | Contact | Blog", "This site uses cookies. Accept cookies", "Share on Facebook",
               "© 2024 Example Corp. All rights reserved.", "Click here to subscribe!", "Sign up", "Read more »",
               "Privacy policy", "Skip to main content"]


#: Gopher's "80 % of words hold a letter" counts punctuation tokens as words (as datatrove's spaCy split
#: does); on Python documentation, full of code, the default 0.8 drops 1,095 of 1,911 documents, most
#: of them genuine: the bench asks for 60 % (the run with the default is reported in docs/data.md)
ALPHA = 0.6


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


def junk_lines(doc: str, rng: random.Random) -> str:
    lines = doc.split("\n")
    for _ in range(rng.randint(1, 3)):
        junk = rng.choice([rng.choice(BOILERPLATE), "Contact: jane.doe@example.com, +1 415-555-0132",
                           "zero\u200bwidth\x07 control\x1b[0m characters"])
        lines.insert(rng.randint(0, len(lines)), junk)
    return "\n".join(lines)


def near_copy(doc: str, rng: random.Random) -> str:
    out = []
    for para in doc.split("\n\n"):
        words = para.split(" ")
        if len(words) > 4:
            words[rng.randrange(len(words))] = rng.choice(["value", "object", "result", "item"])
        out.append(" ".join(words))
    return "\n\n".join(out)


def build_corpus(seed: int) -> tuple[list[str], list[str], dict[str, int], dict[str, str]]:
    """(raw training documents, held-out documents, planted counts, {raw text: its kind})."""
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
    kinds = {t: "genuine" for t in train}
    for i in rng.sample(range(n), n // 20):  # junk lines inside 5 % of the documents
        raw[i] = junk_lines(raw[i], rng)
        kinds[raw[i]] = "genuine with junk lines"
    sources = rng.sample(range(n), n // 100)
    planted_dups = []
    for k in range(n // 10):  # 10 % duplicates of 1 % of the documents
        src = train[sources[k % len(sources)]]
        planted_dups.append(src if k % 2 == 0 else near_copy(src, rng))
    planted_junk = [junk_document(rng, vocab) for _ in range(n // 20)]
    for k, d in enumerate(planted_dups):
        kinds[d] = "copied" if k % 2 == 0 else "near copy"  # "copied": the original, then its exact copies
    kinds.update({d: "junk document" for d in planted_junk})
    raw += planted_dups + planted_junk
    rng.shuffle(raw)
    return raw, held, {"documents": n, "held_out": n_held, "duplicates": len(planted_dups), "junk_documents": len(planted_junk),
                       "junk_line_documents": n // 20}, kinds


def accounting(raw: list[str], kinds: dict[str, str], dropped_path: Path, cleaned_path: Path) -> dict[str, dict[str, int]]:
    """Per kind of raw document: how many, dropped by a filter, removed by dedup, kept.

    Raw records carry their index (`id`), which the cleaner and dedup keep; the dropped file
    names each document by its line (`source` = path:line). The first occurrence of an
    exactly copied document is its original ("genuine"); later ones are the copies."""
    dropped = {int(json.loads(line)["source"].rsplit(":", 1)[1]) - 1
               for line in dropped_path.read_text(encoding="utf-8").splitlines()}
    kept = {json.loads(line)["id"] for line in cleaned_path.read_text(encoding="utf-8").splitlines()}
    table: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for i, text in enumerate(raw):
        kind = kinds.get(text, "genuine")
        if kind == "copied":
            kind = "exact copy" if text in seen else "genuine"
        seen.add(text)
        row = table.setdefault(kind, {"documents": 0, "dropped_by_filters": 0, "removed_by_dedup": 0, "kept": 0})
        row["documents"] += 1
        key = "dropped_by_filters" if i in dropped else "kept" if i in kept else "removed_by_dedup"
        row[key] += 1
    return dict(sorted(table.items()))


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=ALPHA, help="Gopher quality: least share of words with a letter.")
    ap.add_argument("--filters", default="unicode,boilerplate,language,gopher_quality,gopher_repetition,pii",
                    help="Cleaning filters in order (include language: the datasheet counts its labels).")
    ap.add_argument("--no-train", action="store_true", help="Clean, dedup and report only.")
    ap.add_argument("--out", default=None, help="Keep the work files here (default: a temporary folder).")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_clean_"))
    work.mkdir(parents=True, exist_ok=True)
    raw, held, planted, kinds = build_corpus(args.seed)
    raw_path, held_path = work / "raw.jsonl", work / "held_out.txt"
    write_jsonl(raw_path, raw)
    held_path.write_text("\n\n".join(held) + "\n", encoding="utf-8")
    print(f"raw: {len(raw)} documents ({planted}); held out: {len(held)} documents")

    t0 = time.perf_counter()
    filters = build_filters(args.filters.split(","),
                            {"language": {"keep": ["en", "code"]}, "gopher_quality": {"max_non_alpha_words_ratio": args.alpha}})
    pipeline = CleanPipeline(filters, progress=False)
    stats = pipeline.run([raw_path], work / "clean", work / "dropped", resume=False)
    dedup_out = work / "cleaned.jsonl"
    with RecordWriter(dedup_out) as writer:
        dedup = deduplicate(lambda: iter_records([work / "clean" / "raw.jsonl"]), writer.write,
                            DedupConfig(mode="both", threshold=0.7), work_dir=str(work))
    clean_seconds = time.perf_counter() - t0
    cleaned = [r.text for r in iter_records([dedup_out])]
    print(f"clean + dedup: {stats.documents_in} -> {stats.documents_out} -> {len(cleaned)} documents "
          f"in {clean_seconds:.1f} s; drops per filter: {stats.drop_counts()}; changed: {stats.changed}; "
          f"dedup removed {dedup.exact_duplicates} exact + {dedup.near_duplicates} near")

    table = accounting(raw, kinds, work / "dropped" / "raw.jsonl.dropped.jsonl", dedup_out)
    print("| raw documents | count | dropped by a filter | removed by dedup | kept |")
    print("|---|---|---|---|---|")
    for kind, row in table.items():
        print(f"| {kind} | {row['documents']} | {row['dropped_by_filters']} | {row['removed_by_dedup']} | {row['kept']} |")

    from lmkit.tokenizers import BPETokenizer

    tok = BPETokenizer.train(raw, vocab_size=2048, special_tokens=["<|endoftext|>"])
    tok_path = work / "tokenizer.lmkit.json"
    tok.save(tok_path)
    sheet = build_datasheet("bench-clean (cleaned)", cleaned, clean_report=pipeline.last_report, dedup_report=dedup,
                            tokenizers={"bpe-2048": tok}, identifier=next(f for f in filters if f.name == "language").identifier,
                            description="bench/corpus/en.txt + 20 % planted duplicates and junk, cleaned and deduplicated")
    write_datasheet(sheet, work / "datasheet")
    print(datasheet_markdown(sheet))

    if args.no_train:
        return
    (work / "raw.txt").write_text("\n\n".join(t.replace("\n\n", "\n") for t in raw) + "\n", encoding="utf-8")
    (work / "cleaned.txt").write_text("\n\n".join(t.replace("\n\n", "\n") for t in cleaned) + "\n", encoding="utf-8")
    results = {}
    for name in ("raw", "cleaned"):
        results[name] = train_and_eval(name, work / f"{name}.txt", held_path, tok_path, work, args.steps, args.seed)
        print(name, json.dumps(results[name]))
    print(f"\nmachine: {platform.machine()}, {platform.python_version()}, torch {torch.__version__}, work dir {work}")
    print("| data | documents | final train loss | held-out loss | held-out ppl | seconds |")
    print("|---|---|---|---|---|---|")
    for name, n_docs in (("raw", len(raw)), ("cleaned", len(cleaned))):
        r = results[name]
        print(f"| {name} | {n_docs} | {r['final_train_loss']:.3f} | {r['held_out_loss']:.3f} | {r['held_out_ppl']:.2f} | {r['seconds']} |")
    print(f"ours/peer: held-out ppl cleaned/raw = {results['cleaned']['held_out_ppl'] / results['raw']['held_out_ppl']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
