"""Rerankers: re-order a few retrieved passages with a slower, more careful scorer.

First-stage retrieval (BM25, bi-encoder ANN) scores query and passage independently; a
reranker reads them together. Three kinds, one interface ``rerank(query, hits, top_n)``:

* `CrossEncoderReranker` — lmkit `EncoderLM` over ``[CLS] query [SEP] passage [SEP]`` with a
  1-logit head on the pooled output: a Hugging Face ``BertForSequenceClassification``
  checkpoint with ``num_labels=1`` (the format of ms-marco cross-encoders, bge-reranker is
  XLM-R and not supported). Tested to equal transformers' logits. No trained cross-encoder
  ships offline here, so the benchmark cannot use one; with a checkpoint on disk, it works.
* `BiEncoderReranker` — cosine similarity of the query and passage embeddings (MiniLM by
  default): it reorders by a second, dense opinion; cheap, but not a true cross-encoder.
* `LLMReranker` — asks a `ChatModel` to rate each passage 0-10 for the query (pointwise,
  prompt in `LLM_RERANK_PROMPT`); only as good as the model behind it.

Each returns new `Hit`s whose ``score`` is the reranker's score, best first.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

from lmkit.rag.store import Hit


def _reorder(hits: Sequence[Hit], scores: Sequence[float], top_n: int | None) -> list[Hit]:
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))
    out = [dataclasses.replace(hits[i], score=float(scores[i])) for i in order]
    return out[:top_n] if top_n else out


class CrossEncoderReranker:
    def __init__(self, model_dir: str | os.PathLike, max_length: int = 512, batch_size: int = 16) -> None:
        import torch

        from lmkit.errors import CheckpointError
        from lmkit.hub import load_pretrained
        from lmkit.hub.safetensors_io import read_state_dict
        from lmkit.models.encoder import EncoderLM
        from lmkit.tokenizers.wordpiece import WordPieceTokenizer

        import warnings

        with warnings.catch_warnings():  # the classifier tensors it skips are read below
            warnings.filterwarnings("ignore", message=".*task-head tensors.*")
            model = load_pretrained(model_dir, dtype=torch.float32)
        if not isinstance(model, EncoderLM) or "pooler" not in model.heads:
            raise CheckpointError(f"{model_dir}: a cross-encoder needs a BERT with a pooler")
        sd = read_state_dict(model_dir)
        if "classifier.weight" not in sd or sd["classifier.weight"].shape[0] != 1:
            raise CheckpointError(f"{model_dir}: no 1-logit classifier head (BertForSequenceClassification, "
                                  "num_labels=1) in this checkpoint")
        self.model = model.eval()
        self.head = torch.nn.Linear(model.config.d_model, 1)
        with torch.no_grad():
            self.head.weight.copy_(sd["classifier.weight"].float())
            self.head.bias.copy_(sd["classifier.bias"].float())
        self.tokenizer = WordPieceTokenizer.from_pretrained_dir(model_dir)
        self.max_length = min(max_length, model.config.max_seq_len)
        self.batch_size = batch_size

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        import torch

        out: list[float] = []
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for s in range(0, len(pairs), self.batch_size):
                encs = [self.tokenizer.encode_plus(q, p, max_length=self.max_length)
                        for q, p in pairs[s:s + self.batch_size]]
                n = max(len(e["input_ids"]) for e in encs)
                ids = torch.full((len(encs), n), pad, dtype=torch.long)
                types = torch.zeros_like(ids)
                mask = torch.zeros_like(ids)
                for i, e in enumerate(encs):
                    k = len(e["input_ids"])
                    ids[i, :k] = torch.tensor(e["input_ids"])
                    types[i, :k] = torch.tensor(e["token_type_ids"])
                    mask[i, :k] = 1
                pooled = self.model(ids, attention_mask=mask, token_type_ids=types).pooled
                out.extend(self.head(pooled)[:, 0].tolist())
        return out

    def rerank(self, query: str, hits: Sequence[Hit], top_n: int | None = None) -> list[Hit]:
        return _reorder(hits, self.score_pairs([(query, h.text) for h in hits]), top_n)


class BiEncoderReranker:
    """``store``: an `EmbeddedStore` built with the same embedder, whose stored vectors are
    reused instead of embedding the passages again."""

    def __init__(self, embedder: Any, store: Any = None) -> None:
        self.embedder, self.store = embedder, store

    def rerank(self, query: str, hits: Sequence[Hit], top_n: int | None = None) -> list[Hit]:
        import numpy as np

        if not hits:
            return []
        q = self.embedder.embed_query(query)
        p = None
        if self.store is not None and hasattr(self.store, "vectors_of"):
            p = self.store.vectors_of([h.id for h in hits])
        if p is None:
            p = self.embedder.embed_documents([h.text for h in hits])
        p = np.asarray(p)
        return _reorder(hits, (p @ q).tolist(), top_n)


LLM_RERANK_PROMPT = (
    "Rate how well the passage answers the question, from 0 (irrelevant) to 10 (fully answers it).\n"
    "Reply with the number only.\n\nQuestion: {query}\n\nPassage:\n{passage}\n\nScore:"
)


class LLMReranker:
    def __init__(self, model: Any, prompt: str = LLM_RERANK_PROMPT, max_passage_chars: int = 1500) -> None:
        self.model, self.prompt, self.max_passage_chars = model, prompt, max_passage_chars

    def score(self, query: str, passage: str) -> float:
        from lmkit.rag.llm import complete

        reply = complete(self.model, self.prompt.format(query=query, passage=passage[:self.max_passage_chars]),
                         max_tokens=8)
        m = re.search(r"-?\d+(?:\.\d+)?", reply)
        return max(0.0, min(10.0, float(m.group(0)))) if m else 0.0

    def rerank(self, query: str, hits: Sequence[Hit], top_n: int | None = None) -> list[Hit]:
        return _reorder(hits, [self.score(query, h.text) for h in hits], top_n)
