#!/usr/bin/env python3
"""Byte-level BPE encoding throughput (MB/s): lmkit vs Hugging Face `tokenizers` vs tiktoken.

All three get the SAME vocabulary (an 8192-token ByteLevel BPE that HF trains on the corpus,
loaded by lmkit from its tokenizer.json and by tiktoken from the same ranks) and the SAME
input: the whole corpus file as ONE string, in ONE call, in ONE process. The ids must agree.

"first call" = best of 3 runs, each on a freshly loaded tokenizer (empty word cache: HF and
lmkit both cache words); "repeat" = best of 3 further calls on the same (warm) object.
tiktoken has no word cache, so its two figures differ only by noise.

    python3 bench/bench_bpe_encode.py [CORPUS]      (default bench/corpus/en.txt)

Last line: ``ratio ours/HF: X`` = lmkit throughput / HF throughput, first call each
(higher is better for lmkit).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import tiktoken
from bench_bpe_train import EOT, hf_bpe, versions  # same HF settings and version line as the training bench
from tokenizers import Tokenizer, decoders

from lmkit.corpus import write_corpora
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.bytes_level import token_str_to_bytes
from lmkit.tokenizers.pretokenize import GPT2_PATTERN


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else write_corpora(Path(__file__).parent / "corpus") / "en.txt"
    text = corpus.read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6

    hf, trainer = hf_bpe(8192)
    hf.decoder = decoders.ByteLevel()
    hf.train([str(corpus)], trainer)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tokenizer.json"
        hf.save(str(path))
        data = json.loads(path.read_text(encoding="utf-8"))
        ranks = {token_str_to_bytes(s): i for s, i in data["model"]["vocab"].items() if s != EOT}
        enc = tiktoken.Encoding("bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 0})
        # first call: best of 3, each on a freshly loaded tokenizer (empty word caches)
        firsts: dict[str, list[float]] = {"lmkit": [], "HF": [], "tiktoken": []}
        for _ in range(3):
            ours = BPETokenizer.load(path)
            ids_ours, t = timed(lambda: ours.encode(text))
            firsts["lmkit"].append(t)
            hf = Tokenizer.from_file(str(path))
            ids_hf, t = timed(lambda: hf.encode(text, add_special_tokens=False).ids)
            firsts["HF"].append(t)
            ids_tk, t = timed(lambda: enc.encode_ordinary(text))
            firsts["tiktoken"].append(t)
            assert ids_ours == ids_hf == ids_tk, "the three tokenizers disagree"
    t_ours_first, t_hf_first, t_tk_first = (min(firsts[k]) for k in ("lmkit", "HF", "tiktoken"))
    t_ours = min(timed(lambda: ours.encode(text))[1] for _ in range(3))
    t_hf = min(timed(lambda: hf.encode(text, add_special_tokens=False).ids)[1] for _ in range(3))
    t_tk = min(timed(lambda: enc.encode_ordinary(text))[1] for _ in range(3))

    print(versions())
    print(f"corpus {corpus.name}: {mb:.2f} MB, {len(ids_ours)} tokens, vocab {ours.vocab_size}")
    print(f"{'':10s} {'first call MB/s':>16s} {'repeat MB/s':>12s}")
    for name, first, rep in [("lmkit", t_ours_first, t_ours), ("HF", t_hf_first, t_hf), ("tiktoken", t_tk_first, t_tk)]:
        print(f"{name:10s} {mb / first:16.2f} {mb / rep:12.2f}")
    print(f"ratio ours/tiktoken (first call): {t_tk_first / t_ours_first:.2f}")
    print(f"ratio ours/tiktoken (repeat):     {t_tk / t_ours:.2f}")
    print(f"ratio ours/HF (repeat):           {t_hf / t_ours:.2f}")
    print(f"ratio ours/HF: {t_hf_first / t_ours_first:.2f}")


if __name__ == "__main__":
    main()
