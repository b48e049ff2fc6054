"""`lmkit sft`, `lmkit finetune`, `lmkit merge` end to end on a tiny pretrained Llama checkpoint;
the outputs are checked with transformers and peft."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lmkit.cli import cli
from lmkit.data.sft import toy_sft_rows
from lmkit.hub import load_pretrained, save_pretrained
from lmkit.peft.finetune import toy_task

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    task = toy_task(seed=0, pretrain_steps=60)
    save_pretrained(task.base, d)
    task.tokenizer.save_hf_json(d / "tokenizer.json")
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in toy_sft_rows(160, 0)) + "\n", encoding="utf-8")
    (d / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in toy_sft_rows(32, 1)) + "\n", encoding="utf-8")
    return d


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r


def finetune(model_dir, out, method, *extra, steps=30, lr=1e-2):
    r = run("finetune", model_dir, model_dir / "data.jsonl", "--eval-data", model_dir / "eval.jsonl",
            "--method", method, "-o", out, "--steps", steps, "--lr", lr, "--seq-len", 128, "--device", "cpu", *extra)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["eval_loss"] < report["base_eval_loss"]  # beats the frozen base on held-out data
    assert "trainable" in r.output and "peak memory" in r.output
    return report


def test_lora_finetune_peft_loads_it_and_merge(model_dir, tmp_path):
    out = tmp_path / "lora"
    report = finetune(model_dir, out, "lora", "--target-modules", "q_proj,v_proj,down_proj", "--r", 4)
    assert report["base_unchanged"] is True
    assert 0 < report["trainable_params"] < report["total_params"]
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir).eval()
    pm = peft.PeftModel.from_pretrained(hf, out).eval()
    from lmkit.peft.peft_format import load_lora

    ours = load_lora(load_pretrained(model_dir), out)
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
        assert (ours(ids).logits - ref).abs().max() <= 1e-4
    r = run("merge", model_dir, out, "-o", tmp_path / "merged")
    assert r.exit_code == 0, r.output
    merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - ref).abs().max() <= 1e-4
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def test_adalora_finetune_and_merge(model_dir, tmp_path):
    out = tmp_path / "ada"
    report = finetune(model_dir, out, "adalora", "--target-modules", "all-linear", "--r", 8,
                      "--option", "target_r=4", "--option", "tinit=5", "--option", "tfinal=10", lr=3e-2)
    assert report["base_unchanged"] is True
    ranks = report["extra"]["adalora_ranks"]
    assert sum(ranks.values()) <= 4 * len(ranks)  # the final budget
    r = run("merge", model_dir, out, "-o", tmp_path / "merged")
    assert r.exit_code == 0, r.output


def test_sft_full_finetune(model_dir, tmp_path):
    out = tmp_path / "sft"
    r = run("sft", model_dir, model_dir / "data.jsonl", "-o", out, "--steps", 20, "--lr", 2e-3, "--seq-len", 128,
            "--eval-data", model_dir / "eval.jsonl", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "deprecated" not in r.output
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["eval_loss"] < report["base_eval_loss"]
    assert report["trainable_params"] == report["total_params"]
    transformers.LlamaForCausalLM.from_pretrained(out)  # a plain checkpoint


def test_registry_method_through_the_same_driver(model_dir, tmp_path):
    report = finetune(model_dir, tmp_path / "bitfit", "bitfit", "--option", "add_missing_bias=true", lr=3e-2)
    assert report["base_unchanged"] is True
    assert (tmp_path / "bitfit" / "method_config.json").is_file()


def test_bad_inputs(model_dir, tmp_path):
    r = run("finetune", model_dir, model_dir / "data.jsonl", "--method", "lora", "--target-modules",
            "attn", "-o", tmp_path / "x", "--steps", 1)
    assert r.exit_code != 0 and "available" in r.output and "q_proj" in r.output
    r = run("finetune", model_dir, model_dir / "data.jsonl", "--method", "lora", "--r", 500,
            "-o", tmp_path / "x", "--steps", 1)
    assert r.exit_code != 0 and "larger than" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(toy_sft_rows(1)[0]) + "\n" + '{"messages": [{"role": "user"}]}\n', encoding="utf-8")
    r = run("finetune", model_dir, "--data", bad, "-o", tmp_path / "x", "--steps", 1)  # the old spelling of DATA
    assert r.exit_code != 0 and "bad.jsonl:2" in r.output and "--data DATA is deprecated" in r.output
    r = run("merge", model_dir, tmp_path, "-o", tmp_path / "m")
    assert r.exit_code != 0 and "adapter_config.json" in r.output
    r = run("finetune", model_dir, model_dir / "data.jsonl", "--method", "prompt", "--r", 4,
            "-o", tmp_path / "x")
    assert r.exit_code != 0 and "apply to lora" in r.output


def test_sft_old_argument_order_still_works_with_a_note(model_dir, tmp_path):
    r = run("sft", model_dir / "data.jsonl", model_dir, "-o", tmp_path / "old", "--steps", 1, "--seq-len", 64,
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "`lmkit sft DATA MODEL` is deprecated" in r.output and "`lmkit sft MODEL DATA`" in r.output
    assert (tmp_path / "old" / "config.json").is_file()


def test_lengths_beyond_the_context_are_errors(model_dir, tmp_path):
    context = load_pretrained(model_dir).config.max_seq_len
    for option in ("--seq-len", "--max-len"):
        r = run("finetune", model_dir, model_dir / "data.jsonl", "-o", tmp_path / "x", "--steps", 1,
                option, context + 1)
        assert r.exit_code == 1, r.output
        assert f"{option} {context + 1} is longer than the model's context of {context} tokens" in r.output
        assert not (tmp_path / "x").exists()
