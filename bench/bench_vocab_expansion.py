"""Vocabulary expansion (词表扩增) on Chinese text for a model whose tokenizer was trained on English.

General corpus: bench/corpus/en.txt (lmkit.corpus.english_text: pydoc topics + stdlib docstrings).
Domain corpus: bench/corpus/zh.txt (lmkit.corpus.chinese_text: the Chinese LLM notes shipped as
package data in src/lmkit/corpus_data/notes), 90 % for training, the last 10 % held out.

1. A byte-level BPE (--vocab) is trained on English; a small Llama-style model is pretrained on
   English with it (--base-steps).
2. A domain BPE is trained on the Chinese training text and --new-tokens of its pieces are
   appended (tokenizers/bpe_vocab_merge.py). Reported: tokens per character of the held-out
   Chinese text before and after.
3. From the same English model, --steps steps of training on Chinese, same batches of
   --batch x --seq tokens, same optimizer:
     unexpanded            all weights, the English tokenizer;
     expanded, leaf mean   new rows = mean of the old tokens that spell them; the first
                           --new-rows-steps train only the new rows, then all weights;
     expanded, mean init   new rows = mean of all old rows (hub/add_tokens.py's choice),
                           same schedule: shows what the leaf-mean start is worth.
   Reported: held-out Chinese perplexity per character (exp of nats per character, so the
   tokenizers are compared on the same text), at step 0 and every --eval-every steps.

    OMP_NUM_THREADS=1 python3 bench/bench_vocab_expansion.py            # ~6 min on a busy 2-core CPU
    OMP_NUM_THREADS=1 python3 bench/bench_vocab_expansion.py --quick

Last line: "expanded/unexpanded zh ppl-per-char <r>  tokens-per-char drop <f>x".
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def model_config(vocab: int, args):
    from lmkit.models.config import ModelConfig

    return ModelConfig.from_dict(dict(arch="decoder", model_type="llama", norm="rmsnorm", activation="silu",
                                      gated_ffn=True, position="rope", d_model=args.d_model, n_layers=2, n_heads=4,
                                      n_kv_heads=2, d_ff=args.d_model * 8 // 3, max_seq_len=max(args.seq, 64),
                                      norm_eps=1e-5, vocab_size=vocab, tie_embeddings=False))


def windows(ids: np.ndarray, seq: int) -> torch.Tensor:
    n = len(ids) // seq
    return torch.from_numpy(ids[: n * seq].reshape(n, seq).astype(np.int64))


def train(model, data: torch.Tensor, steps: int, batch: int, lr: float, seed: int, on_eval=None, eval_every=0,
          warmup: int = 10, params=None, offset: int = 0) -> None:
    """AdamW (no weight decay), linear warmup then cosine, random windows of `data`."""
    params = [p for p in (params or model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        x = data[torch.randint(0, len(data), (batch,), generator=g)]
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if on_eval is not None and eval_every and (offset + step + 1) % eval_every == 0:
            on_eval(offset + step + 1)
    model.eval()


@torch.no_grad()
def nats_per_char(model, tok, text: str, seq: int) -> float:
    """Mean negative log-likelihood per character of `text` (first token of each window unscored;
    its characters are not counted)."""
    model.eval()
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    x = windows(ids, seq)
    nll = 0.0
    for i in range(0, len(x), 16):
        out = model(input_ids=x[i:i + 16], labels=x[i:i + 16])
        nll += out.loss.item() * x[i:i + 16, 1:].numel()
    scored = b"".join(tok.token_bytes(int(t)) for t in x[:, 1:].reshape(-1))
    return nll / len(scored.decode("utf-8", "replace"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run for a smoke test")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=1500)
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--new-rows-steps", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--en-chars", type=int, default=600_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.vocab, args.new_tokens, args.base_steps, args.steps = 1024, 600, 150, 60
        args.new_rows_steps, args.eval_every, args.en_chars = 20, 20, 200_000
    torch.manual_seed(args.seed)
    from lmkit.corpus import write_corpora
    from lmkit.hub.expand_vocab import expand_embeddings, train_new_rows_only
    from lmkit.models.build import build_model
    from lmkit.tokenizers.bpe import BPETokenizer
    from lmkit.tokenizers.bpe_vocab_merge import expand_bpe

    corpus = write_corpora(ROOT / "bench" / "corpus")
    en = (corpus / "en.txt").read_text(encoding="utf-8")[: args.en_chars]
    zh = (corpus / "zh.txt").read_text(encoding="utf-8")
    cut = int(len(zh) * 0.9)
    zh_train, zh_test = zh[:cut], zh[cut:]
    t0 = time.perf_counter()
    base_tok = BPETokenizer.train([en], args.vocab, special_tokens=["<|endoftext|>"])
    expansion = expand_bpe(base_tok, [zh_train], args.new_tokens)
    big_tok = expansion.tokenizer
    tpc_before = len(base_tok.encode(zh_test)) / len(zh_test)
    tpc_after = len(big_tok.encode(zh_test)) / len(zh_test)
    print(f"tokenizers: English BPE {base_tok.vocab_size} tokens; +{len(expansion.new_ids)} Chinese pieces "
          f"({expansion.skipped} unreachable skipped) in {time.perf_counter() - t0:.1f}s; e.g. "
          + " ".join(expansion.new_pieces()[:12]))
    print(f"held-out Chinese tokens/char: {tpc_before:.3f} -> {tpc_after:.3f} ({tpc_before / tpc_after:.2f}x fewer); "
          f"English tokens/char: {len(base_tok.encode(en[:100_000])) / 1e5:.3f} -> "
          f"{len(big_tok.encode(en[:100_000])) / 1e5:.3f}")

    base = build_model(model_config(base_tok.vocab_size, args))
    t0 = time.perf_counter()
    train(base, windows(np.asarray(base_tok.encode(en), dtype=np.int64), args.seq), args.base_steps, args.batch,
          3e-3, args.seed)
    print(f"English base model: {args.base_steps} steps in {time.perf_counter() - t0:.0f}s; held-out Chinese "
          f"ppl/char {math.exp(nats_per_char(base, base_tok, zh_test, args.seq)):.1f}")

    runs = {}
    for name in ("unexpanded", "expanded, leaf mean", "expanded, mean init"):
        model = copy.deepcopy(base)
        tok = base_tok if name == "unexpanded" else big_tok
        if name == "expanded, leaf mean":
            expand_embeddings(model, big_tok.vocab_size, expansion.leaves)
        elif name == "expanded, mean init":
            expand_embeddings(model, big_tok.vocab_size, {})
        data = windows(np.asarray(tok.encode(zh_train), dtype=np.int64), args.seq)
        curve = {0: math.exp(nats_per_char(model, tok, zh_test, args.seq))}

        def on_eval(step, model=model, tok=tok, curve=curve):
            curve[step] = math.exp(nats_per_char(model, tok, zh_test, args.seq))
            model.train()

        t0 = time.perf_counter()
        first = args.new_rows_steps if name != "unexpanded" else 0
        if first:
            handles = train_new_rows_only(model, base_tok.vocab_size)
            train(model, data, first, args.batch, args.lr * 2, args.seed + 1, on_eval, args.eval_every)
            for h in handles:
                h.remove()
            model.requires_grad_(True)
        train(model, data, args.steps - first, args.batch, args.lr, args.seed + 2, on_eval, args.eval_every,
              offset=first)
        curve[args.steps] = math.exp(nats_per_char(model, tok, zh_test, args.seq))
        runs[name] = curve
        print(f"{name}: {len(data)} windows of {args.seq} tokens = {len(zh_train) / len(data):.0f} chars each; "
              f"{time.perf_counter() - t0:.0f}s; ppl/char " + ", ".join(f"step {s}: {v:.2f}" for s, v in sorted(curve.items())))

    steps = sorted(runs["unexpanded"])
    print("\n| step | " + " | ".join(runs) + " |")
    print("|---:|" + "---:|" * len(runs))
    for s in steps:
        print(f"| {s} | " + " | ".join(f"{runs[k].get(s, float('nan')):.2f}" for k in runs) + " |")
    ratio = runs["expanded, leaf mean"][args.steps] / runs["unexpanded"][args.steps]
    print(f"expanded/unexpanded zh ppl-per-char {ratio:.3f}  tokens-per-char drop {tpc_before / tpc_after:.2f}x")


if __name__ == "__main__":
    main()
