"""Retrieval quality over the Chinese notes shipped with lmkit (lmkit.corpus.notes_dir()): hit@1, hit@5, MRR, nDCG@5 of
BM25, dense (all-MiniLM-L6-v2), hybrid (RRF k=60) and hybrid + rerank, on our QA set
bench/data/notes_qa.jsonl (77 paraphrased questions, each with its gold section(s)).

    OMP_NUM_THREADS=1 python3 bench/bench_rag_notes.py [--index DIR]

A quality figure (no timing lock needed). The last line compares hybrid hit@5 with the
acceptance target 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default=None, help="existing index of the notes (built by `lmkit rag index`)")
    ap.add_argument("--qa", default=str(ROOT / "bench" / "data" / "notes_qa.jsonl"))
    ap.add_argument("--chunk-size", type=int, default=600)
    ap.add_argument("--chunk-overlap", type=int, default=80)
    args = ap.parse_args()

    from lmkit.corpus import notes_dir
    from lmkit.rag.bm25 import BM25
    from lmkit.rag.embedder import EncoderEmbedder
    from lmkit.rag.evaluate import evaluate_retrieval, index_chunks
    from lmkit.rag.index import RagIndex
    from lmkit.rag.loaders import load_directory
    from lmkit.rag.rerank import BiEncoderReranker
    from lmkit.rag.split_markdown import MarkdownHeaderSplitter

    emb = EncoderEmbedder()
    t0 = time.perf_counter()
    if args.index and (Path(args.index) / "index.json").exists():
        idx = RagIndex.open(args.index, embedder=emb)
    else:
        out = args.index or tempfile.mkdtemp(prefix="notes-index-")
        docs, report = load_directory(notes_dir())
        chunks = MarkdownHeaderSplitter(args.chunk_size, args.chunk_overlap).split_documents(docs)
        idx = RagIndex.create(out, emb)
        idx.add_documents(chunks)
        idx.save()
    build_s = time.perf_counter() - t0
    records = [json.loads(line) for line in open(args.qa, encoding="utf-8") if line.strip()]
    chunks = index_chunks(idx)
    print(f"{len(records)} questions, {len(chunks)} chunks, index ready in {build_s:.1f} s")

    words_only = BM25(cjk_bigrams=False)
    words_only.add(idx.bm25.ids, [h.text for h in idx.store.get(idx.bm25.ids)])
    bienc = BiEncoderReranker(emb, idx.store)

    def run(name, retrieve):
        t = time.perf_counter()
        m = evaluate_retrieval(retrieve, records, chunks, k=5)
        ms = 1000 * (time.perf_counter() - t) / len(records)
        print(f"| {name} | {m['hit@1']:.3f} | {m['hit@5']:.3f} | {m['mrr']:.3f} | {m['ndcg@5']:.3f} | "
              f"{m['recall@5']:.3f} | {ms:.0f} |")
        return m

    print("| retriever | hit@1 | hit@5 | MRR | nDCG@5 | recall@5 | ms/query |")
    print("|---|---|---|---|---|---|---|")
    run("BM25, words only (lmkit max-prob segmenter)", lambda q: [i for i, _ in words_only.search(q, 20)])
    run("BM25, words + CJK bigrams (default)", lambda q: [h.id for h in idx.retrieve(q, 20, mode="bm25")])
    run("dense (all-MiniLM-L6-v2, exact)", lambda q: [h.id for h in idx.retrieve(q, 20, mode="dense")])
    hyb = run("hybrid (RRF k=60)", lambda q: [h.id for h in idx.retrieve(q, 20, mode="hybrid")])
    run("hybrid + rerank (MiniLM bi-encoder over top 20)",
        lambda q: [h.id for h in idx.retrieve(q, 20, mode="hybrid", candidates=20, reranker=bienc)])
    print(f"hybrid hit@5 / target 0.8: {hyb['hit@5'] / 0.8:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
