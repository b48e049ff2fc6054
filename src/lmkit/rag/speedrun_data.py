"""The data of `lmkit speedrun`, all built from what every install has (no download):

* the pretraining corpus: Python's documentation (`lmkit.corpus`), as in the quickstart;
* the instruction data: the corpus's (term, definition) pairs as "Explain TERM." chats
  (`train.quickstart_examples.definitions`), split by term into training terms (SFT and DPO)
  and held-out terms (the instruction tasks: reply loss, preference accuracy, multiple choice);
* preference pairs: chosen = the term's definition, rejected = another term's definition;
* the RAG questions: the 77 hand-written questions about the bundled notes
  (`corpus_data/notes_qa.jsonl`, the same set as bench/data/notes_qa.jsonl).

Decontamination (`data.decontaminate`): the held-out definitions are taken *out of* the
pretraining corpus (13-gram / containment / MinHash), since the corpus is where they come from;
the card states how many items were found before and that none is left after.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit.rag.speedrun_profile import SpeedrunProfile


def reference_topics() -> str:
    """Python's language reference topics (pydoc_data): the first part of `corpus.english_text()`,
    without the slow pass over the standard library's docstrings."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


def notes_questions_path() -> Path:
    return Path(__file__).resolve().parents[1] / "corpus_data" / "notes_qa.jsonl"


def notes_questions() -> list[dict[str, Any]]:
    """The 77 questions about the notes, each with its gold section(s)."""
    with open(notes_questions_path(), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def chat_row(term: str, definition: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Explain {term}."}, {"role": "assistant", "content": definition}]


@dataclass
class SpeedrunData:
    corpus: str  # the pretraining text, after decontamination
    held_out: str  # text for perplexity, never trained on
    train_terms: list[tuple[str, str]]
    eval_terms: list[tuple[str, str]]
    decontamination: dict[str, Any] = field(default_factory=dict)

    def preference_rows(self, which: str, seed: int = 0) -> list[dict[str, Any]]:
        """{"prompt": [user turn], "chosen": definition, "rejected": another term's definition}."""
        terms = self.train_terms if which == "train" else self.eval_terms
        rng = random.Random(seed)
        rows = []
        for i, (term, definition) in enumerate(terms):
            j = (i + rng.randrange(1, len(terms))) % len(terms)
            rows.append({"prompt": [{"role": "user", "content": f"Explain {term}."}], "chosen": definition,
                         "rejected": terms[j][1]})
        return rows

    def multiple_choice(self, seed: int = 0, n_choices: int = 4):
        """4-way items over the held-out terms: which definition answers "Explain TERM."?"""
        from lmkit.eval.multiple_choice import MCExample

        rng = random.Random(seed)
        items = []
        for i, (term, definition) in enumerate(self.eval_terms):
            others = [d for j, (_, d) in enumerate(self.eval_terms) if j != i]
            choices = rng.sample(others, n_choices - 1)
            gold = rng.randrange(n_choices)
            choices.insert(gold, definition)
            items.append(MCExample(f"Explain {term}.", choices, gold, delimiter=""))
        return items


def _paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def build_data(profile: SpeedrunProfile, seed: int = 0) -> SpeedrunData:
    """Corpus, held-out text and the term split; the held-out items removed from the corpus."""
    from lmkit.corpus import english_text
    from lmkit.data.decontaminate import Decontaminator, decontaminate
    from lmkit.data.records import Record
    from lmkit.train.quickstart_examples import definitions, lmkit_docstrings

    text = reference_topics() if profile.corpus == "topics" else english_text()
    cut = profile.corpus_chars or len(text)
    train_text = text[:cut]
    if profile.held_out == "tail":
        held_out = text[cut:cut + profile.held_out_chars]
        held_out = held_out[held_out.find("\n\n") + 2:] if "\n\n" in held_out else held_out
    else:
        held_out = lmkit_docstrings()[: profile.held_out_chars]
    pairs = definitions(train_text)
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n_eval = min(profile.n_eval_terms, len(pairs) // 3)
    eval_terms = [pairs[i] for i in sorted(order[:n_eval])]
    train_terms = [pairs[i] for i in sorted(order[n_eval:])]

    eval_sets = {
        "instruction tasks (held-out definitions)": [f"Explain {t}. {d}" for t, d in eval_terms],
        "held-out text (perplexity)": _paragraphs(held_out),
        "notes questions (RAG)": [q["question"] for q in notes_questions()],
    }
    paragraphs = _paragraphs(train_text)
    kept: list[str] = []
    report = decontaminate(lambda: (Record(p, "corpus") for p in paragraphs), eval_sets,
                           write=lambda r: kept.append(r.text), remove=True, progress=False)
    corpus = "\n\n".join(kept) + "\n"
    index = Decontaminator(eval_sets)
    rows = [f"Explain {t}. {d}" for t, d in train_terms]  # a training definition may quote a held-out one
    dropped = [i for i, matches in enumerate(index.scan(rows)) if matches]
    train_terms = [p for i, p in enumerate(train_terms) if i not in set(dropped)]
    # what is left: every training text (the cleaned corpus, the SFT and DPO rows) scanned again
    training = [*kept, *(f"Explain {t}. {d}" for t, d in train_terms)]
    left = {m.item for matches in index.scan(training) for m in matches}
    index_items = index.items
    after = {name: sum(1 for i in left if index_items[i].eval_set == name) for name in eval_sets}
    decon = {
        "method": "13-gram, 5-gram containment >= 0.5, MinHash Jaccard >= 0.7 (lmkit.data.decontaminate)",
        "corpus_paragraphs": report.documents, "paragraphs_removed": report.removed,
        "train_terms_dropped": len(dropped),
        "sets": {name: {"items": s["items"], "found_before": s["contaminated_items"], "left_after": after[name],
                        "by_method": s["by_method"]} for name, s in report.eval_sets.items()},
        "left_after_total": sum(after.values()),
    }
    return SpeedrunData(corpus, held_out, train_terms, eval_terms, decon)
