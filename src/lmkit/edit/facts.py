"""A synthetic world of facts ("The capital of Zarnia is Quell") in CounterFact's record shape.

Subjects (invented lands), relations (capital, language) and objects (invented cities and
languages) are made-up words, so a model trained here knows them only from this world, and an
edit's effect can be measured against a known truth. One record per fact, as in CounterFact
(Meng et al. 2022, ROME):

    {"case_id": 0,
     "requested_rewrite": {"prompt": "The capital of {} is", "subject": "Zarnia", "relation_id": "capital",
                           "target_new": {"str": "Quell"}, "target_true": {"str": "Morv"}},
     "paraphrase_prompts": [...],      the same fact in the relation's other templates
     "neighborhood_prompts": [...],    other subjects with the same relation and the same true object
     "essence_prompts": [...],         the subject's other relations (what an edit must not disturb)
     "generation_prompts": [...]}      openings for the fluency measure

Everything is a function of the seed.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from lmkit.errors import ConfigError

# relation -> templates with {} for the subject; the object follows each template after a space
RELATIONS: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {} is", "{}'s capital city is", "In {}, the seat of government is"),
    "language": ("The official language of {} is", "People in {} speak", "{}'s main language is"),
}
GENERATION_TEMPLATES = ("{}'s", "People in {}")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "st",
           "th", "tr", "sh", "zh", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
_CODAS = ("", "n", "r", "l", "s", "th", "sk", "rm", "nd", "ll", "x")
_SUFFIXES = {"subject": ("ia", "or", "and", "avia", "esh", "un"), "capital": ("", "", "holm", "grad", "ton"),
             "language": ("ic", "ese", "ish", "ian"), "given": ("", "", "a", "o", "el")}
PARTS_PER_NAME_WORD = 5  # two-word subjects: each word is shared by about this many subjects


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    obj: str

    def statement(self, template: str) -> str:
        return f"{template.format(self.subject)} {self.obj}."


@dataclass
class FactWorld:
    """Subjects, the object pool of each relation, and one object per (subject, relation)."""

    subjects: list[str]
    objects: dict[str, list[str]]
    facts: list[Fact]

    def statements(self) -> list[str]:
        """Every fact in every template of its relation: the training text of the facts model."""
        return [f.statement(t) for f in self.facts for t in RELATIONS[f.relation]]

    def paragraphs(self, n: int, per_paragraph: int = 6, seed: int = 0) -> list[str]:
        """`n` texts of `per_paragraph` random statements run together: the world's "generic text"
        (as the model read it in training), whose keys ROME and MEMIT must leave alone."""
        return paragraphs_of(self.statements(), n, per_paragraph, seed)

    def truth(self, subject: str, relation: str) -> str:
        return self._index[(subject, relation)]

    @property
    def _index(self) -> dict[tuple[str, str], str]:
        return {(f.subject, f.relation): f.obj for f in self.facts}


def paragraphs_of(statements: list[str], n: int, per_paragraph: int = 6, seed: int = 0) -> list[str]:
    """`n` texts of `per_paragraph` random `statements` run together (fewer if there are fewer)."""
    rng = random.Random(seed)
    k = min(per_paragraph, len(statements))
    return [" ".join(rng.sample(statements, k)) for _ in range(n)] if k else []


def _word(rng: random.Random, kind: str) -> str:
    syllables = rng.choice((1, 2))
    w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return (w + rng.choice(_SUFFIXES[kind])).capitalize()


def _unique_words(rng: random.Random, kind: str, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        w = _word(rng, kind)
        if w not in taken and 4 <= len(w) <= 12:
            taken.add(w)
            out.append(w)
    return out


def _two_word_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """`n` distinct names "Given Land" from two pools of about n / PARTS_PER_NAME_WORD words, so
    each word belongs to several subjects and only the two together say which one is meant (as
    "Danielle Darrieux"). Measured: the facts model then recalls at the answer position, not at
    the subject, so the benchmark keeps one-word names (docs/editing.md, the second round)."""
    pool = max(2, -(-n // PARTS_PER_NAME_WORD))
    while pool * pool < n:
        pool += 1
    firsts = _unique_words(rng, "given", pool, taken)
    seconds = _unique_words(rng, "subject", pool, taken)
    pairs = rng.sample([(a, b) for a in range(pool) for b in range(pool)], n)
    return [f"{firsts[a]} {seconds[b]}" for a, b in pairs]


def make_world(n_subjects: int = 400, n_objects: int = 12, seed: int = 0, name_words: int = 1) -> FactWorld:
    """`n_subjects` lands, each with one object per relation drawn from a pool of `n_objects`
    (so about n_subjects / n_objects subjects share each object: the neighbourhood). With
    `name_words=2` a land's name is two words, each shared with a few other lands."""
    if n_subjects < 2 or n_objects < 2:
        raise ConfigError(f"a fact world needs n_subjects >= 2 and n_objects >= 2, got {n_subjects}, {n_objects}")
    if name_words not in (1, 2):
        raise ConfigError(f"a land's name has 1 or 2 words, got name_words={name_words}")
    rng = random.Random(seed)
    taken: set[str] = set()
    subjects = (_unique_words(rng, "subject", n_subjects, taken) if name_words == 1
                else _two_word_names(rng, n_subjects, taken))
    objects = {r: _unique_words(rng, r, n_objects, taken) for r in RELATIONS}
    facts = [Fact(s, r, rng.choice(objects[r])) for s in subjects for r in RELATIONS]
    return FactWorld(subjects, objects, facts)


