"""Multiple-choice log-likelihood scoring (hand computation, transformers logits), hallucination
measures, and the `lmkit eval` CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from lmkit.errors import ConfigError
from lmkit.eval.hallucination import (
    cloze_questions,
    extract_entities,
    extract_numbers,
    fact_overlap,
    model_answerer,
    overlap_answerer,
    qa_consistency,
)
from lmkit.eval.multiple_choice import LMScorer, evaluate_mc, load_task

transformers = pytest.importorskip("transformers")

TASK = [
    {"context": "The capital of France is", "choices": ["Paris", "a big old city"], "gold": 0},
    {"query": "2 + 2 =", "choices": ["4", "four", "5"], "label": 1},
    {"question": "Cats say", "choices": ["meow", "woof"], "answer": "woof"},
]
TEXT = "The capital of France is Paris. 2 + 2 = 4 four 5. Cats say meow woof. a big old city"


@pytest.fixture()
def task_file(tmp_path):
    p = tmp_path / "task.jsonl"
    p.write_text("\n".join(json.dumps(d) for d in TASK) + "\n")
    return p


def test_mc_hand_computation(task_file):
    ex = load_task(task_file)
    assert [e.gold for e in ex] == [0, 1, 1]
    table = {("The capital of France is", " Paris"): -6.0, ("The capital of France is", " a big old city"): -9.0,
             ("2 + 2 =", " 4"): -2.0, ("2 + 2 =", " four"): -3.0, ("2 + 2 =", " 5"): -2.5,
             ("Cats say", " meow"): -4.0, ("Cats say", " woof"): -4.4}
    res = evaluate_mc(ex, lambda c, x: table[(c, x)])
    # acc: argmax ll -> [0 ok, 0 (gold 1) wrong, 0 (gold 1) wrong] = 1/3
    # acc_norm: ll / len(choice): ex1 [-6/5, -9/14 = -0.64] -> 1 wrong; ex2 [-2, -0.75, -2.5] -> 1 ok;
    #           ex3 [-1.0, -1.1] -> 0 wrong  => 1/3
    assert res["acc"] == pytest.approx(1 / 3) and res["acc_norm"] == pytest.approx(1 / 3)
    assert [d["pred"] for d in res["examples"]] == [0, 0, 0]
    assert [d["pred_norm"] for d in res["examples"]] == [1, 1, 0]
    # bytes vs chars differ only for non-ASCII choices
    assert evaluate_mc(ex, lambda c, x: table[(c, x)], norm="bytes")["acc_norm"] == res["acc_norm"]


def test_mc_bad_task_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for line, msg in [("{", "not valid JSON"), ('{"context": "x", "choices": ["a"], "gold": 0}', ">= 2"),
                      ('{"context": "x", "choices": ["a", "b"], "gold": 5}', "index"),
                      ('{"context": "x", "choices": ["a", "b"]}', "index")]:
        bad.write_text(line + "\n")
        with pytest.raises(ConfigError, match=msg):
            load_task(bad)
    bad.write_text("\n")
    with pytest.raises(ConfigError, match="no examples"):
        load_task(bad)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lmkit.hub import load_pretrained
    from lmkit.tokenizers.simple import CharTokenizer

    torch.manual_seed(0)
    tok = CharTokenizer.train([TEXT])
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=2, eos_token_id=3)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("tiny")
    hf.save_pretrained(d)
    tok.save(d / "tokenizer.json")
    return hf, load_pretrained(d).float(), tok, d


def test_lm_scorer_equals_transformers_logprobs(tiny, task_file):
    hf, ours, tok, _ = tiny
    scorer = LMScorer(ours, tok)
    for ex in load_task(task_file):
        for c in ex.choices:
            ctx_ids = tok.encode(ex.context)
            cont_ids = tok.encode(ex.context + " " + c)[len(ctx_ids):]
            ids = torch.tensor([ctx_ids + cont_ids])
            with torch.no_grad():
                logp = torch.log_softmax(hf(ids).logits[0].double(), -1)
            want = sum(float(logp[len(ctx_ids) - 1 + i, t]) for i, t in enumerate(cont_ids))
            assert scorer(ex.context, " " + c) == pytest.approx(want, abs=1e-4)
    # trailing spaces of the context move to the continuation (harness behaviour)
    assert scorer("Cats say ", "meow") == pytest.approx(scorer("Cats say", " meow"), abs=1e-6)
    # empty context: the BOS/EOS stand-in
    assert math.isfinite(scorer("", "meow"))
    res = evaluate_mc(load_task(task_file), scorer)
    assert 0 <= res["acc"] <= 1 and res["n"] == 3


# ---- hallucination -----------------------------------------------------------------------------

GEN = "The Eiffel Tower in Paris was completed in 1889 and is 330 metres tall. It was designed by Gustave Eiffel."
SRC = ("The Eiffel Tower, located in Paris, was finished in 1889. It is 300 metres tall and was designed by "
       "the engineer Gustave Eiffel.")


def test_numbers_and_entities():
    assert extract_numbers("It cost $1,000.50 (or 1000.5), grew 12% and fell -3.0 in 2023.") == \
        ["1000.5", "1000.5", "12%", "-3", "2023"]
    assert extract_entities(GEN) == ["Eiffel Tower", "Paris", "Gustave Eiffel"]
    assert extract_entities("The Bank of England met. It rose.") == ["Bank of England"]


def test_fact_overlap_rate():
    r = fact_overlap(GEN, SRC)
    assert r["numbers"]["unsupported"] == ["330"] and r["numbers"]["hallucination_rate"] == 0.5
    assert r["entities"]["hallucination_rate"] == 0.0
    assert r["hallucination_rate"] == pytest.approx(1 / 5)  # 1 unsupported of 5 facts
    assert fact_overlap(SRC, SRC)["hallucination_rate"] == 0.0
    assert fact_overlap("nothing to check here", SRC)["hallucination_rate"] == 0.0


def test_chinese_uses_lmkit_segmenter():
    pytest.importorskip("jieba")  # only for its dictionary file
    r = fact_overlap("张三在2023年发表了三篇论文", "张三在2021年发表了两篇论文")
    assert r["numbers"]["unsupported"] == ["2023"]
    assert "三篇" in r["entities"]["unsupported"] and "论文" not in r["entities"]["unsupported"]
    assert "北京大学" in extract_entities("北京大学的学生")


def test_qa_consistency():
    pairs = cloze_questions(GEN)
    assert ("The Eiffel Tower in Paris was completed in ____ and is 330 metres tall.", "1889") in pairs
    faithful = qa_consistency(SRC, SRC)
    assert faithful["f1"] == 1.0 and faithful["n_questions"] == 5
    r = qa_consistency(GEN, SRC)
    bad = [q for q in r["questions"] if q["f1"] < 1]
    assert [q["expected"] for q in bad] == ["330"] and r["f1"] == pytest.approx(4 / 5)
    # given QA pairs and a pluggable answerer
    r = qa_consistency(GEN, SRC, answer=lambda q, s: "Paris" if "city" in q else "1889",
                       qa_pairs=[("Which city?", "Paris"), ("When?", "1890")])
    assert r["f1"] == 0.5 and r["exact_match"] == 0.5
    assert overlap_answerer("It was designed by ____.", SRC) == "Gustave Eiffel"
    assert qa_consistency("no facts here", SRC)["n_questions"] == 0


def test_model_answerer_runs(tiny):
    _, ours, tok, _ = tiny
    ans = model_answerer(ours, tok, max_new_tokens=4)("Cats say ____.", "Cats say meow")
    assert isinstance(ans, str)


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_eval(tiny, task_file, tmp_path):
    from lmkit.cli import cli

    hf, ours, tok, model_dir = tiny
    r = CliRunner()
    (tmp_path / "t.txt").write_text(TEXT)
    out = r.invoke(cli, ["eval", "ppl", str(model_dir), str(tmp_path / "t.txt"), "--max-length", "32", "--stride",
                         "16", "-o", str(tmp_path / "ppl.json")])
    assert out.exit_code == 0, out.output
    rep = json.loads((tmp_path / "ppl.json").read_text())
    ids = torch.tensor([tok.encode(TEXT)])
    from lmkit.eval.perplexity import perplexity

    assert rep["perplexity"] == pytest.approx(perplexity(ours, ids[0], 32, 16).perplexity, rel=1e-6)
    assert rep["bits_per_byte"] > 0
    out = r.invoke(cli, ["eval", "mc", str(model_dir), str(task_file), "-o", str(tmp_path / "mc.json")])
    assert out.exit_code == 0, out.output
    mc = json.loads((tmp_path / "mc.json").read_text())
    assert mc["n"] == 3 and mc["acc"] == evaluate_mc(load_task(task_file), LMScorer(ours, tok))["acc"]
    (tmp_path / "p.txt").write_text("the cat is on the mat\nParis is big in 2020\n")
    (tmp_path / "r.jsonl").write_text(json.dumps({"references": ["the cat is on the mat"]}) + "\n"
                                      + json.dumps({"reference": "Paris is big in 2021"}) + "\n")
    out = r.invoke(cli, ["eval", "gen", str(tmp_path / "p.txt"), str(tmp_path / "r.jsonl"), "--metrics",
                         "bleu,rouge,squad,facts", "-o", str(tmp_path / "g.json")])
    assert out.exit_code == 0, out.output
    g = json.loads((tmp_path / "g.json").read_text())
    assert g["exact_match"] == 50.0 and g["hallucination_rate"] == pytest.approx(0.5 * (1 / 2))
    assert 0 < g["bleu"]["score"] < 100 and "rouge1" in g["rouge"]
    # bad input
    (tmp_path / "empty.txt").write_text("")
    out = r.invoke(cli, ["eval", "ppl", str(model_dir), str(tmp_path / "empty.txt")])
    assert out.exit_code != 0 and "empty" in out.output
    out = r.invoke(cli, ["eval", "gen", str(tmp_path / "p.txt"), str(tmp_path / "t.txt")])
    assert out.exit_code != 0 and "2 predictions but 1 references" in out.output
    out = r.invoke(cli, ["eval", "ppl", str(tmp_path), str(tmp_path / "t.txt")])
    assert out.exit_code != 0 and "cannot load" in out.output
