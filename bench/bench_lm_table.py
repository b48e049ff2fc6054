"""Held-out perplexity of n-gram, LSTM and Transformer language models on the same text.

Data: bench/corpus/en.txt, non-empty lines; every 10th line is held out, the rest is the
training set. Tokenization, identical for every row: lmkit's WhitespaceTokenizer trained on
the training lines (VOCAB words incl. specials; rarer words -> <unk>, which every model
then predicts like a word). Each held-out line is scored independently as
``<s> w1 ... wm </s>``: the m words and </s> are predicted, each from the same line's
earlier tokens only, so every row predicts exactly the same tokens and
perplexity = exp(mean NLL) is comparable across rows.

Rows: n = 2..5 x {add-k (k=1 Laplace, and k=0.01), Katz, interpolated modified KN}, plus
stupid backoff (its scores are not normalised: its "perplexity" is not a perplexity and is
listed for reference only); an LSTM (lmkit LSTMLM) and a small Transformer (lmkit
DecoderLM, llama-style) trained with lmkit's Trainer for SECONDS each on 64-token
blocks of the concatenated training lines.

Run: OMP_NUM_THREADS=1 python3 bench/bench_lm_table.py [SECONDS]  (default 180; --ngram-only skips the neural rows)   (quality figure; no lock needed)
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 8000
SEQ = 64
BATCH = 16


def load_split():
    from lmkit.corpus import write_corpora

    lines = [ln for ln in (write_corpora(ROOT / "bench" / "corpus") / "en.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    train = [ln for i, ln in enumerate(lines) if i % 10 != 9]
    test = [ln for i, ln in enumerate(lines) if i % 10 == 9]
    return train, test


def ngram_rows(train_words, test_words):
    from lmkit.ngram import train_ngram

    rows = []
    for n in (2, 3, 4, 5):
        for method, params, label in (("addk", {"k": 1.0}, "add-1 (Laplace)"), ("addk", {"k": 0.01}, "add-0.01"),
                                      ("katz", {}, "Katz (Good-Turing)"), ("kn", {}, "modified Kneser-Ney"),
                                      ("stupid", {}, "stupid backoff (not normalised)")):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lm = train_ngram(train_words, n, method, **params)
            r = lm.evaluate(test_words)
            rows.append((f"{n}-gram {label}", r.perplexity, r.n_tokens, time.perf_counter() - t0))
    return rows


def blocks(seqs, rng):
    stream = np.concatenate(seqs)
    n = (len(stream) - 1) // SEQ
    data = torch.from_numpy(stream[: n * SEQ].reshape(n, SEQ).astype(np.int64))

    class Batches:
        def __iter__(self):
            order = rng.permutation(n)
            for i in range(0, n - BATCH + 1, BATCH):
                b = data[order[i:i + BATCH]]
                yield {"input_ids": b, "labels": b}

    return Batches()


@torch.no_grad()
def line_nll(model, seqs):
    model.eval()
    nll, count = 0.0, 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for i in range(0, len(order), 64):
        group = [seqs[j] for j in order[i:i + 64]]
        L = max(len(s) for s in group)
        ids = torch.zeros(len(group), L, dtype=torch.long)
        mask = torch.zeros(len(group), L, dtype=torch.bool)
        for r, s in enumerate(group):
            ids[r, : len(s)] = torch.from_numpy(s.astype(np.int64))
            mask[r, : len(s)] = True
        logp = torch.log_softmax(model(ids).logits.float(), -1)
        tgt = ids[:, 1:]
        lp = logp[:, :-1].gather(-1, tgt[..., None])[..., 0]
        m = mask[:, 1:]
        nll -= float(lp[m].double().sum())
        count += int(m.sum())
    return nll, count


def train_neural(name, cfg, train_seqs, test_seqs, seconds, out_dir):
    from lmkit.models.build import build_model
    from lmkit.train import TrainConfig, Trainer

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    probe = Trainer(build_model(cfg), TrainConfig(max_steps=10, lr=3e-3, out_dir=str(out_dir / (name + "-probe")),
                                                   progress=False, log_every=100), blocks(train_seqs, rng))
    t0 = time.perf_counter()
    probe.train(until=2)
    t0 = time.perf_counter()
    probe.train(until=8)
    per_step = (time.perf_counter() - t0) / 6
    steps = max(20, int(seconds / per_step))
    torch.manual_seed(0)
    model = build_model(cfg)
    tc = TrainConfig(max_steps=steps, lr=5e-3, warmup_steps=min(50, steps // 10), schedule="cosine",
                     min_lr_ratio=0.1, weight_decay=0.01, out_dir=str(out_dir / name), progress=False, log_every=50)
    tr = Trainer(model, tc, blocks(train_seqs, rng))
    t0 = time.perf_counter()
    hist = tr.train()
    dt = time.perf_counter() - t0
    nll, count = line_nll(model, test_seqs)
    n_params = sum(p.numel() for p in model.parameters())
    return (f"{name} ({n_params / 1e6:.2f}M params, {steps} steps, final train loss {hist[-1]['loss']:.3f})",
            math.exp(nll / count), count, dt)


def main():
    ngram_only = "--ngram-only" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seconds = float(args[0]) if args else 180.0
    from lmkit.models.config import ModelConfig
    from lmkit.tokenizers.simple import WhitespaceTokenizer

    train, test = load_split()
    tok = WhitespaceTokenizer.train(train, vocab_size=VOCAB)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")

    def words(line):
        return [tok.id_to_token(i) for i in tok.encode(line)]  # unknown words -> "<unk>"

    train_w, test_w = [words(x) for x in train], [words(x) for x in test]
    oov = sum(w == "<unk>" for s in test_w for w in s) / sum(map(len, test_w))
    print(f"en.txt: {len(train)} training lines ({sum(map(len, train_w))} words), {len(test)} held-out lines "
          f"({sum(map(len, test_w))} words, {100 * oov:.2f}% <unk>); vocabulary {tok.vocab_size}")
    rows = ngram_rows(train_w, test_w)
    n_pred = rows[0][2]

    def seq(line):
        return np.array([bos, *tok.encode(line), eos], dtype=np.int32)

    train_s, test_s = [seq(x) for x in train], [seq(x) for x in test]
    V = tok.vocab_size
    with tempfile.TemporaryDirectory() as d:
        lstm = ModelConfig(arch="lstm", vocab_size=V, d_model=192, n_layers=1, n_heads=1, d_ff=192,
                           max_seq_len=SEQ, dropout=0.0, tie_embeddings=True)
        tfm = ModelConfig(arch="decoder", model_type="llama", norm="rmsnorm", activation="silu", gated_ffn=True,
                          position="rope", vocab_size=V, d_model=192, n_layers=2, n_heads=4, n_kv_heads=4,
                          d_ff=512, max_seq_len=512, dropout=0.0, tie_embeddings=True)
        for name, cfg in () if ngram_only else (("LSTM", lstm), ("Transformer (llama-style)", tfm)):
            row = train_neural(name, cfg, train_s, test_s, seconds, Path(d))
            assert row[2] == n_pred, (row[2], n_pred)  # same predicted tokens as the n-gram rows
            rows.append(row)
    print("\n| model | held-out perplexity | predicted tokens | train+eval seconds |\n|---|---|---|---|")
    for name, ppl, n, dt in rows:
        print(f"| {name} | {ppl:.2f} | {n} | {dt:.1f} |")
    best = min((r for r in rows if "stupid" not in r[0]), key=lambda r: r[1])
    print(f"\nbest: {best[0]} ({best[1]:.2f})")


if __name__ == "__main__":
    main()
