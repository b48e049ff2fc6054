"""Classification metrics vs scikit-learn, BLEU vs the sacrebleu CLI, ROUGE, EM/F1 vs the SQuAD v1.1 script."""

from __future__ import annotations

import re
import string
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.eval.classification import accuracy, confusion_matrix, precision_recall_f1, roc_auc, roc_curve
from lmkit.eval.text_metrics import bleu, bleu_from_tokens, exact_match, rouge, squad_scores, token_f1

sk = pytest.importorskip("sklearn.metrics")

pytestmark = pytest.mark.filterwarnings("ignore:A single label")

labels3 = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=40)


@settings(max_examples=80, deadline=None)
@given(labels3)
def test_multiclass_vs_sklearn(pairs):
    y, p = zip(*pairs)
    assert accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p))
    for avg in ("micro", "macro"):
        want = sk.precision_recall_fscore_support(y, p, average=avg, zero_division=0.0)[:3]
        assert precision_recall_f1(y, p, average=avg) == pytest.approx(want)
    per = precision_recall_f1(y, p, average=None)
    want = sk.precision_recall_fscore_support(y, p, average=None, zero_division=0.0)[:3]
    for a, b in zip(per, want):
        assert np.allclose(a, b)
    m, labs = confusion_matrix(y, p)
    assert np.array_equal(m, sk.confusion_matrix(y, p, labels=labs))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=40))
def test_binary_vs_sklearn(pairs):
    y, p = zip(*pairs)
    want = sk.precision_recall_fscore_support(y, p, average="binary", zero_division=0.0)[:3]
    assert precision_recall_f1(y, p) == pytest.approx(want)
    want0 = sk.precision_recall_fscore_support(y, p, average="binary", pos_label=0, zero_division=0.0)[:3]
    assert precision_recall_f1(y, p, pos_label=0) == pytest.approx(want0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(-5, 5)), min_size=2, max_size=50))
def test_roc_auc_vs_sklearn(pairs):
    y, s = zip(*pairs)  # integer scores: many ties
    if len(set(y)) < 2:
        with pytest.raises(ValueError, match="one class"):
            roc_auc(y, s)
        return
    assert roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
    fpr, tpr, thr = roc_curve(y, s)
    f2, t2, th2 = sk.roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, f2) and np.allclose(tpr, t2) and np.allclose(thr[1:], th2[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))


def test_classification_bad_input():
    with pytest.raises(ValueError, match="same length"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="binary"):
        precision_recall_f1([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="no samples"):
        accuracy([], [])


# ---- BLEU ---------------------------------------------------------------------------------------

HYPS = ["The cat is on the mat.", "There is a cat on the mat!", "a dog barks loudly at night",
        "It is a guide to action which ensures that the military always obeys the commands of the party."]
REFS1 = ["The cat is on the mat.", "The cat sits on the mat.", "the dog barked at night",
         "It is a guide to action that ensures that the military will forever heed Party commands."]
REFS2 = ["There is a cat on the mat.", "A cat is on the mat.", "at night a dog barks",
         "It is the guiding principle which guarantees the military forces always being under the command of the Party."]


def test_bleu_matches_sacrebleu_cli(tmp_path):
    pytest.importorskip("sacrebleu")
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "r1.txt").write_text("\n".join(REFS1) + "\n")
    (tmp_path / "r2.txt").write_text("\n".join(REFS2) + "\n")
    for refs, files in ((REFS1, ["r1.txt"]), (list(zip(REFS1, REFS2)), ["r1.txt", "r2.txt"])):
        out = subprocess.run([sys.executable, "-m", "sacrebleu", *[str(tmp_path / f) for f in files], "-i",
                              str(tmp_path / "hyp.txt"), "-b", "-w", "4"], capture_output=True, text=True, check=True)
        assert bleu(HYPS, refs)["score"] == pytest.approx(float(out.stdout.strip()), abs=1e-4)


def test_bleu_from_tokens_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = np.random.default_rng(0)
    words = "a b c d e f g".split()
    for _ in range(20):
        hyps = [" ".join(rng.choice(words, rng.integers(4, 12))) for _ in range(5)]
        r1 = [" ".join(rng.choice(words, rng.integers(4, 12))) for _ in range(5)]
        r2 = [" ".join(rng.choice(words, rng.integers(4, 12))) for _ in range(5)]
        want = sacrebleu.corpus_bleu(hyps, [r1, r2], tokenize="none", smooth_method="none").score
        got = bleu_from_tokens([h.split() for h in hyps], [[a.split(), b.split()] for a, b in zip(r1, r2)])
        assert got == pytest.approx(want, abs=1e-9)


def test_rouge():
    pytest.importorskip("rouge_score")
    r = rouge(["the cat sat on the mat"], ["the cat was on the mat"])
    # unigrams: hyp {the:2,cat,sat,on,mat} vs ref {the:2,cat,was,on,mat}: 5 of 6 match
    assert r["rouge1"]["precision"] == pytest.approx(5 / 6) and r["rouge1"]["recall"] == pytest.approx(5 / 6)
    # bigrams: (the cat), (on the), (the mat) shared out of 5
    assert r["rouge2"]["f"] == pytest.approx(3 / 5)
    # LCS: the cat on the mat = 5
    assert r["rougeL"]["f"] == pytest.approx(5 / 6)
    assert rouge(["语言模型"], ["语言模型"])["rouge1"]["f"] == 0.0  # default tokenizer drops CJK
    zh = rouge(["语言模型很好"], ["语言模型不错"], tokenize="char")
    assert zh["rouge1"]["recall"] == pytest.approx(4 / 6)


# ---- SQuAD v1.1 (the official script's logic, as the oracle) -------------------------------------

def squad_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1(prediction, ground_truth):
    prediction_tokens = squad_normalize(prediction).split()
    ground_truth_tokens = squad_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_em(prediction, ground_truth):
    return squad_normalize(prediction) == squad_normalize(ground_truth)


def metric_max(fn, prediction, ground_truths):
    return max(fn(prediction, gt) for gt in ground_truths)


answer_text = st.text(alphabet=st.sampled_from(list("abc The an,.!' -")), max_size=20)


@settings(max_examples=150, deadline=None)
@given(answer_text, st.lists(answer_text, min_size=1, max_size=3))
def test_em_f1_vs_squad_script(pred, golds):
    assert exact_match(pred, golds) == float(metric_max(squad_em, pred, golds))
    assert token_f1(pred, golds) == pytest.approx(metric_max(squad_f1, pred, golds))


def test_squad_scores():
    preds = ["Denver Broncos", "the Panthers", "1990"]
    golds = [["Denver Broncos", "Broncos"], ["Carolina Panthers"], ["1991"]]
    s = squad_scores(preds, golds)
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
