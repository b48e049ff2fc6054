"""A small Llama-style model trained to know a `FactWorld`: the patient of the editing methods.

The tokenizer is lmkit's byte-level BPE trained on the world's statements; the model is an lmkit
`DecoderLM` (model_type "llama", so it saves as a Hugging Face checkpoint). Each training row
starts at a statement and continues with random others, so a fact is known both at the start of
a text and after unrelated sentences (ROME averages its key over such prefixes).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from lmkit.edit.facts import FactWorld
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset
from lmkit.tokenizers.bpe import BPETokenizer

END_OF_TEXT = "<|endoftext|>"


@dataclass
class FactsModelConfig:
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    vocab_size: int = 1000
    steps: int = 1500
    batch_size: int = 32
    seq_len: int = 48
    lr: float = 3e-3
    seed: int = 0


def train_facts_tokenizer(world: FactWorld, vocab_size: int) -> BPETokenizer:
    return BPETokenizer.train(world.statements(), vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT])


def training_rows(statements: list[list[int]], continued: list[list[int]], n_rows: int, seq_len: int,
                  rng: random.Random) -> torch.Tensor:
    """[n_rows, seq_len] ids: a statement, then random others (their ids with a leading space)."""
    rows = []
    for _ in range(n_rows):
        row = list(rng.choice(statements))
        while len(row) < seq_len:
            row += rng.choice(continued)
        rows.append(row[:seq_len])
    return torch.tensor(rows, dtype=torch.long)


def train_facts_model(world: FactWorld, cfg: FactsModelConfig | None = None,
                      progress: bool = False) -> tuple[DecoderLM, BPETokenizer]:
    """(model in eval mode, tokenizer) after `cfg.steps` AdamW steps on the world's statements."""
    cfg = cfg or FactsModelConfig()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tok = train_facts_tokenizer(world, cfg.vocab_size)
    texts = world.statements()
    first = [tok.encode(s) for s in texts]
    cont = [tok.encode(" " + s) for s in texts]
    mcfg = preset("llama-tiny", vocab_size=tok.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                  n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads, d_ff=cfg.d_ff, max_seq_len=max(128, cfg.seq_len))
    model = DecoderLM(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    model.train()
    for step in range(cfg.steps):
        batch = training_rows(first, cont, cfg.batch_size, cfg.seq_len, rng)
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress and (step % 100 == 0 or step == cfg.steps - 1):
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    return model.eval(), tok
