"""Save / load n-gram models: ARPA for back-off models, lmkit's .npz (counts) for any method.

The .npz holds the vocabulary (a unicode array), the n-gram id matrices and counts, the
method and its parameters as JSON; it is read with ``allow_pickle=False`` — nothing in it
is executable. Loading re-estimates the model from the counts (fast, vectorised).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lmkit.atomic import atomic_path
from lmkit.ngram.base import NGramLM
from lmkit.ngram.counts import NGramCounts
from lmkit.ngram.keys import GramTable
from lmkit.ngram.vocab import Vocabulary

FORMAT = "lmkit.ngram"


def save_counts_model(model: NGramLM, counts: NGramCounts, params: dict, path: str | os.PathLike) -> None:
    arrays = {"vocab": np.array(model.vocab.words, dtype=str)}
    for k in range(1, counts.order + 1):
        arrays[f"grams{k}"] = counts.table(k).grams
        arrays[f"counts{k}"] = counts.count(k)
    meta = {"format": FORMAT, "version": 1, "method": model.method, "order": counts.order, "params": params,
            "n_sentences": counts.n_sentences, "n_tokens": counts.n_tokens}
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_model(path: str | os.PathLike) -> NGramLM:
    """An .arpa file (read_arpa) or an lmkit .npz model."""
    from lmkit.ngram.train import estimate

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"n-gram model file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK":
        from lmkit.ngram.arpa import read_arpa

        return read_arpa(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError("not an lmkit n-gram file")
            vocab = Vocabulary([str(w) for w in z["vocab"]])
            n = int(meta["order"])
            tables = [GramTable(z[f"grams{k}"], len(vocab)) for k in range(1, n + 1)]
            counts = [z[f"counts{k}"].astype(np.int64) for k in range(1, n + 1)]
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: corrupt or foreign n-gram model file ({exc})") from None
    nc = NGramCounts(n, len(vocab), tables, counts, int(meta["n_sentences"]), int(meta["n_tokens"]))
    return estimate(nc, vocab, meta["method"], **meta["params"])
