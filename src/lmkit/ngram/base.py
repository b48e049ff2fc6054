"""What every n-gram model offers: log-probabilities, perplexity, entropy, next-word distributions.

Scores are log10 (as in ARPA files and KenLM); `evaluate` also reports natural-log and
bit figures. A sentence is scored like ``kenlm.Model.score(s, bos=True, eos=True)``: the
words and the final ``</s>`` are predicted, each from at most n-1 previous tokens of the
same sentence (the first word's history is just ``<s>``).

Perplexity over a test set of sentences is ``10 ** (-sum(log10 p) / N)`` with N = words +
one ``</s>`` per sentence; unknown words are scored as ``<unk>`` and counted in N (KenLM's
"perplexity including OOVs"); `ppl_excluding_oov` drops them, as KenLM's query tool also
reports. Entropy rate in bits per token is ``-sum(log2 p) / N`` and ``ppl = 2 ** entropy``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from lmkit.ngram.vocab import BOS_ID, EOS_ID, UNK_ID, Vocabulary

LOG2_10 = math.log2(10.0)


@dataclass
class PerplexityResult:
    log10_prob: float  # sum over all predicted tokens
    n_tokens: int  # predicted tokens: words + </s> per sentence
    n_sentences: int
    n_oov: int
    perplexity: float
    perplexity_excluding_oov: float
    entropy_bits: float  # cross-entropy rate, bits per token; perplexity = 2 ** entropy_bits
    normalized: bool  # False: scores are not probabilities (stupid backoff) and this is no true perplexity

    def to_dict(self) -> dict:
        return asdict(self)


def as_words(sentence: str | Sequence[str]) -> list[str]:
    return sentence.split() if isinstance(sentence, str) else list(sentence)


class NGramLM:
    """Base class; subclasses fill `_log10_positions` and `next_log10`."""

    method = "?"
    normalized = True

    def __init__(self, order: int, vocab: Vocabulary) -> None:
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"n-gram order must be an integer >= 1, got {order!r}")
        self.order = order
        self.vocab = vocab

    # ---- to implement ------------------------------------------------------------------
    def _log10_positions(self, toks: np.ndarray, pos: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """log10 p(toks[p] | toks[p-h:p]) for each position p with history length h."""
        raise NotImplementedError

    def next_log10(self, context: Sequence[int]) -> np.ndarray:
        """log10 p(w | context) for every vocabulary id w (context: ids, <s> first if at start)."""
        raise NotImplementedError

    # ---- scoring -----------------------------------------------------------------------
    def _layout(self, sents: list[np.ndarray], bos: bool, eos: bool):
        lens = np.array([len(s) + bos + eos for s in sents], dtype=np.int64)
        toks = np.empty(int(lens.sum()), dtype=np.int32)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        for s, st in zip(sents, starts):
            if bos:
                toks[st] = BOS_ID
            toks[st + bos: st + bos + len(s)] = s
            if eos:
                toks[st + bos + len(s)] = EOS_ID
        sent_start = np.repeat(starts, lens)
        pos = np.arange(len(toks), dtype=np.int64)
        if bos:
            pos = pos[pos != sent_start]
            sent_of_pos = np.repeat(np.arange(len(sents)), lens - 1)
        else:
            sent_of_pos = np.repeat(np.arange(len(sents)), lens)
        hist = np.minimum(self.order - 1, pos - sent_start[pos])
        return toks, pos, hist, sent_of_pos

    def encode(self, sentence: str | Sequence[str]) -> np.ndarray:
        return self.vocab.encode(as_words(sentence))

    def token_log10probs(self, sentence: str | Sequence[str], bos: bool = True, eos: bool = True) -> np.ndarray:
        """log10 probability of each predicted token (the words, then </s> if eos)."""
        toks, pos, hist, _ = self._layout([self.encode(sentence)], bos, eos)
        return self._log10_positions(toks, pos, hist) if len(pos) else np.zeros(0)

    def score(self, sentence: str | Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """Total log10 probability, as ``kenlm.Model.score``."""
        return float(self.token_log10probs(sentence, bos, eos).sum())

    def log_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """Natural-log p(word | context); put "<s>" first in `context` for a sentence start."""
        ctx = [BOS_ID if w == "<s>" else int(self.vocab.encode([w])[0]) for w in context]
        wid = EOS_ID if word == "</s>" else int(self.vocab.encode([word])[0])
        return float(self.next_log10(ctx)[wid]) * math.log(10.0)

    def evaluate(self, sentences: Iterable[str | Sequence[str]], batch: int = 20000) -> PerplexityResult:
        total, n, n_oov, oov_sum, n_sent = 0.0, 0, 0, 0.0, 0
        buf: list[np.ndarray] = []

        def flush():
            nonlocal total, n, n_oov, oov_sum
            toks, pos, hist, _ = self._layout(buf, True, True)
            lp = self._log10_positions(toks, pos, hist)
            oov = toks[pos] == UNK_ID
            total += float(lp.sum())
            oov_sum += float(lp[oov].sum())
            n += len(pos)
            n_oov += int(oov.sum())

        for s in sentences:
            buf.append(self.encode(s))
            n_sent += 1
            if len(buf) >= batch:
                flush()
                buf = []
        if buf:
            flush()
        if n == 0:
            raise ValueError("no sentences to evaluate: the test text is empty")
        ppl = 10.0 ** (-total / n)
        rest = n - n_oov
        ppl_no = 10.0 ** (-(total - oov_sum) / rest) if rest else float("nan")
        return PerplexityResult(total, n, n_sent, n_oov, ppl, ppl_no, -total * LOG2_10 / n, self.normalized)

    def perplexity(self, sentences: Iterable[str | Sequence[str]]) -> float:
        return self.evaluate(sentences).perplexity

    # ---- distributions -----------------------------------------------------------------
    def next_distribution(self, context: Sequence[int]) -> np.ndarray:
        """p(w | context) over the vocabulary as a probability vector (<s> gets 0).

        For stupid backoff the scores are renormalised here (they do not sum to 1)."""
        lp = np.asarray(self.next_log10(list(context)[-(self.order - 1):] if self.order > 1 else []), dtype=np.float64)
        p = np.power(10.0, lp)
        p[BOS_ID] = 0.0
        s = p.sum()
        if not np.isfinite(s) or s <= 0:
            raise ValueError("the model gives this context no probability mass")
        return p / s

    def next_entropy(self, context: Sequence[int]) -> float:
        """Entropy H = -sum p log2 p (bits) of the next-token distribution after `context`."""
        from lmkit.ngram.metrics import entropy

        return entropy(self.next_distribution(context), base=2)
