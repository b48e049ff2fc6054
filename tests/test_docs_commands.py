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
from pathlib import Path

import pytest

from docs_commands import ROOT, Outcome, Session, command_lines

README = ROOT / "README.md"
LIFE_OF_A_MODEL = "lmkit quickstart --out runs/qs"
QUICK_ENV = {"LMKIT_QUICKSTART_STEPS": "20"}


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
    failed = []
    try:
        for line in lines:  # every line runs, in order, and must exit 0 (issue 26)
            outcome = session.run(line)
            if outcome.returncode != 0:
                failed.append(outcome)
    finally:
        session.close()
    assert not failed, _failure_report(failed)


# ---- docs/*.md: every line, in order, on a tiny checkpoint -----------------------------------

SKIP = {
    "--store pgvector": "needs a PostgreSQL server with pgvector",
    "lmkit rag ask my.index \"Why RAG?\" --base-url": "needs a served chat model (README's block runs "
                                                      "serve -> rag -> agent against one)",
}
PLACEHOLDERS = {"MODEL_DIR": "model", "TEACHER_DIR": "model", "sft_model/": "model/", "my-model": "model",
                "DOMAIN_TEXT": "text.txt", "DOMAIN_SHARDS": "SHARDS", "GENERAL_SHARDS": "SHARDS",
                "BASE_DIR": "model", "TUNED_A": "model", "TUNED_B": "model"}
SHRINK = [(r"--steps \d+", "--steps 3"), (r"--finetune-steps \d+", "--finetune-steps 4"),
          (r"--prune-every \d+", "--prune-every 2"), (r"--n-prunes \d+", "--n-prunes 2"),
          (r"--profile full", "--tiny")]  # the full speedrun is a benchmark (bench/bench_speedrun.py)
STEP_COMMANDS = ("sft", "finetune", "dpo", "ppo", "grpo", "reward-train", "distill")
DOCS = ["alignment.md", "compression.md", "continual-pretraining.md", "data.md", "diffusion.md", "evaluation.md",
        "finetuning.md", "interpretability.md", "merging.md", "multimodal.md", "quantization.md", "rag.md",
        "safety.md", "serving.md", "speedrun.md", "training.md"]


