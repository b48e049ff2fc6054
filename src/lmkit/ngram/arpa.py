"""ARPA back-off files: write a `BackoffLM` (KenLM / SRILM can read it) and read one back.

Format::

    \\data\\
    ngram 1=N1
    ...
    \\1-grams:
    log10p<TAB>w<TAB>log10bo
    ...
    \\end\\

`<s>` is written with log10 p = -99 (it is only a context, as SRILM/KenLM write it). Words
must not contain whitespace. Reading builds the vocabulary from the unigrams; a file
without `<unk>` gets one with log10 p = -100, as KenLM does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lmkit.atomic import atomic_path
from lmkit.errors import LmkitError
from lmkit.ngram.backoff import BackoffLM
from lmkit.ngram.base import NGramLM
from lmkit.ngram.keys import GramCodec, GramTable
from lmkit.ngram.vocab import BOS, BOS_ID, EOS, UNK, Vocabulary


class ArpaError(LmkitError, ValueError):
    pass


def _fmt(x: float) -> str:
    return f"{x:.7g}"


def write_arpa(model: NGramLM, path: str | os.PathLike) -> None:
    """Write `model` as an ARPA file (atomically). Only normalised backoff models qualify."""
    if not isinstance(model, BackoffLM) or model.default_bo != 0.0 or not model.normalized:
        raise ArpaError(f"{model.method!r} models have no ARPA form: an ARPA file holds normalised "
                        "back-off probabilities (use method 'kn' or 'katz')")
    words = np.array(model.vocab.words, dtype=object)
    bad = [w for w in model.vocab.words if not w or any(ch.isspace() for ch in w)]
    if bad:
        raise ArpaError(f"ARPA words cannot be empty or contain whitespace: {bad[:5]!r}")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for k, t in enumerate(model.tables, 1):
            f.write(f"ngram {k}={len(t)}\n")
        for k, t in enumerate(model.tables, 1):
            f.write(f"\n\\{k}-grams:\n")
            lp = model.logp[k - 1].copy()
            if k == 1:
                lp[t.grams[:, 0] == BOS_ID] = -99.0
            text = [" ".join(r) for r in words[t.grams].tolist()]
            if k < model.order:
                bo = model.logbo[k - 1]
                f.writelines(f"{_fmt(p)}\t{w}\t{_fmt(b)}\n" for p, w, b in zip(lp.tolist(), text, bo.tolist()))
            else:
                f.writelines(f"{_fmt(p)}\t{w}\n" for p, w in zip(lp.tolist(), text))
        f.write("\n\\end\\\n")


def read_arpa(path: str | os.PathLike) -> BackoffLM:
    path = Path(path)
    if not path.is_file():
        raise ArpaError(f"ARPA file {str(path)!r} does not exist")
    counts: dict[int, int] = {}
    sections: dict[int, list[tuple[float, list[str], float]]] = {}
    state = "start"
    k = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise ArpaError(f"{path}:{lineno}: not UTF-8 text ({exc.reason})") from None
            if not line:
                continue
            if state == "start":
                if line == "\\data\\":
                    state = "data"
                continue
            if line == "\\end\\":
                state = "end"
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                try:
                    k = int(line[1:-7])
                except ValueError:
                    raise ArpaError(f"{path}:{lineno}: bad section header {line!r}") from None
                sections[k] = []
                state = "grams"
                continue
            if state == "data":
                if not line.startswith("ngram "):
                    raise ArpaError(f"{path}:{lineno}: expected 'ngram k=N' in \\data\\, got {line!r}")
                try:
                    a, b = line[6:].split("=")
                    counts[int(a)] = int(b)
                except ValueError:
                    raise ArpaError(f"{path}:{lineno}: expected 'ngram k=N', got {line!r}") from None
                continue
            parts = line.split()
            if len(parts) not in (k + 1, k + 2):
                raise ArpaError(f"{path}:{lineno}: a {k}-gram line needs prob, {k} words[, backoff]: {line!r}")
            try:
                p = float(parts[0])
                bo = float(parts[k + 1]) if len(parts) == k + 2 else 0.0
            except ValueError:
                raise ArpaError(f"{path}:{lineno}: not a number in {line!r}") from None
            sections[k].append((p, parts[1:k + 1], bo))
    if state == "start":
        raise ArpaError(f"{path}: not an ARPA file (no \\data\\ line)")
    if state != "end":
        raise ArpaError(f"{path}: truncated ARPA file (no \\end\\ line)")
    order = max(counts) if counts else 0
    if order < 1 or sorted(sections) != list(range(1, order + 1)) or sorted(counts) != sorted(sections):
        raise ArpaError(f"{path}: sections {sorted(sections)} do not match \\data\\ orders {sorted(counts)}")
    for kk, n in counts.items():
        if len(sections[kk]) != n:
            raise ArpaError(f"{path}: \\data\\ says {n} {kk}-grams, found {len(sections[kk])}")
    uni = sections[1]
    others = [w[0] for _, w, _ in uni if w[0] not in (UNK, BOS, EOS)]
    if BOS not in {w[0] for _, w, _ in uni} or EOS not in {w[0] for _, w, _ in uni}:
        raise ArpaError(f"{path}: the unigrams must include {BOS} and {EOS}")
    vocab = Vocabulary([UNK, BOS, EOS, *others])
    V = len(vocab)
    tables, logp, logbo = [], [], []
    for kk in range(1, order + 1):
        sec = sections[kk]
        if kk == 1 and UNK not in {w[0] for _, w, _ in sec}:
            sec = sec + [(-100.0, [UNK], 0.0)]
        try:
            ids = np.array([[vocab.index[w] for w in ws] for _, ws, _ in sec], dtype=np.int32).reshape(-1, kk)
        except KeyError as exc:
            raise ArpaError(f"{path}: {kk}-gram uses word {exc.args[0]!r} missing from the unigrams") from None
        p = np.array([x[0] for x in sec])
        b = np.array([x[2] for x in sec])
        keys = GramCodec(V, kk).encode(ids)
        order_idx = np.argsort(keys, kind="stable")
        keys = keys[order_idx]
        if len(keys) > 1 and np.any(keys[1:] == keys[:-1]):
            raise ArpaError(f"{path}: repeated {kk}-gram")
        tables.append(GramTable(ids[order_idx], V, keys=keys))
        logp.append(p[order_idx])
        logbo.append(b[order_idx])
    return BackoffLM(order, vocab, tables, logp, logbo, method="arpa", meta={"source": str(path)})
