"""Text-generation metrics: BLEU, ROUGE, exact match and token F1.

* BLEU (machine translation): geometric mean of modified n-gram precisions (n = 1..4,
  clipped by the reference counts, pooled over the corpus) times a brevity penalty
  exp(1 - r/c) when the output is shorter than the references. `bleu` calls `sacrebleu`
  (the reference implementation: its 13a tokenizer and defaults make scores comparable
  across papers); `bleu_from_tokens` is the same formula on pre-tokenised text, written
  out for reading and checked against sacrebleu in the tests.
* ROUGE (summarisation): n-gram (ROUGE-N) or longest-common-subsequence (ROUGE-L) overlap,
  recall-oriented; via Google's `rouge-score`. Its default tokenizer keeps only [a-z0-9],
  so Chinese text would vanish: use tokenize="whitespace" on pre-segmented text or "char".
* Exact match / token F1 (extractive QA), with the SQuAD v1.1 normalisation: lowercase,
  drop punctuation and the articles a/an/the, collapse whitespace; F1 over the bag of
  tokens; the best score over the gold answers.

sacrebleu and rouge-score are optional: pip install 'lmkit[eval]'.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence

from lmkit.errors import require


def _refs_streams(hypotheses: Sequence[str], references) -> list[list[str]]:
    """references: one string per hypothesis, or a list of strings (several refs) per hypothesis."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    per = [[r] if isinstance(r, str) else list(r) for r in references]
    n = max(len(p) for p in per) if per else 1
    if any(len(p) == 0 for p in per):
        raise ValueError("every hypothesis needs at least one reference")
    # sacrebleu wants one stream per reference position; pad short lists with their first ref
    return [[p[i] if i < len(p) else p[0] for p in per] for i in range(n)]


def bleu(hypotheses: Sequence[str], references, tokenize: str = "13a", lowercase: bool = False) -> dict:
    """Corpus BLEU (0-100) with sacrebleu's defaults; returns score, precisions, bp, lengths."""
    sacrebleu = require("sacrebleu", "eval")
    if not hypotheses:
        raise ValueError("no hypotheses given")
    metric = sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase)
    res = metric.corpus_score(list(hypotheses), _refs_streams(hypotheses, references))
    return {"score": res.score, "precisions": list(res.precisions), "bp": res.bp, "sys_len": res.sys_len,
            "ref_len": res.ref_len, "signature": str(metric.get_signature())}


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_from_tokens(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
                     max_n: int = 4) -> float:
    """Corpus BLEU (0-100) of tokenised hypotheses, each with a list of tokenised references.

    No smoothing (a zero n-gram precision gives 0); the reference length per sentence is the
    closest one (ties: the shorter), as in sacrebleu and the original paper."""
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            h = _ngrams(hyp, n)
            best: Counter = Counter()
            for r in refs:
                best |= _ngrams(r, n)  # max count of each n-gram over the references
            matches[n - 1] += sum(min(c, best[g]) for g, c in h.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_p)


class _Whitespace:
    def tokenize(self, text: str) -> list[str]:
        return text.split()


class _Chars:
    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def rouge(hypotheses: Sequence[str], references: Sequence[str],
          types: Sequence[str] = ("rouge1", "rouge2", "rougeL"), use_stemmer: bool = False,
          tokenize: str = "default") -> dict:
    """Mean ROUGE precision/recall/F over the pairs, per type, via `rouge-score`."""
    rs = require("rouge_score.rouge_scorer", "eval")
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need equal, non-zero numbers of hypotheses and references "
                         f"({len(hypotheses)} vs {len(references)})")
    tok = {"default": None, "whitespace": _Whitespace(), "char": _Chars()}
    if tokenize not in tok:
        raise ValueError(f"tokenize must be one of {sorted(tok)}, got {tokenize!r}")
    scorer = rs.RougeScorer(list(types), use_stemmer=use_stemmer, tokenizer=tok[tokenize])
    sums = {t: [0.0, 0.0, 0.0] for t in types}
    for h, r in zip(hypotheses, references):
        sc = scorer.score(r, h)  # (target, prediction)
        for t in types:
            sums[t][0] += sc[t].precision
            sums[t][1] += sc[t].recall
            sums[t][2] += sc[t].fmeasure
    n = len(hypotheses)
    return {t: {"precision": v[0] / n, "recall": v[1] / n, "f": v[2] / n} for t, v in sums.items()}


# ---- SQuAD ---------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1: lowercase, remove punctuation, remove articles, fix whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, ground_truths: str | Sequence[str]) -> float:
    golds = [ground_truths] if isinstance(ground_truths, str) else list(ground_truths)
    return float(max(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def _f1(prediction: str, truth: str) -> float:
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(p) & Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, ground_truths: str | Sequence[str]) -> float:
    golds = [ground_truths] if isinstance(ground_truths, str) else list(ground_truths)
    return max(_f1(prediction, g) for g in golds)


def squad_scores(predictions: Sequence[str], ground_truths: Sequence[str | Sequence[str]]) -> dict:
    """Mean exact match and F1 in percent, as the SQuAD v1.1 evaluation script reports them."""
    if len(predictions) != len(ground_truths) or not predictions:
        raise ValueError("need one (non-empty) list of gold answers per prediction")
    em = sum(exact_match(p, g) for p, g in zip(predictions, ground_truths))
    f1 = sum(token_f1(p, g) for p, g in zip(predictions, ground_truths))
    n = len(predictions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
