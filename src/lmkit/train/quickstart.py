"""The quickstart's training pipeline: corpus -> BPE tokenizer -> token shards -> a small
Llama-style model, exported as a Hugging Face checkpoint. `lmkit quickstart` (infer/commands.py)
runs it, then samples from the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmkit.tokenizers.base import Tokenizer


@dataclass
class QuickstartResult:
    """What the pipeline made: the tokenizer, the exported model and how well it predicts."""

    tokenizer: Tokenizer
    model_dir: str
    eval_ppl: float
    unigram_ppl: float
    parameters: int


def run_quickstart(out: str | Path, steps: int = 1200, vocab_size: int = 2048, seed: int = 0,
                   report: Callable[[str], None] = print) -> QuickstartResult:
    """Train a tokenizer and a model on Python's own documentation under `out` (beside it the
    example inputs of the README's next steps: chat.jsonl, held_out.txt, docs/); `report`
    receives one line per stage ([1/5] ... [4/5])."""
    from lmkit.atomic import atomic_write_text
    from lmkit.corpus import english_text
    from lmkit.data.shards import ShardConfig, prepare_shards
    from lmkit.tokenizers import BPETokenizer
    from lmkit.tokenizers.special_tokens import CHAT_SPECIAL_TOKENS
    from lmkit.train.pretrain import PretrainConfig, run_pretrain, unigram_baseline_ppl
    from lmkit.train.quickstart_examples import write_example_data

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    text = english_text()
    atomic_write_text(corpus, text)
    report(f"[1/5] corpus: {len(text) / 1e6:.1f} MB of Python documentation -> {corpus}")
    examples = write_example_data(out_dir, text)
    report(f"      examples for the next steps: {examples['chat']} (chat SFT data), "
           f"{examples['held_out']} (held-out text), {examples['docs']}/ (documents to index)")

    tok = BPETokenizer.train([corpus], vocab_size=vocab_size, special_tokens=list(CHAT_SPECIAL_TOKENS))
    tok.save(out_dir / "tokenizer.lmkit.json")
    report(f"[2/5] byte-level BPE tokenizer: {tok.vocab_size} tokens")

    shards = out_dir / "shards"
    info = prepare_shards([corpus], tok, shards, ShardConfig(split_by="paragraph", val_fraction=0.05, seed=seed),
                          overwrite=True, progress=False)
    n_train, n_val = info["splits"]["train"]["tokens"], info["splits"]["val"]["tokens"]
    report(f"[3/5] tokenized: {n_train:,} training and {n_val:,} validation tokens "
           f"({len(text.encode()) / (n_train + n_val):.2f} bytes/token)")

    report(f"[4/5] training a Llama-style model for {steps} steps (Ctrl-C stops and saves)")
    cfg = PretrainConfig(
        data=str(shards), tokenizer=str(out_dir / "tokenizer.lmkit.json"), objective="clm", model="llama-tiny",
        seq_len=128, batch_size=16, export_dir=str(out_dir / "model"),
        train={"max_steps": steps, "lr": 3e-3, "warmup_steps": min(50, steps // 5), "schedule": "cosine",
               "min_lr_ratio": 0.1, "weight_decay": 0.1, "eval_every": max(1, steps // 5), "eval_steps": 0,
               "out_dir": str(out_dir / "run"), "seed": seed, "log_every": 10},
    )
    result = run_pretrain(cfg)
    baseline = unigram_baseline_ppl(str(shards), tok.vocab_size)
    return QuickstartResult(tok, result["export_dir"], result["eval_ppl"], baseline, result["parameters"])
