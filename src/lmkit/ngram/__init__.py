"""lmkit.ngram — classical n-gram language models.

Counting with numpy keys (keys.py, counts.py); smoothing: add-k / Laplace (add_k.py),
interpolated modified Kneser–Ney (kneser_ney.py), Katz backoff with Good–Turing
(katz.py), stupid backoff (stupid_backoff.py); log-probabilities, perplexity and entropy
(base.py, metrics.py); sampling (sampling.py); ARPA I/O (arpa.py); CLI (commands.py).
"""

from lmkit.ngram.arpa import ArpaError, read_arpa, write_arpa
from lmkit.ngram.backoff import BackoffLM
from lmkit.ngram.base import NGramLM, PerplexityResult
from lmkit.ngram.counts import NGramCounts, count_ngrams
from lmkit.ngram.metrics import entropy, perplexity_from_logprobs
from lmkit.ngram.sampling import sample_sentence
from lmkit.ngram.storage import load_model, save_counts_model
from lmkit.ngram.train import METHODS, estimate, train_ngram
from lmkit.ngram.vocab import BOS, EOS, UNK, Vocabulary

__all__ = [
    "ArpaError", "BOS", "BackoffLM", "EOS", "METHODS", "NGramCounts", "NGramLM", "PerplexityResult", "UNK",
    "Vocabulary", "count_ngrams", "entropy", "estimate", "load_model", "perplexity_from_logprobs", "read_arpa",
    "sample_sentence", "save_counts_model", "train_ngram", "write_arpa",
]