def _tiny_inputs(cwd: Path) -> None:
    """What the docs' lines read: a tiny chat checkpoint with its tokenizer (`model`), its
    tokenizer file, token shards, and small data files in the formats the docs describe."""
    from lmkit.align.synthetic import arithmetic_problems, letter_preferences
    from lmkit.data.sft import toy_pretrain_text, toy_sft_rows
    from lmkit.data.shards import ShardConfig, prepare_shards
    from lmkit.hub import save_pretrained
    from lmkit.peft.finetune import toy_task

    task = toy_task(seed=0, pretrain_steps=20, d_model=64)  # 64: the docs' --group-size 64 divides it
    save_pretrained(task.base, cwd / "model")
    task.tokenizer.save_hf_json(cwd / "model" / "tokenizer.json")
    task.tokenizer.save(cwd / "tok.json")
    text = toy_pretrain_text(200, 0)
    for name in ("train.txt", "test.txt", "text.txt"):
        (cwd / name).write_text(text, encoding="utf-8")
    # paragraphs (--split-by paragraph), enough that 5 % of them fill one 256-token window
    (cwd / "corpus.txt").write_text(toy_pretrain_text(3000, 1).replace("\n", "\n\n"), encoding="utf-8")
    prepare_shards([cwd / "corpus.txt"], task.tokenizer, cwd / "SHARDS", ShardConfig(val_fraction=0.1, eos_token="<|im_end|>"), progress=False)

    def jsonl(name, rows):
        (cwd / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    jsonl("data.jsonl", toy_sft_rows(64, 0))
    jsonl("prefs.jsonl", [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                          for p in letter_preferences(32, seed=3)])
    jsonl("math.jsonl", [{"prompt": p, "answers": a} for p, a in arithmetic_problems(8, max_operand=4)])
    (cwd / "prompts.txt").write_text("abc\nhgf\ndd\n", encoding="utf-8")
    from PIL import Image  # a digit-like picture for `lmkit clip classify`

    Image.new("L", (16, 16), 0).save(cwd / "my_digit.png")
    jsonl("task.jsonl", [{"context": "The opposite of hot is", "choices": ["cold", "red"], "gold": 0}])
    (cwd / "predictions.txt").write_text("Paris is the capital of France.\n", encoding="utf-8")
    jsonl("references.jsonl", [{"reference": "Paris is the capital of France.", "answers": ["Paris"],
                                "facts": ["Paris"]}])
    docs = cwd / "docs"
    docs.mkdir()
    (docs / "rag.md").write_text("# RAG\n\n## Why RAG\n\nRetrieval gives the model facts it never saw.\n"
                                 "\n## 为什么需要RAG\n\n检索让模型看到新的事实。\n", encoding="utf-8")
    jsonl("qa.jsonl", [{"question": "Why RAG?", "gold": [{"source": "rag.md", "section": "RAG > Why RAG"}]}])


def _run_yaml(doc: Path, cwd: Path) -> None:
    """training.md's run.yaml, as printed, with its step counts and batch shrunk."""
    block = next(m.group(1) for m in re.finditer(r"^```yaml\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M))
    for key, value in (("max_steps", 2), ("warmup_steps", 1), ("eval_every", 1), ("save_every", 2), ("batch_size", 2)):
        block = re.sub(rf"^(\s*{key}:)\s*\d+", rf"\g<1> {value}", block, flags=re.M)
    (cwd / "run.yaml").write_text(block, encoding="utf-8")


def doc_line(line: str) -> str:
    """A docs line with its placeholders named and its step counts shrunk (nothing else)."""
    for old, new in PLACEHOLDERS.items():
        line = re.sub(rf"(?<![\w/-]){re.escape(old)}(?![\w-])", new, line)
    for pattern, repl in SHRINK:
        line = re.sub(pattern, repl, line)
    command = line.split()[1]
    if command in STEP_COMMANDS and "--steps" not in line and "tinit=" not in line:  # AdaLoRA's schedule needs its steps
        line = re.sub(r"(\s+#.*)?$", r" --steps 3\1", line, count=1)
    return line


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCS)
def test_doc_command_lines_run(name, tmp_path):
    doc = ROOT / "docs" / name
    lines = command_lines(doc)
    assert lines, f"{name} has no lmkit lines: drop it from DOCS"
    _tiny_inputs(tmp_path)
    if "lmkit pretrain --config run.yaml" in doc.read_text(encoding="utf-8"):
        _run_yaml(doc, tmp_path)
    session = Session(tmp_path, env={"HF_HUB_OFFLINE": "1"})
    failed = []
    try:
        for line in lines:
            if any(key in line for key in SKIP):
                continue
            outcome = session.run(doc_line(line), timeout=600)
            if outcome.returncode != 0:
                failed.append(outcome)
    finally:
        session.close()
    assert not failed, _failure_report(failed)


README_SKIP = {
    "pip install torch==2.13.0 && pip install -e . && lmkit quickstart":
        "installs packages (network) and trains the full-size quickstart; the life-of-a-model block "
        "runs lmkit quickstart",
}


def test_every_doc_with_lmkit_lines_is_run():
    with_lines = {p.name for p in (ROOT / "docs").glob("*.md") if command_lines(p)}
    assert with_lines == set(DOCS), with_lines ^ set(DOCS)
    life = command_lines(README, block_containing=LIFE_OF_A_MODEL)
    others = [m.group(0) for m in re.finditer(r"^.*\blmkit \w.*$", "\n".join(
        b for b in re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
        if LIFE_OF_A_MODEL not in b), re.M)]
    assert life and all(line.strip() in README_SKIP for line in others), others


def test_quickstart_example_data_are_inputs_the_commands_accept(tmp_path):
    """chat.jsonl, held_out.txt and docs/ that the README's lines read, from a corpus excerpt."""
    from lmkit.corpus import english_text
    from lmkit.data.sft import read_sft_file
    from lmkit.rag.loaders import load_directory
    from lmkit.train.quickstart_examples import write_example_data

    paths = write_example_data(tmp_path, english_text()[:400_000])
    conversations = read_sft_file(paths["chat"])
    assert len(conversations) >= 20
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in conversations)
    held_out = paths["held_out"].read_text(encoding="utf-8")
    assert 5_000 < len(held_out) < 30_000 and held_out not in english_text()
    assert len(list(paths["docs"].glob("*.md"))) >= 2
    documents, _ = load_directory(paths["docs"])
    assert len(documents) == len(list(paths["docs"].glob("*.md")))
