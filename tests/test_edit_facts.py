"""The synthetic facts world, its CounterFact records, the metrics and the `lmkit edit` CLI."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edit_tiny import tiny_model, world_and_tokenizer
from lmkit.edit.facts import RELATIONS, counterfact_records, distinct_subject_records, make_world, read_records
from lmkit.edit.metrics import edit_scores, n_gram_entropy


def test_world_is_deterministic_and_records_have_counterfact_shape():
    world = make_world(seed=3)
    assert len(world.facts) >= 200 and make_world(seed=3) == world and make_world(seed=4) != world
    records = counterfact_records(world, seed=3)
    assert records == counterfact_records(world, seed=3)
    for r in records[:50]:
        rw = r["requested_rewrite"]
        assert "{}" in rw["prompt"] and rw["target_new"]["str"] != rw["target_true"]["str"]
        assert rw["target_true"]["str"] == world.truth(rw["subject"], rw["relation_id"])
        assert len(r["paraphrase_prompts"]) == len(RELATIONS[rw["relation_id"]]) - 1
        for p in r["neighborhood_prompts"]:  # other subjects, same relation, same true object
            other = next(s for s in world.subjects if s in p)
            assert other != rw["subject"] and world.truth(other, rw["relation_id"]) == rw["target_true"]["str"]
    picked = distinct_subject_records(records, 100)
    assert len({r["requested_rewrite"]["subject"] for r in picked}) == 100


def test_two_word_names_share_their_words():
    world = make_world(n_subjects=50, seed=1, name_words=2)
    assert len(set(world.subjects)) == 50 and all(len(s.split()) == 2 for s in world.subjects)
    lasts = [s.split()[1] for s in world.subjects]
    assert len(set(lasts)) < 50  # a land's last word alone does not say which land it is
    assert not any(a != b and a in b for a in world.subjects for b in world.subjects)


def test_n_gram_entropy_and_scores():
    assert n_gram_entropy("a a a a a a") == 0.0
    # 4 distinct bigrams and 3 distinct trigrams, each once: (2/3 * 2 + 4/3 * log2 3) / 2
    assert abs(n_gram_entropy("a b c d e") - (2 / 3 * 2 + 4 / 3 * 1.584962500721156) / 2) < 1e-9
    _, records, tok = world_and_tokenizer()
    s = edit_scores(tiny_model(), tok, records[:3])
    assert all(0.0 <= getattr(s, k) <= 1.0 for k in ("efficacy", "paraphrase", "neighbourhood"))


def test_cli_edit_facts_and_edit(tmp_path):
    from lmkit.cli import cli
    from lmkit.hub import save_pretrained

    world, _, tok = world_and_tokenizer()
    save_pretrained(tiny_model(), tmp_path / "model", tokenizer=tok)
    runner = CliRunner()
    res = runner.invoke(cli, ["edit-facts", str(tmp_path / "world"), "--subjects", "12"])
    assert res.exit_code == 0, res.output
    assert len(read_records(tmp_path / "world" / "facts.jsonl")) == 24
    res = runner.invoke(cli, ["edit", str(tmp_path / "model"), "--method", "ft", "--facts",
                              str(tmp_path / "world" / "facts.jsonl"), "--n-edits", "2", "--layer", "0",
                              "-o", str(tmp_path / "edited")])
    assert res.exit_code == 0, res.output
    report = json.loads(next(l for l in res.output.splitlines() if l.startswith("{")))
    assert report["edits"] == 2 and set(report["after"]) >= {"efficacy", "paraphrase", "neighbourhood"}
    assert (tmp_path / "edited" / "config.json").is_file() and (tmp_path / "edited" / "tokenizer.json").is_file()
    res = runner.invoke(cli, ["edit", str(tmp_path / "model"), "--method", "grace", "--prompt", "Tell me about {}",
                              "--subject", world.subjects[0], "--target", "Quell", "--layer", "1",
                              "-o", str(tmp_path / "graced")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "graced" / "grace.safetensors").is_file()
    res = runner.invoke(cli, ["edit", str(tmp_path / "model"), "--method", "rome"])
    assert res.exit_code == 1 and "--prompt" in res.output


def test_neighbourhood_leaves_out_neighbours_edited_in_the_same_batch():
    _, records, tok = world_and_tokenizer()
    r0 = records[0]
    n_subject = next(r["requested_rewrite"]["subject"] for r in records
                     if r["requested_rewrite"]["subject"] in " ".join(r0["neighborhood_prompts"]))
    r1 = next(r for r in records if r["requested_rewrite"]["subject"] == n_subject)
    kept = [p for p in r0["neighborhood_prompts"] if n_subject not in p]
    model = tiny_model()
    alone = edit_scores(model, tok, [{**r0, "neighborhood_prompts": kept}, {**r1, "neighborhood_prompts": []}])
    both = edit_scores(model, tok, [r0, {**r1, "neighborhood_prompts": []}])
    assert both.neighbourhood == alone.neighbourhood
