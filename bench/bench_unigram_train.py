"""Unigram training time: lmkit vs sentencepiece, vocab 8000, on en.txt.

Both train on the first 90% of the lines of ``bench/corpus/en.txt`` with the same settings
(``model_type=unigram``, identity normalisation, character coverage 1.0 -- lmkit always
keeps every character -- and sentencepiece's other defaults: max piece length 16,
shrinking factor 0.75, 2 EM sub-iterations). Each trainer runs ``--repeats`` times; the
median wall time is reported (the machine may be shared).

Quality: the held-out log-likelihood per character of the last 10% of the lines, both
models scored by the same function, ``UnigramTokenizer.log_likelihood``: scores are
renormalised to log-probabilities over the normal pieces, every line is segmented by
Viterbi under them, and the sum of piece log-probabilities is divided by the number of
normalised characters (``▁`` included). Higher (closer to 0) is better.

Last line: ``ratio ours/spm time: X`` (wall time of lmkit's training / sentencepiece's;
lower is better).

    python3 bench/bench_unigram_train.py [--vocab 8000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmkit.corpus import write_corpora  # noqa: E402
from lmkit.tokenizers.unigram import UnigramTokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None, help="default: bench/corpus/en.txt (built by lmkit.corpus)")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import sentencepiece as spm

    if args.corpus is None:
        args.corpus = write_corpora(ROOT / "bench" / "corpus") / "en.txt"
    lines = args.corpus.read_text(encoding="utf-8").splitlines()
    cut = int(len(lines) * 0.9)
    train, held = lines[:cut], lines[cut:]
    tmp = Path(tempfile.mkdtemp(prefix="bench_unigram_"))
    train_file = tmp / "train.txt"
    train_file.write_text("\n".join(train) + "\n", encoding="utf-8")
    print(f"corpus {args.corpus.name}: {len(train)} training lines ({train_file.stat().st_size / 1e6:.2f} MB), "
          f"{len(held)} held-out lines; vocab {args.vocab}; sentencepiece {spm.__version__}")

    spm_times, our_times = [], []
    ours = None
    for r in range(args.repeats):
        t0 = time.perf_counter()
        spm.SentencePieceTrainer.train(
            input=str(train_file), model_prefix=str(tmp / "spm"), model_type="unigram",
            vocab_size=args.vocab, normalization_rule_name="identity", character_coverage=1.0,
            num_threads=2, minloglevel=2,
        )
        spm_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = UnigramTokenizer.train([train_file], vocab_size=args.vocab)
        our_times.append(time.perf_counter() - t0)
        print(f"run {r + 1}: sentencepiece {spm_times[-1]:.2f} s, lmkit {our_times[-1]:.2f} s")
    ref = UnigramTokenizer.from_sentencepiece(tmp / "spm.model")

    t_spm, t_ours = statistics.median(spm_times), statistics.median(our_times)
    lp_ours, chars = ours.log_likelihood(held)
    lp_ref, _ = ref.log_likelihood(held)
    ll_ours, ll_ref = lp_ours / chars, lp_ref / chars
    shared = len({p for p, _, _ in ours.pieces} & {p for p, _, _ in ref.pieces})
    print(f"median training time: sentencepiece {t_spm:.2f} s, lmkit {t_ours:.2f} s")
    print(f"held-out log-likelihood per char ({chars} chars): sentencepiece {ll_ref:.4f}, lmkit {ll_ours:.4f} "
          f"(lmkit/spm {ll_ours / ll_ref:.4f}; < 1 means lmkit is better)")
    print(f"pieces in common: {shared} of {args.vocab}")
    print(f"ratio ours/spm time: {t_ours / t_spm:.2f}")


if __name__ == "__main__":
    main()
