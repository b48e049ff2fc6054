"""Every fenced `lmkit ...` line of README.md and docs/*.md runs (tests/docs_commands.py), so the
docs cannot drift from the CLI again.

README's "life of a model" runs verbatim, in order, shrunk only through the environment
variables the README names (LMKIT_QUICKSTART_STEPS, LMKIT_QUICKSTART_VOCAB_SIZE); the one
liberty taken is the server's port (a free one instead of 8000, in `serve` and in the URLs).
Each docs/*.md runs its lines in order on a tiny checkpoint and tiny inputs written first;
placeholders (MODEL_DIR, SHARDS, ...) name them, and step counts are shrunk through the flags
the line already has. Lines that cannot run here are listed in SKIP with the reason."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from docs_commands import ROOT, Outcome, Session, command_lines

README = ROOT / "README.md"
LIFE_OF_A_MODEL = "lmkit quickstart --out runs/qs"
QUICK_ENV = {"LMKIT_QUICKSTART_STEPS": "20", "LMKIT_QUICKSTART_VOCAB_SIZE": "600"}

# README lines that fail until other open work is merged (issue 26), by the start of the line,
# with the reason. When such a line fails, the test xfails (strict=False) after running the rest
# of the block: a line that needs its output runs on the quickstart model instead
# (FALLBACK) and must then pass.
KNOWN_FAILURES = {
    "lmkit finetune runs/qs/model": "the quickstart tokenizer has no <|im_start|>/<|im_end|> tokens yet "
                                    "(reserved chat tokens in lmkit tokenizers, issue 26)",
}
BLOCKED_BY = {"lmkit merge runs/qs/model runs/lora": "lmkit finetune runs/qs/model"}
FALLBACK = {"runs/chat.gguf": "runs/qs/chat.gguf", "runs/chat": "runs/qs/model"}


def _failure_report(outcomes: list[Outcome]) -> str:
    return "\n\n".join(f"$ {o.line}\n(exit {o.returncode})\n{o.output[-3000:]}" for o in outcomes)


def test_readme_life_of_a_model_runs_verbatim(tmp_path):
    lines = command_lines(README, block_containing=LIFE_OF_A_MODEL)
    assert lines[0].startswith(LIFE_OF_A_MODEL) and len(lines) >= 12, lines
    for step in ("finetune", "merge", "generate", "quantize", "export gguf", "serve", "chat", "eval ppl",
                 "rag index", "rag ask", "agent"):
        assert any(line.startswith(f"lmkit {step}") or f"&& lmkit {step}" in line for line in lines), step
    readme = README.read_text(encoding="utf-8")
    for name in QUICK_ENV:
        assert name in readme  # the shrinking is documented, not a test-only trick

    session = Session(tmp_path, env=QUICK_ENV)
    failed, known, blocked = [], [], []
    try:
        for line in lines:
            upstream = next((up for start, up in BLOCKED_BY.items() if line.startswith(start)), None)
            if upstream and any(k.line.startswith(upstream) for k in known):
                blocked.append(line)
                continue
            if known:  # an upstream line failed: its output does not exist, use the base model's
                for old, new in FALLBACK.items():
                    line = line.replace(f"{old} ", f"{new} ")
            outcome = session.run(line)
            if outcome.returncode == 0:
                continue
            if any(outcome.line.startswith(k) for k in KNOWN_FAILURES):
                known.append(outcome)
            else:
                failed.append(outcome)
    finally:
        session.close()
    assert not failed, _failure_report(failed)
    if known:
        reasons = "; ".join(f"{o.line.split(' runs/')[0]}: {r}" for o in known
                            for k, r in KNOWN_FAILURES.items() if o.line.startswith(k))
        pytest.xfail(f"{reasons} (blocked: {blocked}); the other lines passed on the quickstart model")
