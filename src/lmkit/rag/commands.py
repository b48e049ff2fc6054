"""`lmkit rag index | ask | eval` — build an index over documents, ask it, measure it."""

from __future__ import annotations

import click

from lmkit.cli_grammar import RenamedOptionsCommand, progress_flags


def _chat_model(base_url, model, api_key, local):
    """The generator: a local model or an endpoint (its one served model by default), replies sized
    to the model's context; None for extractive answers."""
    from lmkit.rag.chat_client import open_chat_model

    return open_chat_model(base_url, model, api_key, local)


def _reranker(kind, index, chat):
    from lmkit.rag import rerank as rr

    if kind == "none":
        return None
    if kind == "biencoder":
        return rr.BiEncoderReranker(index.embedder, index.store)
    if kind == "llm":
        if chat is None:
            raise click.ClickException("--rerank llm needs a chat model (--base-url/--model or --local)")
        return rr.LLMReranker(chat)
    if kind.startswith("cross:"):
        return rr.CrossEncoderReranker(kind[len("cross:"):])
    raise click.ClickException(f"--rerank {kind!r}: use none, biencoder, llm or cross:MODEL_DIR")


_llm_options = [
    click.option("--base-url", default=None, help="OpenAI-compatible endpoint (lmkit serve, vLLM, Ollama) for generation."),
    click.option("--model", "model_name", default=None,
                 help="Model name at --base-url (default: the one model the server lists at /v1/models)."),
    click.option("--api-key", default=None, envvar="OPENAI_API_KEY", help="API key for --base-url."),
    click.option("--local", default=None, type=click.Path(exists=True, file_okay=False),
                 help="A local lmkit/HF chat model directory to generate with."),
]


def _with_llm(f):
    for opt in reversed(_llm_options):
        f = opt(f)
    return f


def _open(index_path, dsn):
    from lmkit.rag.index import RagIndex

    return RagIndex.open(index_path, dsn=dsn)


@click.group("rag")
def rag() -> None:
    """Retrieval-augmented generation over your documents."""


@rag.command("index", cls=RenamedOptionsCommand, renamed={"--output": "--out"})
@progress_flags
@click.argument("docs", type=click.Path(exists=True))
@click.option("-o", "--out", "output", required=True, type=click.Path(), help="Index folder to create.")
@click.option("--store", type=click.Choice(["embedded", "pgvector"]), default="embedded", show_default=True)
@click.option("--dsn", default=None, envvar="LMKIT_PG_DSN", help="PostgreSQL DSN for --store pgvector.")
@click.option("--collection", default=None, help="Table name in PostgreSQL (default from the index name).")
@click.option("--embedder", default=None, type=click.Path(exists=True, file_okay=False),
              help="HF-format BERT directory (default: offline all-MiniLM-L6-v2).")
@click.option("--splitter", type=click.Choice(["markdown", "recursive", "chinese"]), default="markdown", show_default=True)
@click.option("--chunk-size", default=600, show_default=True, type=int)
@click.option("--chunk-overlap", default=80, show_default=True, type=int)
@click.option("--ann", is_flag=True, help="Build a faiss HNSW graph for large collections (embedded store).")
@click.option("--batch-size", default=32, show_default=True, type=int)
def index_cmd(docs, output, store, dsn, collection, embedder, splitter, chunk_size, chunk_overlap, ann, batch_size):
    """Load DOCS (a file or folder: txt, md, html, pdf, jsonl), split, embed and index them."""
    from lmkit.rag.embedder import EncoderEmbedder
    from lmkit.rag.index import RagIndex
    from lmkit.rag.loaders import load_directory

    documents, report = load_directory(docs)
    click.echo(report.summary(), err=True)
    if not documents:
        raise click.ClickException(f"no loadable documents under {docs}")
    try:
        if splitter == "markdown":
            from lmkit.rag.split_markdown import MarkdownHeaderSplitter

            sp = MarkdownHeaderSplitter(chunk_size, chunk_overlap)
        elif splitter == "chinese":
            from lmkit.rag.split_chinese import ChineseSentenceSplitter

            sp = ChineseSentenceSplitter(chunk_size, chunk_overlap)
        else:
            from lmkit.rag.split_recursive import RecursiveCharacterSplitter

            sp = RecursiveCharacterSplitter(chunk_size, chunk_overlap)
        chunks = sp.split_documents(documents)
        emb = EncoderEmbedder(embedder, batch_size=batch_size)
        idx = RagIndex.create(output, emb, store=store, dsn=dsn, collection=collection, ann="hnsw" if ann else None,
                              model_dir=embedder,
                              splitter={"kind": splitter, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap})
        idx.add_documents(chunks)
        if ann and store == "embedded":
            idx.store.build_ann()
        idx.save()
    except ValueError as exc:  # e.g. chunk sizes that do not fit; an LmkitError is reported by the root group
        raise click.ClickException(str(exc)) from None
    click.echo(f"indexed {len(chunks)} chunks from {len(report.loaded)} file(s) into {output} ({store})")


