"""Segmentation scoring with the SIGHAN bakeoff semantics.

Each sentence's words become character spans [start, end); a predicted word is correct
iff the gold segmentation has exactly that span. Counts are summed over the whole corpus
(micro-averaged), then P = correct / predicted, R = correct / gold, F1 = 2PR / (P + R).
With a dictionary, recall is also split into in-vocabulary (IV) and out-of-vocabulary
(OOV) gold words, the bakeoff's measure of how a segmenter copes with unknown words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

from lmkit.errors import TokenizerError


@dataclass
class SegmentationScore:
    precision: float
    recall: float
    f1: float
    correct: int
    predicted: int
    gold: int
    oov_recall: float | None = None
    iv_recall: float | None = None


def _spans(words: Sequence[str]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for w in words:
        out.append((pos, pos + len(w)))
        pos += len(w)
    return out


def _words(sentence: str | Sequence[str]) -> Sequence[str]:
    return sentence.split() if isinstance(sentence, str) else sentence


def evaluate(
    pred: Sequence[str | Sequence[str]],
    gold: Sequence[str | Sequence[str]],
    dictionary: Collection[str] | None = None,
) -> SegmentationScore:
    """Score predicted sentences against gold ones, sentence by sentence. A sentence is a
    list of words or, as in the bakeoff's files, one string of whitespace-separated words.
    `dictionary` (the training word list) enables OOV and IV recall."""
    if len(pred) != len(gold):
        raise TokenizerError(f"{len(pred)} predicted sentences but {len(gold)} gold sentences")
    correct = n_pred = n_gold = 0
    oov_total = oov_hit = iv_total = iv_hit = 0
    for k, (p, g) in enumerate(zip(map(_words, pred), map(_words, gold))):
        if "".join(p) != "".join(g):
            raise TokenizerError(
                f"sentence {k}: predicted and gold words do not spell the same text "
                f"({''.join(p)[:30]!r} vs {''.join(g)[:30]!r})"
            )
        if "" in p or "" in g:
            raise TokenizerError(f"sentence {k}: an empty word (every word needs at least one character)")
        p_spans = set(_spans(p))
        g_spans = _spans(g)
        n_pred += len(p)
        n_gold += len(g_spans)
        for word, span in zip(g, g_spans):
            hit = span in p_spans
            correct += hit
            if dictionary is not None:
                if word in dictionary:
                    iv_total += 1
                    iv_hit += hit
                else:
                    oov_total += 1
                    oov_hit += hit
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    score = SegmentationScore(precision, recall, f1, correct, n_pred, n_gold)
    if dictionary is not None:
        score.oov_recall = oov_hit / oov_total if oov_total else None
        score.iv_recall = iv_hit / iv_total if iv_total else None
    return score
