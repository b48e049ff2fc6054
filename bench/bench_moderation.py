"""Moderation quality on the held-out labelled set (tests/data/moderation_eval.jsonl).

Per category: precision and recall of the rules alone, the classifier alone, and both (the
default `Moderator`); the set is written here (EN and ZH prompts and outputs, other wordings
than the training set in src/lmkit/data/safety/moderation_train.jsonl). Also the
prompt-injection detector on tests/data/injection_eval.jsonl (recall, false-positive rate).

    OMP_NUM_THREADS=1 python3 bench/bench_moderation.py

Last line: macro F1 of rules + classifier / rules alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from lmkit.data.safety.classifier import read_labelled  # noqa: E402
from lmkit.data.safety.moderation import ModerationConfig, Moderator, precision_recall  # noqa: E402
from lmkit.data.safety.rules import CATEGORIES  # noqa: E402

EVAL = ROOT.parent / "tests" / "data" / "moderation_eval.jsonl"


def macro_f1(table) -> float:
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r, _ in table.values()]
    return sum(f1) / len(f1)


def main() -> None:
    rows = read_labelled(EVAL)
    print(f"{len(rows)} labelled examples ({sum(r['lang'] == 'zh' for r in rows)} Chinese, "
          f"{sum(r['role'] == 'output' for r in rows)} model outputs, {sum(not r['labels'] for r in rows)} safe)")
    setups = {
        "rules": Moderator(ModerationConfig(classifier=False)),
        "classifier": Moderator(ModerationConfig(), rules=_no_rules()),
        "rules+classifier": Moderator(ModerationConfig()),
    }
    tables = {}
    for name, mod in setups.items():
        t0 = time.perf_counter()
        tables[name] = precision_recall(mod, rows)
        dt = (time.perf_counter() - t0) / len(rows) * 1e3
        print(f"\n{name} ({dt:.2f} ms per text), macro F1 {macro_f1(tables[name]):.3f}")
        print("category    precision  recall  support")
        for c, (p, r, n) in tables[name].items():
            print(f"{c:10s}  {p:9.3f}  {r:6.3f}  {n:7d}")
    _injection()
    print(f"macro F1 rules+classifier/rules: {macro_f1(tables['rules+classifier']) / macro_f1(tables['rules']):.3f}")


def _no_rules():
    from lmkit.data.safety.rules import RuleSet

    return RuleSet({c: {"terms": [], "patterns": [], "allow": []} for c in CATEGORIES})


def _injection() -> None:
    path = ROOT.parent / "tests" / "data" / "injection_eval.jsonl"
    if not path.exists():
        return
    from lmkit.data.safety.prompt_injection import InjectionDetector

    rows = read_labelled(path)
    print(f"\nprompt injection: {len(rows)} passages ({sum(bool(r['labels']) for r in rows)} planted: "
          f"{sum(bool(r['labels']) and r['source'] == 'tool' for r in rows)} in tool results)")
    for name, det in (("rules", InjectionDetector(use_classifier=False)),
                      ("classifier", InjectionDetector(use_rules=False)), ("rules+classifier", InjectionDetector())):
        flags = [det.check(r["text"]).flagged for r in rows]
        pos = [f for f, r in zip(flags, rows) if r["labels"]]
        neg = [f for f, r in zip(flags, rows) if not r["labels"]]
        print(f"{name:17s} recall {sum(pos) / len(pos):.3f}, false-positive rate {sum(neg) / len(neg):.3f}")


if __name__ == "__main__":
    main()