def counterfact_records(world: FactWorld, seed: int = 0, n_neighbours: int = 5) -> list[dict]:
    """One CounterFact-shaped record per fact of `world` (a false target_new from the same pool)."""
    rng = random.Random(seed + 1)
    by_object: dict[tuple[str, str], list[str]] = {}
    for f in world.facts:
        by_object.setdefault((f.relation, f.obj), []).append(f.subject)
    records = []
    for case_id, f in enumerate(world.facts):
        templates = RELATIONS[f.relation]
        k = rng.randrange(len(templates))
        new = rng.choice([o for o in world.objects[f.relation] if o != f.obj])
        others = [s for s in by_object[(f.relation, f.obj)] if s != f.subject]
        if not others:  # no subject shares the object: any other subject with this relation
            others = [s for s in world.subjects if s != f.subject]
        neighbours = rng.sample(others, min(n_neighbours, len(others)))
        records.append({
            "case_id": case_id,
            "requested_rewrite": {"prompt": templates[k], "subject": f.subject, "relation_id": f.relation,
                                  "target_new": {"str": new}, "target_true": {"str": f.obj}},
            "paraphrase_prompts": [t.format(f.subject) for i, t in enumerate(templates) if i != k],
            "neighborhood_prompts": [rng.choice(templates).format(s) for s in neighbours],
            "essence_prompts": [t.format(f.subject) for r in RELATIONS if r != f.relation for t in RELATIONS[r]],
            "generation_prompts": [t.format(f.subject) for t in GENERATION_TEMPLATES],
        })
    return records


def distinct_subject_records(records: list[dict], n: int, seed: int = 0) -> list[dict]:
    """`n` records whose subjects all differ (two edits of one subject share ROME/MEMIT's key)."""
    rng = random.Random(seed)
    shuffled = rng.sample(records, len(records))
    out, seen = [], set()
    for r in shuffled:
        s = r["requested_rewrite"]["subject"]
        if s not in seen:
            seen.add(s)
            out.append(r)
        if len(out) == n:
            return out
    raise ConfigError(f"only {len(out)} records have distinct subjects, {n} were asked for")


def write_records(records: list[dict], path: str | os.PathLike) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def read_records(path: str | os.PathLike) -> list[dict]:
    """CounterFact-shaped records from a JSON-lines file (or a JSON list)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON lines of CounterFact records ({exc})") from None
    for i, r in enumerate(data):
        rw = r.get("requested_rewrite") if isinstance(r, dict) else None
        if not isinstance(rw, dict) or not {"prompt", "subject", "target_new"} <= set(rw) or "{}" not in rw["prompt"]:
            raise ConfigError(f"{path}: record {i} needs requested_rewrite with prompt (containing {{}}), subject, "
                              "target_new")
    return data
