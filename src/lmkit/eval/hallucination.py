"""Automatic hallucination measures from the notes (幻觉评估): fact overlap and QA consistency.

1. Entity / number overlap (命名实体错误). Facts are extracted from the generated text and
   from the reference/source: numbers (``1,000`` = ``1000``, ``3.50`` = ``3.5``, percent
   kept), capitalised multi-word names in Latin-script text, and for Chinese the words of
   two or more characters found by lmkit's dictionary segmenter (lmkit.tokenizers.segment)
   minus common function words — Chinese has no capitals, so every content word is a
   candidate fact. The notes' metric:

       hallucination rate = |generated facts absent from the reference| / |generated facts|

   (lower is better; it needs a reference that covers the facts). We also report
   precision (1 - rate) and recall (reference facts that the generation kept).

2. QA-based consistency. Question–answer pairs about the generated text are either given,
   or made from its facts: each fact becomes a cloze question (its sentence with the fact
   blanked) whose expected answer is the fact. Each question is then answered against the
   SOURCE — by a callable ``answer(question, source) -> str`` (a model: `model_answerer`;
   default: `overlap_answerer`, which fills the blank from the most similar source
   sentence) — and compared with the expected answer by SQuAD token F1. A faithful text
   scores near 1; a hallucinated fact yields a question the source answers differently.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable, Sequence

from lmkit.eval.text_metrics import exact_match, token_f1

_NUM = re.compile(r"(?<![0-9A-Za-z_.])[-+]?\d[\d,]*(?:\.\d+)?%?")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_CAP_RUN = re.compile(r"\b[A-Z][\w'’-]*(?:\s+(?:of|the|de|van|von|and|&)?\s*[A-Z][\w'’-]*)*")
_SENT = re.compile(r"(?<=[.!?。！？])\s*")
_EN_STOP = {
    "The", "A", "An", "In", "On", "At", "It", "He", "She", "They", "We", "I", "This", "That", "These", "Those",
    "His", "Her", "Their", "Its", "Our", "My", "There", "Here", "When", "While", "After", "Before", "But", "And",
    "Or", "If", "As", "By", "For", "From", "To", "With", "Of", "Yes", "No", "However", "Also", "Then",
}
_ZH_STOP = {"我们", "你们", "他们", "她们", "它们", "这个", "那个", "这些", "那些", "因为", "所以", "但是", "而且", "如果",
            "以及", "或者", "已经", "可以", "没有", "一个", "什么", "怎么", "还是", "就是", "自己", "进行", "他的", "她的"}


def normalize_number(s: str) -> str:
    pct = s.endswith("%")
    s = s.rstrip("%").replace(",", "").lstrip("+")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s + ("%" if pct else "")


def extract_numbers(text: str) -> list[str]:
    return [normalize_number(m.group()) for m in _NUM.finditer(text)]


@lru_cache(maxsize=2)
def _default_dictionary():
    from lmkit.tokenizers.segment import Dictionary, jieba_dictionary_path

    return Dictionary.load(jieba_dictionary_path())


def _chinese_words(text: str, dictionary=None) -> list[str]:
    from lmkit.tokenizers.segment import segment

    words = segment(text, dictionary or _default_dictionary())
    return [w for w in words if len(w) >= 2 and _CJK.search(w) and w not in _ZH_STOP]


def extract_entities(text: str, dictionary=None) -> list[str]:
    """Capitalised names (Latin script) plus, where the text has Chinese, its content words."""
    ents = []
    for sent in _SENT.split(text):
        for m in _CAP_RUN.finditer(sent):
            words = m.group().split()
            while words and words[0] in _EN_STOP:  # "The Eiffel Tower" -> "Eiffel Tower"
                words = words[1:]
            if words:
                ents.append(" ".join(words))
    if _CJK.search(text):
        ents.extend(_chinese_words(text, dictionary))
    return ents


@dataclass
class FactOverlap:
    generated: list[str]
    reference: list[str]
    unsupported: list[str]  # generated facts absent from the reference
    hallucination_rate: float  # |unsupported| / |generated| (0 when nothing was generated)
    precision: float
    recall: float

    def to_dict(self) -> dict:
        return asdict(self)


def _overlap(gen: list[str], ref: list[str], key=lambda s: s) -> FactOverlap:
    g, r = list(dict.fromkeys(gen)), list(dict.fromkeys(ref))
    rk = {key(x) for x in r}
    gk = {key(x) for x in g}
    unsupported = [x for x in g if key(x) not in rk]
    rate = len(unsupported) / len(g) if g else 0.0
    recall = sum(1 for x in r if key(x) in gk) / len(r) if r else 1.0
    return FactOverlap(g, r, unsupported, rate, 1.0 - rate if g else 1.0, recall)


def fact_overlap(generated: str, reference: str, dictionary=None) -> dict:
    """Entity and number overlap of `generated` with `reference` (see the module doc)."""
    ents = _overlap(extract_entities(generated, dictionary), extract_entities(reference, dictionary), key=str.lower)
    nums = _overlap(extract_numbers(generated), extract_numbers(reference))
    allf = _overlap([*("e:" + e.lower() for e in ents.generated), *("n:" + n for n in nums.generated)],
                    [*("e:" + e.lower() for e in ents.reference), *("n:" + n for n in nums.reference)])
    return {"entities": ents.to_dict(), "numbers": nums.to_dict(), "hallucination_rate": allf.hallucination_rate,
            "unsupported": ents.unsupported + nums.unsupported}


# ---- QA-based consistency -----------------------------------------------------------------------

BLANK = "____"


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if s.strip()]


def cloze_questions(text: str, dictionary=None) -> list[tuple[str, str]]:
    """(question, answer) pairs: each number/entity of each sentence blanked out in turn."""
    pairs = []
    for sent in sentences(text):
        facts = [m.group() for m in _NUM.finditer(sent)]
        facts += [e for e in extract_entities(sent, dictionary) if not _NUM.fullmatch(e)]
        for f in dict.fromkeys(facts):
            if f in sent:
                pairs.append((sent.replace(f, BLANK, 1), f))
    return pairs


def _tokens(s: str) -> set[str]:
    return {t for t in re.findall(r"\w+", s.lower())} | set(_CJK.findall(s))


def _words(s: str) -> list[str]:
    return re.findall(r"\w+", s.lower())


def overlap_answerer(question: str, source: str, window: int = 3) -> str:
    """Fill the blank of a cloze question from the source — no model needed.

    Take the source sentence with the highest token overlap (Jaccard) with the question; among
    its facts (numbers, entities) not already in the question, pick the one whose neighbours
    (`window` words on each side) best match the blank's neighbours in the question."""
    q = _tokens(question.replace(BLANK, " "))
    best, best_score = None, -1.0
    for s in sentences(source):
        t = _tokens(s)
        score = len(q & t) / (len(q | t) or 1)
        if score > best_score:
            best, best_score = s, score
    if best is None:
        return ""
    left_q, _, right_q = question.partition(BLANK)
    lq, rq = set(_words(left_q)[-window:]), set(_words(right_q)[:window])
    cands = [m.group() for m in _NUM.finditer(best)] + extract_entities(best)
    scored = []
    for i, c in enumerate(cands):
        if c.lower() in question.lower():
            continue
        pos = best.find(c)
        ls, rs = set(_words(best[:pos])[-window:]), set(_words(best[pos + len(c):])[:window])
        scored.append((len(lq & ls) + len(rq & rs), -i, c))
    return max(scored)[2] if scored else ""


