"""Multiple-choice scoring by log-likelihood, as in EleutherAI's lm-evaluation-harness.

Each example has a context, several choices and the gold index. The model scores every
continuation ``delimiter + choice`` given the context:

    ll_i = sum over the continuation's tokens of log p(token | context, earlier tokens)

acc = [argmax_i ll_i == gold]; acc_norm = [argmax_i ll_i / len(choice_i) == gold], with the
length in characters of the choice (the harness's acc_norm; `norm="bytes"` uses UTF-8
bytes, like its acc_bytes). Length normalisation removes the bias towards short answers,
whose fewer tokens lose less log-probability.

Tokenization follows the harness: trailing spaces of the context move to the front of the
continuation; the continuation's tokens are ``encode(context + continuation)`` minus the
first ``len(encode(context))`` tokens (so a merge across the boundary is handled the way the
model would see the full text); an empty context is replaced by the BOS/EOS token.

Task files are JSONL, one example per line:
    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0}
("query"/"question" are accepted for context, "label"/"answer" for gold, and an optional
"delimiter", default " ").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from lmkit.errors import ConfigError
from lmkit.jsonl import iter_jsonl
from lmkit.train.losses import cross_entropy


@dataclass
class MCExample:
    context: str
    choices: list[str]
    gold: int
    delimiter: str = " "
    meta: dict = field(default_factory=dict)


def load_task(path: str | os.PathLike) -> list[MCExample]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task file {str(path)!r} does not exist")
    out = []
    for lineno, d in iter_jsonl(path, ConfigError):
        if not isinstance(d, dict):
            raise ConfigError(f"{path}:{lineno}: each line must be a JSON object, got {type(d).__name__}")
        ctx = next((d[k] for k in ("context", "query", "question") if k in d), None)
        gold = next((d[k] for k in ("gold", "label", "answer") if k in d), None)
        choices = d.get("choices")
        if not isinstance(ctx, str) or not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) and c for c in choices):
            raise ConfigError(f"{path}:{lineno}: need a string 'context' and a list of >= 2 non-empty string 'choices'")
        if isinstance(gold, str) and gold in choices:
            gold = choices.index(gold)
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise ConfigError(f"{path}:{lineno}: 'gold' must be an index into the {len(choices)} choices, got {gold!r}")
        out.append(MCExample(ctx, choices, gold, d.get("delimiter", " "),
                             {k: v for k, v in d.items() if k not in ("context", "query", "question", "choices")}))
    if not out:
        raise ConfigError(f"task file {path} holds no examples")
    return out


class LMScorer:
    """log p(continuation | context) with an lmkit (or any logits-returning) causal LM."""

    def __init__(self, model, tokenizer, max_length: int | None = None, bos_id: int | None = None) -> None:
        self.model = model
        self.tok = tokenizer
        self.max_length = max_length or int(getattr(getattr(model, "config", None), "max_seq_len", 0) or 2048)
        if bos_id is None:
            specials = getattr(tokenizer, "special_tokens", {}) or {}
            for name in ("<|endoftext|>", "<s>", "</s>", "<|begin_of_text|>", "[CLS]"):
                if name in specials:
                    bos_id = specials[name]
                    break
        self.bos_id = bos_id

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        if not context:
            if self.bos_id is None:
                raise ConfigError("empty context and the tokenizer has no BOS/EOS token to stand in for it")
            return [self.bos_id], list(self.tok.encode(continuation))
        whole = list(self.tok.encode(context + continuation))
        ctx = list(self.tok.encode(context))
        return ctx, whole[len(ctx):]

    @torch.no_grad()
    def __call__(self, context: str, continuation: str) -> float:
        ctx, cont = self.encode_pair(context, continuation)
        if not cont:
            raise ConfigError(f"continuation {continuation!r} encodes to no tokens")
        full = (ctx + cont)[-(self.max_length + 1):]
        inp = torch.tensor(full[:-1], dtype=torch.long)
        try:
            device = next(self.model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        was = self.model.training
        self.model.eval()
        try:
            logits = self.model(inp[None].to(device)).logits[0].float()
        finally:
            self.model.train(was)
        target = torch.tensor(cont, device=logits.device)
        return float(-cross_entropy(logits[-len(cont):], target, reduction="sum"))


def evaluate_mc(examples: Sequence[MCExample], scorer: Callable[[str, str], float], norm: str = "chars") -> dict:
    """acc and acc_norm over `examples`; scorer(context, continuation) -> log-likelihood."""
    if norm not in ("chars", "bytes"):
        raise ValueError(f"norm must be 'chars' or 'bytes', got {norm!r}")
    if not examples:
        raise ConfigError("no examples to evaluate")
    acc = acc_norm = 0
    details = []
    for ex in examples:
        lls = np.array([scorer(ex.context, ex.delimiter + c) for c in ex.choices], dtype=np.float64)
        lens = np.array([len(c) if norm == "chars" else len(c.encode("utf-8")) for c in ex.choices], dtype=np.float64)
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lens))
        acc += pred == ex.gold
        acc_norm += pred_norm == ex.gold
        details.append({"gold": ex.gold, "pred": pred, "pred_norm": pred_norm, "loglikelihoods": lls.tolist()})
    n = len(examples)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "n": n, "norm": norm, "examples": details}
