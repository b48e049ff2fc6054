"""Classification metrics (准确率, 精确率, 召回率, F1, ROC/AUC), implemented from their definitions.

precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = their harmonic mean.
average="binary": the metrics of `pos_label`; "micro": pool TP/FP/FN over all classes
(for single-label data micro P = R = F1 = accuracy); "macro": the unweighted mean of the
per-class metrics over the labels present in y_true or y_pred (rare classes count as much
as frequent ones); None: per-class arrays. A 0/0 gives `zero_division` (0.0), like
scikit-learn's default apart from its warning.

ROC-AUC is the probability that a random positive scores higher than a random negative
(ties count 1/2) — the Mann–Whitney U statistic, computed from average ranks in
O(n log n); it equals the area under the ROC curve.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _arrays(y_true, y_pred):
    a, b = np.asarray(y_true), np.asarray(y_pred)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no samples given")
    return a, b


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    a, b = _arrays(y_true, y_pred)
    return float(np.mean(a == b))


def confusion_matrix(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None) -> tuple[np.ndarray, list]:
    """(matrix, labels): matrix[i, j] = samples of true labels[i] predicted as labels[j]."""
    a, b = _arrays(y_true, y_pred)
    labels = sorted(set(a.tolist()) | set(b.tolist())) if labels is None else list(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(a.tolist(), b.tolist()):
        if t in index and p in index:
            m[index[t], index[p]] += 1
    return m, labels


def _div(num, den, zero_division):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, float(zero_division))
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(y_true: Sequence, y_pred: Sequence, average: str | None = "binary", pos_label=1,
                        zero_division: float = 0.0):
    """(precision, recall, f1) — floats, or per-label arrays (sorted labels) with average=None."""
    a, b = _arrays(y_true, y_pred)
    present = set(a.tolist()) | set(b.tolist())
    if average == "binary":
        if len(present) > 2:
            raise ValueError(f"average='binary' needs at most 2 classes, got {sorted(present)}; use 'micro' or 'macro'")
        present.add(pos_label)
    elif average not in ("micro", "macro", None):
        raise ValueError(f"average must be 'binary', 'micro', 'macro' or None, got {average!r}")
    m, labs = confusion_matrix(a, b, sorted(present))
    tp = np.diag(m)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    if average == "binary":
        k = labs.index(pos_label)
        tp, fp, fn = tp[k:k + 1], fp[k:k + 1], fn[k:k + 1]
    elif average == "micro":
        tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
    p = _div(tp, tp + fp, zero_division)
    r = _div(tp, tp + fn, zero_division)
    f = _div(2 * tp, 2 * tp + fp + fn, zero_division)
    if average is None:
        return p, r, f
    if average == "macro":
        return float(p.mean()), float(r.mean()), float(f.mean())
    return float(p[0]), float(r[0]), float(f[0])


def f1_score(y_true, y_pred, average: str | None = "binary", pos_label=1) -> float:
    return precision_recall_f1(y_true, y_pred, average, pos_label)[2]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    starts = np.concatenate([[0], np.flatnonzero(xs[1:] != xs[:-1]) + 1, [len(x)]])
    for s, e in zip(starts[:-1], starts[1:]):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of ranks s+1 .. e
    return ranks


def roc_auc(y_true: Sequence, scores: Sequence[float], pos_label=1) -> float:
    """Area under the ROC curve for binary labels (the positive class is `pos_label`)."""
    y, s = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true and scores must be 1-D and the same length, got {y.shape} and {s.shape}")
    pos = y == pos_label
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC is undefined when y_true holds only one class")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite numbers")
    r = _average_ranks(s)
    u = r[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: Sequence, scores: Sequence[float], pos_label=1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, from (0, 0) at threshold +inf."""
    y, s = np.asarray(y_true) == pos_label, np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.concatenate([np.flatnonzero(s[1:] != s[:-1]), [len(s) - 1]])
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("the ROC curve is undefined when y_true holds only one class")
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return fpr, tpr, np.concatenate([[np.inf], s[last]])
