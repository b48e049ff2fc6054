#!/usr/bin/env python3
"""Byte-level BPE training time: lmkit vs Hugging Face `tokenizers`, same settings.

Both train from the file (streamed), GPT-2 split without prefix space, the 256-byte
alphabet, min_frequency=2, one special token, at vocab 8192 and 32000. HF uses all cores
(rayon); lmkit is one Python process. On en.txt (1.7 MB) no pair reaches count 2 beyond
~13.8k tokens, so both stop there at "32000"; CORPUS2 (default mixed.txt, 8 MB) gives a
real 32000 run.

    python3 bench/bench_bpe_train.py [CORPUS] [CORPUS2]

Last line: ``ratio ours/HF: X`` = lmkit time / HF time at vocab 8192 on CORPUS
(lower is better for lmkit).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from lmkit.corpus import write_corpora
from lmkit.tokenizers.bpe import BPETokenizer

EOT = "<|endoftext|>"


def versions() -> str:
    import platform

    import regex
    import tokenizers

    extra = ""
    try:
        import tiktoken

        extra = f", tiktoken {tiktoken.__version__}"
    except ImportError:
        pass
    return f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}{extra}, regex {regex.__version__}"


def train_ours(path: Path, vocab: int) -> tuple[float, int]:
    t = time.perf_counter()
    tok = BPETokenizer.train([path], vocab, min_frequency=2, special_tokens=[EOT])
    return time.perf_counter() - t, tok.vocab_size


def hf_bpe(vocab: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained Hugging Face byte-level BPE (GPT-2 split, no prefix space) and its trainer:
    256-byte alphabet, min_frequency=2, one special token -- lmkit's training settings."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return tok, trainer


def train_hf(path: Path, vocab: int) -> tuple[float, int]:
    tok, trainer = hf_bpe(vocab)
    t = time.perf_counter()
    tok.train([str(path)], trainer)
    return time.perf_counter() - t, tok.get_vocab_size()


def main() -> None:
    here = write_corpora(Path(__file__).parent / "corpus")
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "en.txt"
    corpus2 = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "mixed.txt"
    runs = [(corpus, 8192), (corpus, 32000)] + ([(corpus2, 32000)] if corpus2.exists() else [])
    ratio_8k = None
    print(versions())
    print(f"{'corpus':12s} {'MB':>6s} {'vocab':>6s} {'lmkit s':>8s} {'HF s':>8s} {'ours/HF':>8s}  (vocab reached)")
    for path, vocab in runs:
        t_ours, v_ours = min(train_ours(path, vocab) for _ in range(2))
        t_hf, v_hf = min(train_hf(path, vocab) for _ in range(2))
        ratio = t_ours / t_hf
        if path == corpus and vocab == 8192:
            ratio_8k = ratio
        mb = path.stat().st_size / 1e6
        print(f"{path.name:12s} {mb:6.2f} {vocab:6d} {t_ours:8.2f} {t_hf:8.2f} {ratio:8.2f}  ({v_ours} / {v_hf})")
    print(f"ratio ours/HF: {ratio_8k:.2f}")


if __name__ == "__main__":
    main()
