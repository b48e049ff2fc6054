"""BM25 vs rank_bm25 (the oracle), reciprocal-rank fusion vs its formula written out, retrieval
metrics vs scikit-learn / hand-computed values, and the lexical tokenizer on Chinese."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lmkit.rag import metrics as M
from lmkit.rag.bm25 import BM25
from lmkit.rag.fusion import reciprocal_rank_fusion
from lmkit.rag.lexical import LexicalTokenizer, shared_tokenizer

CORPUS = [
    "RAG 将检索到的文档补充到大模型的输入中，缓解幻觉问题。",
    "向量数据库保存文本的向量，支持近似最近邻检索，例如 HNSW 索引。",
    "BM25 is a lexical ranking function used by search engines.",
    "The quick brown fox jumps over the lazy dog; the dog sleeps.",
    "重排模型对初次召回的结果重新打分排序，提高命中率和 MRR。",
    "Hybrid retrieval fuses BM25 and dense rankings with reciprocal rank fusion.",
    "大模型的幻觉是指生成看似合理但与事实不符的内容。",
]


def test_bm25_equals_rank_bm25():
    rank_bm25 = pytest.importorskip("rank_bm25")
    tok = shared_tokenizer()
    docs = [tok(t) for t in CORPUS]
    ref = rank_bm25.BM25Okapi(docs, k1=1.5, b=0.75, epsilon=0.25)
    ours = BM25(tok)
    ours.add([str(i) for i in range(len(CORPUS))], CORPUS)
    for q in ["大模型 幻觉", "BM25 ranking", "检索 向量 HNSW", "the dog", "重排 MRR 命中率", "没有的词"]:
        np.testing.assert_allclose(ours.scores(q), ref.get_scores(tok(q)), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=12), min_size=1, max_size=12),
       query=st.lists(st.sampled_from("abcdefghz"), min_size=1, max_size=5))
def test_bm25_equals_rank_bm25_random(docs, query):
    rank_bm25 = pytest.importorskip("rank_bm25")
    ours = BM25(lambda s: s.split())
    ours.add([str(i) for i in range(len(docs))], [" ".join(d) for d in docs])
    np.testing.assert_allclose(ours.scores(query), rank_bm25.BM25Okapi(docs).get_scores(query), atol=1e-9)


def test_bm25_incremental_equals_rebuilt_and_roundtrip():
    tok = shared_tokenizer()
    inc = BM25(tok)
    inc.add(["a", "b", "c"], CORPUS[:3])
    inc.add(["d", "e", "f", "g"], CORPUS[3:])
    inc.delete(["b", "e"])
    inc.add(["a"], ["完全 替换 的 文本 幻觉"])  # overwrite
    fresh = BM25(tok)
    keep = {"a": "完全 替换 的 文本 幻觉", "c": CORPUS[2], "d": CORPUS[3], "f": CORPUS[5], "g": CORPUS[6]}
    fresh.add(list(keep), list(keep.values()))
    for q in ["幻觉", "BM25 fusion", "dog"]:
        assert dict(inc.search(q, 10)) == pytest.approx(dict(fresh.search(q, 10)))
    again = BM25.from_dict(inc.to_dict(), tok)
    assert again.search("幻觉", 3) == inc.search("幻觉", 3)


def test_lexical_tokenizer_chinese_and_english():
    tok = shared_tokenizer()
    got = tok("RAG查询中，Query的优化方法有哪些？HyDE")
    assert "查询" in got and "优化" in got and "rag" in got and "query" in got and "hyde" in got
    assert "的" not in got and "，" not in got and "哪些" not in got
    plain = LexicalTokenizer(None)
    assert plain("大模型 Hello, World!") == ["大", "模", "型", "hello", "world"]


def _rrf_by_hand(rankings, k=60):
    s = {}
    for r in rankings:
        for rank, d in enumerate(r, 1):
            s[d] = s.get(d, 0) + 1 / (k + rank)
    return s


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=8), min_size=1, max_size=4))
def test_rrf_formula(rankings):
    fused = reciprocal_rank_fusion(rankings)
    want = _rrf_by_hand(rankings)
    assert dict(fused) == pytest.approx(want)
    scores = [s for _, s in fused]
    assert scores == sorted(scores, reverse=True)


def test_rrf_example_and_weights():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "a"]])
    assert [d for d, _ in fused] == ["b", "a", "c"]  # b: 1/62+1/61 > a: 1/61+1/63 > c
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    w = reciprocal_rank_fusion([["a"], ["b"]], weights=[2, 1])
    assert w[0] == ("a", pytest.approx(2 / 61))
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1, 2])


def test_metrics_by_hand_and_vs_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    retrieved = ["d3", "d1", "d7", "d2", "d9"]
    relevant = {"d1", "d2", "d5"}
    assert M.hit_at_k(retrieved, relevant, 1) == 0 and M.hit_at_k(retrieved, relevant, 2) == 1
    assert M.reciprocal_rank(retrieved, relevant) == 0.5
    assert M.recall_at_k(retrieved, relevant, 5) == pytest.approx(2 / 3)
    assert M.context_precision(retrieved, relevant, 5) == pytest.approx((1 / 2 + 2 / 4) / 2)
    # nDCG vs scikit-learn: scores over all documents, ranked as retrieved
    docs = retrieved + ["d5", "d6"]
    y_true = np.array([[1.0 if d in relevant else 0.0 for d in docs]])
    y_score = np.array([[len(docs) - i for i in range(len(docs))]], dtype=float)
    for k in (1, 3, 5, 7):
        assert M.ndcg_at_k(docs, relevant, k) == pytest.approx(sk.ndcg_score(y_true, y_score, k=k))
    graded = {"d1": 3.0, "d2": 1.0, "d5": 2.0}
    y_true = np.array([[graded.get(d, 0.0) for d in docs]])
    assert M.ndcg_at_k(docs, graded, 5) == pytest.approx(sk.ndcg_score(y_true, y_score, k=5))
    assert M.ndcg_at_k(retrieved, set(), 5) == 0.0
    assert M.reciprocal_rank(["x"], {"y"}) == 0.0


def test_context_recall():
    ref = "RAG 能缓解幻觉问题。它还能解决时效性问题。"
    assert M.context_recall(ref, ["RAG 可以缓解大模型的幻觉问题"]) == 0.5
    assert M.context_recall(ref, ["缓解幻觉问题", "解决时效性问题"]) == 1.0


class Judge:
    """A scripted judge: answers from a function of the prompt."""

    def __init__(self, fn):
        self.fn, self.prompts = fn, []

    def chat(self, messages, **kw):
        from lmkit.serve.chat_model import ChatResult

        self.prompts.append(messages[-1]["content"])
        return ChatResult(self.fn(messages[-1]["content"]))


def test_llm_judged_metrics_with_pluggable_prompts():
    ctx = ["RAG 在推理阶段把检索到的证据补充到输入中。"]
    judge = Judge(lambda p: "YES" if "证据" in p.split("Context:")[0] else "NO")
    answer = "RAG 把检索到的证据加入输入 [1]。它能让模型飞起来 [2]。"
    assert M.faithfulness(judge, answer, ctx) == 0.5
    assert len(judge.prompts) == 2 and "[1]" not in judge.prompts[0]
    rel = Judge(lambda p: "Good match.\n[RESULT] 2")
    assert M.answer_relevancy(rel, "为什么需要RAG？", answer) == 1.0
    custom = Judge(lambda p: "1")
    assert M.answer_relevancy(custom, "q", "a", prompt="Q={query} A={response}") == 0.5
    assert custom.prompts == ["Q=q A=a"]
    assert math.isclose(M.faithfulness(Judge(lambda p: "NO"), answer, ctx), 0.0)