def model_answerer(model, tokenizer, max_new_tokens: int = 16) -> Callable[[str, str], str]:
    """An answer(question, source) callable that asks a causal LM (greedy decoding)."""
    from lmkit.infer.generate import generate_text

    def answer(question: str, source: str) -> str:
        prompt = f"{source}\nFill in the blank.\nQuestion: {question}\nAnswer:"
        out = generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens, do_sample=False)
        return out.strip().split("\n")[0].strip()

    return answer


def qa_consistency(generated: str, source: str, answer: Callable[[str, str], str] | None = None,
                   qa_pairs: Sequence[tuple[str, str]] | None = None, dictionary=None) -> dict:
    """Mean token F1 / EM between expected answers and the answers found in `source`."""
    answer = answer or overlap_answerer
    pairs = list(qa_pairs) if qa_pairs is not None else cloze_questions(generated, dictionary)
    if not pairs:
        return {"n_questions": 0, "f1": None, "exact_match": None, "questions": []}
    rows = []
    for q, expected in pairs:
        got = answer(q, source)
        rows.append({"question": q, "expected": expected, "answer": got,
                     "f1": token_f1(got, expected) if _CJK.search(expected) is None else _char_f1(got, expected),
                     "exact_match": exact_match(got, expected)})
    n = len(rows)
    return {"n_questions": n, "f1": sum(r["f1"] for r in rows) / n,
            "exact_match": sum(r["exact_match"] for r in rows) / n, "questions": rows}


def _char_f1(pred: str, gold: str) -> float:
    """Token F1 over characters, for Chinese answers (no spaces between words)."""
    from collections import Counter

    p, g = [c for c in pred if not c.isspace()], [c for c in gold if not c.isspace()]
    same = sum((Counter(p) & Counter(g)).values())
    if not same:
        return 0.0
    pr, rc = same / len(p), same / len(g)
    return 2 * pr * rc / (pr + rc)