@rag.command("ask")
@click.argument("index_path", type=click.Path(exists=True, file_okay=False))
@click.argument("question")
@click.option("-k", default=5, show_default=True, type=int, help="Passages to use.")
@click.option("--mode", type=click.Choice(["bm25", "dense", "hybrid"]), default="hybrid", show_default=True)
@click.option("--rerank", "rerank_kind", default="none", show_default=True,
              help="none | biencoder | llm | cross:MODEL_DIR")
@click.option("--rewrite", type=click.Choice(["none", "multi-query", "sub-query", "hyde", "step-back", "rewrite"]),
              default="none", show_default=True)
@click.option("--dsn", default=None, envvar="LMKIT_PG_DSN", help="PostgreSQL DSN (pgvector indexes).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer and sources as JSON.")
@click.option("--max-tokens", type=click.IntRange(1), default=None,
              help="Longest generated answer (default: what the model's context leaves after the prompt, "
                   "at most 512 for --local; the server's choice for --base-url).")
@_with_llm
def ask_cmd(index_path, question, k, mode, rerank_kind, rewrite, dsn, as_json, max_tokens, base_url, model_name,
            api_key, local):
    """Answer QUESTION from the index, with numbered citations (extractive without a generator)."""
    import json

    from lmkit.rag.answer import extractive_answer, generate_answer

    idx = _open(index_path, dsn)
    chat = _chat_model(base_url, model_name, api_key, local)
    hits = idx.retrieve(question, k=k, mode=mode, rewrite=rewrite, chat_model=chat,
                        reranker=_reranker(rerank_kind, idx, chat))
    if chat is not None:
        ans = generate_answer(chat, question, hits, max_tokens=max_tokens)  # None: sized to the context
    else:
        ans = extractive_answer(question, hits)
    if as_json:
        click.echo(json.dumps({"answer": ans.text, "mode": ans.mode, "cited": ans.cited,
                               "sources": [{"n": n, "id": h.id, "score": h.score, "metadata": h.metadata, "text": h.text}
                                           for n, h in enumerate(ans.sources, 1)]}, ensure_ascii=False, indent=1))
    else:
        click.echo(ans.format())


@rag.command("eval")
@click.argument("index_path", type=click.Path(exists=True, file_okay=False))
@click.argument("qa", type=click.Path(exists=True, dir_okay=False))
@click.option("-k", default=5, show_default=True, type=int)
@click.option("--mode", "modes", multiple=True, type=click.Choice(["bm25", "dense", "hybrid"]),
              help="Retrieval modes to compare (default all three).")
@click.option("--rerank", "rerank_kind", default="none", show_default=True)
@click.option("--dsn", default=None, envvar="LMKIT_PG_DSN")
@click.option("--judge", is_flag=True, help="Also generate answers and judge faithfulness / answer relevancy "
              "with the chat model.")
@_with_llm
def eval_cmd(index_path, qa, k, modes, rerank_kind, dsn, judge, base_url, model_name, api_key, local):
    """Retrieval metrics (hit@1, hit@k, MRR, nDCG@k, recall@k, context precision) on a QA jsonl.

    Each line: {"question": ..., "source": FILE NAME, "section": "H1 > H2 ..."} or {"question": ..., "ids": [...]}.
    """
    import json

    from lmkit.rag import metrics as M
    from lmkit.rag.evaluate import evaluate_retrieval, index_chunks

    idx = _open(index_path, dsn)
    chat = _chat_model(base_url, model_name, api_key, local)
    records = [json.loads(line) for line in open(qa, encoding="utf-8") if line.strip()]
    if not records:
        raise click.ClickException(f"{qa} holds no questions")
    reranker = _reranker(rerank_kind, idx, chat)
    chunks = index_chunks(idx)
    for mode in modes or ("bm25", "dense", "hybrid"):
        def retrieve(q, mode=mode):
            return [h.id for h in idx.retrieve(q, k=max(k, 20), mode=mode, reranker=reranker)]

        summary = {name: round(v, 4) for name, v in evaluate_retrieval(retrieve, records, chunks, k).items()}
        if judge and chat is not None:
            from lmkit.rag.answer import generate_answer

            faith, relev = [], []
            for r in records:
                hits = idx.retrieve(r["question"], k=k, mode=mode, reranker=reranker)
                ans = generate_answer(chat, r["question"], hits)
                faith.append(M.faithfulness(chat, ans.text, [h.text for h in hits]))
                relev.append(M.answer_relevancy(chat, r["question"], ans.text))
            summary.update(faithfulness=round(M.mean(faith), 4), answer_relevancy=round(M.mean(relev), 4))
        click.echo(json.dumps({"mode": mode, "rerank": rerank_kind, "n": len(records), **summary}, ensure_ascii=False))


from lmkit.rag.speedrun_command import speedrun_cmd  # noqa: E402  (a sibling command)

COMMANDS = [rag, speedrun_cmd]
