"""The tasks shipped with lmkit (src/lmkit/eval/tasks/*.yaml + data/), how task names resolve,
and how the bundled data were made (so anyone can rebuild and check them).

Provenance (all deterministic, seeded, nothing downloaded):

* lmkit_corpus_cloze / lmkit_corpus_mc / lmkit_corpus_ppl: sentences and paragraphs of
  `lmkit.corpus.english_text()` (the quickstart corpus: Python's language reference topics and
  standard-library docstrings; text of the Python version that built them, 3.11). The cloze
  asks for a sentence's last word (LAMBADA-style, loglikelihood); the multiple choice asks for
  a sentence's true ending among four (three endings of other sentences); ppl scores whole
  paragraphs (loglikelihood_rolling).
* lmkit_arithmetic: the GRPO task, `lmkit.align.synthetic.arithmetic_problems(seed=0)`:
  the 100 prompts "a+b=" with a, b in 0..9 (generate_until, exact match on the first integer).
* lmkit_notes_qa: the 77 paraphrased questions about the Chinese notes of
  bench/data/notes_qa.jsonl (the RAG benchmark's set); choose the notes section that answers
  the question among four headings (the others: headings of other questions' sections).
* lmkit_notes_zh: sentences of the Chinese notes (`lmkit.corpus.chinese_text()`); choose a
  sentence's true second half among four.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from lmkit.eval.harness.task_config import TaskConfigError


def bundled_tasks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "tasks"


def bundled_task_names() -> list[str]:
    return sorted(p.stem for p in bundled_tasks_dir().glob("*.yaml"))


def resolve_task_files(spec: str | list[str]) -> list[Path]:
    """Task names (bundled), YAML files or directories of YAML files, comma-separated."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise TaskConfigError("no tasks given")
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.suffix in (".yaml", ".yml"):
            if not p.is_file():
                raise TaskConfigError(f"task file {item!r} does not exist")
            out.append(p)
        elif p.is_dir():
            found = sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml"))
            if not found:
                raise TaskConfigError(f"{item}: no *.yaml task files in this directory")
            out.extend(found)
        elif (bundled_tasks_dir() / f"{item}.yaml").is_file():
            out.append(bundled_tasks_dir() / f"{item}.yaml")
        else:
            raise TaskConfigError(f"unknown task {item!r}: not a YAML file, a directory or a bundled task "
                                  f"({', '.join(bundled_task_names())})")
    return out


# -- how the data were made ---------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from lmkit.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _english_sentences(text: str) -> list[str]:
    out = []
    for para in text.split("\n\n"):
        flat = " ".join(para.split())
        for s in re.split(r"(?<=[.!?])\s+", flat):
            words = s.split(" ")
            if 8 <= len(words) <= 30 and s.isascii() and re.fullmatch(r"[A-Za-z][A-Za-z ,;'()-]*[a-z]+\.", s):
                out.append(s)
    return sorted(set(out))


def _endings_mc(sentences: list[str], n: int, rng: random.Random, split_at, delimiter: str) -> list[dict]:
    picked = rng.sample(sentences, n)
    rows = []
    for s in picked:
        head, tail = split_at(s)
        others = [split_at(o)[1] for o in rng.sample(sentences, 8) if o != s]
        distract = [t for t in dict.fromkeys(others) if t != tail][:3]
        gold = rng.randrange(4)
        choices = distract[:gold] + [tail] + distract[gold:]
        rows.append({"context": head, "choices": choices, "label": gold})
    return rows


def build_bundled_data(out_dir: str | os.PathLike | None = None, notes_qa: str | os.PathLike | None = None,
                       seed: int = 0) -> Path:
    """(Re)write the bundled tasks' data files; notes_qa is bench/data/notes_qa.jsonl of the repository."""
    from lmkit.align.synthetic import arithmetic_problems
    from lmkit.corpus import chinese_text, english_text

    out = Path(out_dir) if out_dir else bundled_tasks_dir() / "data"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    en = english_text()
    sents = _english_sentences(en)
    _write_jsonl(out / "corpus_cloze.jsonl", [{"text": s[:-1]} for s in rng.sample(sents, 200)])

    def en_split(s: str) -> tuple[str, str]:
        words = s.split(" ")
        k = max(4, (len(words) * 3) // 5)
        return " ".join(words[:k]), " ".join(words[k:])

    _write_jsonl(out / "corpus_mc.jsonl", _endings_mc(sents, 200, rng, en_split, " "))
    paras = [" ".join(p.split()) for p in en.split("\n\n")]
    paras = sorted({p for p in paras if 400 <= len(p) <= 1200 and p.isascii()})
    _write_jsonl(out / "corpus_ppl.jsonl", [{"text": p} for p in rng.sample(paras, 40)])
    _write_jsonl(out / "arithmetic.jsonl", [{"prompt": p, "answer": a} for p, a in arithmetic_problems(seed=0)])

    zh = chinese_text()
    zh_sents = sorted({s.strip() + "。" for s in re.split(r"[。\n]", zh)
                       if 16 <= len(s.strip()) <= 60 and not re.search(r"[#<>\[\]()|*`$\\]", s)
                       and sum(ord(c) > 0x2E80 for c in s) >= len(s.strip()) * 0.6})

    def zh_split(s: str) -> tuple[str, str]:
        k = len(s) // 2
        return s[:k], s[k:]

    _write_jsonl(out / "notes_zh.jsonl", _endings_mc(zh_sents, 150, rng, zh_split, ""))
    if notes_qa is not None:
        records = [json.loads(line) for line in Path(notes_qa).read_text(encoding="utf-8").splitlines() if line.strip()]
        heading = [re.sub(r"^[\d.、\s]+", "", r["gold"][0]["section"].split(" > ")[-1]) for r in records]
        pool = sorted(set(heading))
        rows = []
        for r, h in zip(records, heading):
            golds = {re.sub(r"^[\d.、\s]+", "", g["section"].split(" > ")[-1]) for g in r["gold"]}
            distract = [x for x in rng.sample(pool, 10) if x not in golds][:3]
            gold = rng.randrange(4)
            rows.append({"question": r["question"], "choices": distract[:gold] + [h] + distract[gold:], "label": gold})
        _write_jsonl(out / "notes_qa.jsonl", rows)
    return out
