"""`lmkit reward-train / dpo / ppo / grpo` end to end on a tiny checkpoint directory."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lmkit.align.synthetic import arithmetic_problems, letter_preferences, toy_char_tokenizer
from lmkit.cli import cli
from lmkit.hub import load_pretrained, save_pretrained
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tok = toy_char_tokenizer()
    torch.manual_seed(0)
    lm = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32,
                               pad_token_id=0, eos_token_id=3, bos_token_id=2, model_type="llama", tie_embeddings=True))
    save_pretrained(lm, d)
    tok.save(d / "tokenizer.json")
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in letter_preferences(64, seed=3)]
    (d / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    probs = arithmetic_problems(16, max_operand=4)
    (d / "math.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in probs), encoding="utf-8")
    (d / "letters.txt").write_text("abc\nhgf\ndd\n", encoding="utf-8")
    return d


def last_json(output: str) -> dict:
    return json.loads(output[output.rindex('{"out"'):].splitlines()[0])


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def test_reward_train_then_ppo_with_the_reward_model(model_dir, tmp_path):
    r = run("reward-train", model_dir, model_dir / "prefs.jsonl", "-o", tmp_path / "rm", "--steps", 10, "--lr", 3e-3)
    assert r.exit_code == 0, r.output
    info = last_json(r.output)
    assert 0.0 <= info["eval_accuracy"] <= 1.0 and info["train_pairs"] == 58
    assert (tmp_path / "rm" / "reward_head.safetensors").is_file() and (tmp_path / "rm" / "tokenizer.json").is_file()
    r = run("ppo", model_dir, model_dir / "letters.txt", "-o", tmp_path / "ppo", "--reward-model", tmp_path / "rm",
            "--iterations", 2, "--batch-size", 4, "--max-new-tokens", 4)  # the old spelling of --steps
    assert r.exit_code == 0, r.output
    assert "--iterations is deprecated" in r.output and "use --steps" in r.output
    assert last_json(r.output)["saved"] == "model"
    load_pretrained(tmp_path / "ppo")
    lines = (tmp_path / "ppo" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "kl_coef" in json.loads(lines[0])


def test_dpo_lora_saves_an_adapter_and_grpo_merged(model_dir, tmp_path):
    r = run("dpo", model_dir, model_dir / "prefs.jsonl", "-o", tmp_path / "dpo", "--lora", "--max-steps", 5,
            "--beta", 0.2)  # the old spelling of --steps still works, with a note
    assert r.exit_code == 0, r.output
    assert "--max-steps is deprecated" in r.output and "use --steps" in r.output
    assert last_json(r.output)["saved"] == "LoRA adapter"
    assert (tmp_path / "dpo" / "adapter_config.json").is_file()
    from lmkit.peft.peft_format import load_lora

    load_lora(load_pretrained(model_dir), tmp_path / "dpo")
    r = run("grpo", model_dir, model_dir / "math.jsonl", "-o", tmp_path / "grpo", "--reward-fn",
            "lmkit.align.rewards:exact_answer", "--steps", 2, "--batch-size", 2, "--group-size", 4,
            "--max-new-tokens", 3, "--lora", "--merge")
    assert r.exit_code == 0, r.output
    assert last_json(r.output)["saved"] == "model"
    assert load_pretrained(tmp_path / "grpo").config.vocab_size == 25


def test_cli_bad_input(model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ab", "chosen": "c", "rejected": "d"}\n{"prompt": "ab", "chosen": "c", "rejected": "c"}\n')
    r = run("dpo", model_dir, bad, "-o", tmp_path / "x")
    assert r.exit_code != 0 and "bad.jsonl:2: 'chosen' and 'rejected' are identical" in r.output
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "abcdefgh" * 5, "chosen": "a", "rejected": "b"}) + "\n")
    r = run("reward-train", model_dir, long, "-o", tmp_path / "y")
    assert r.exit_code != 0 and "long.jsonl:1: prompt of 41 tokens leaves no room" in r.output
    r = run("grpo", model_dir, model_dir / "math.jsonl", "-o", tmp_path / "z", "--reward-fn", "lmkit.align.rewards:nope")
    assert r.exit_code != 0 and "has no function 'nope'" in r.output
    r = run("ppo", model_dir, model_dir / "letters.txt", "-o", tmp_path / "z")
    assert r.exit_code != 0 and "exactly one of --reward-model" in r.output
