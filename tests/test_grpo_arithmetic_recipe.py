"""The docs' GRPO recipe (docs/alignment.md, "GRPO with a verifiable reward") on a checkpoint
that records its end of turn: the reward is not zero and completions stop before the limit.

Before checkpoints carried `eos_token_id`, and while GRPO's rollouts stopped only on
config.eos_token_id (<|endoftext|>) and not on the checkpoint's eos list (with ChatML's
<|im_end|>), every rollout ran to --max-new-tokens and `exact_answer` never matched (issue 26:
reward 0.0, length 8.0 of 8 here). The tests run a short SFT warm-up, save the model the way
every lmkit command does, then `lmkit grpo` through the CLI with the documented field `answers`.
"""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from lmkit.align.synthetic import arithmetic_problems, toy_char_tokenizer
from lmkit.cli import cli
from lmkit.hub import save_pretrained
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.train import TrainConfig, Trainer

MAX_NEW_TOKENS = 8


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def grpo_figures(out) -> tuple[float, float]:
    """Mean reward and mean completion length over the run's steps."""
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return (sum(r["reward"] for r in records) / len(records),
            sum(r["completion_len"] for r in records) / len(records))


def test_docs_grpo_recipe_on_a_chat_checkpoint(tmp_path):
    """README path in miniature: a tokenizer with the chat tokens reserved, `lmkit finetune`
    (full) on arithmetic chat rows, then the docs' GRPO line on chat prompts."""
    from lmkit.tokenizers import BPETokenizer
    from lmkit.tokenizers.special_tokens import CHAT_SPECIAL_TOKENS

    problems = arithmetic_problems(max_operand=4)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("You are a helpful assistant.\n" + " ".join(p + a for p, a in problems) + "\n") * 20)
    tok = BPETokenizer.train([str(corpus)], vocab_size=300, special_tokens=list(CHAT_SPECIAL_TOKENS))
    torch.manual_seed(0)
    lm = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=128,
                               model_type="llama", tie_embeddings=True))
    save_pretrained(lm, tmp_path / "base", tokenizer=tok)
    eos = json.loads((tmp_path / "base" / "config.json").read_text())["eos_token_id"]
    assert eos == [tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for p, a in problems))
    math = tmp_path / "math.jsonl"
    math.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}], "answers": a}) + "\n"
                            for p, a in problems))
    r = run("finetune", tmp_path / "base", chat, "--method", "full", "--lr", 1e-2, "-o", tmp_path / "sft_model")
    assert r.exit_code == 0, r.output
    r = run("grpo", tmp_path / "sft_model", math, "-o", tmp_path / "grpo_model", "--reward-fn",
            "lmkit.align.rewards:exact_answer", "--group-size", 8, "--chat-template", "chatml",
            "--steps", 6, "--batch-size", 4, "--max-new-tokens", MAX_NEW_TOKENS)
    assert r.exit_code == 0, r.output
    mean_reward, mean_len = grpo_figures(tmp_path / "grpo_model")
    print(f"GRPO (chat): mean reward {mean_reward:.3f}, mean completion length {mean_len:.2f} / {MAX_NEW_TOKENS}")
    assert mean_reward > 0
    assert mean_len < MAX_NEW_TOKENS


def sft_warmup(lm, tok, problems, steps: int, out_dir) -> None:
    """Teacher-forced "a+b=" -> "c</s>" (loss on the answer and its end only)."""
    bos, eos = lm.config.bos_token_id, lm.config.eos_token_id
    rows = [([bos] + tok.encode(p + a) + [eos], [-100] * (1 + len(p)) + tok.encode(a) + [eos]) for p, a in problems]
    t = max(len(x) for x, _ in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    labels = torch.full((len(rows), t), -100)
    att = torch.zeros(len(rows), t, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], att[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    batches = [{"input_ids": ids[i:i + 16], "labels": labels[i:i + 16], "attention_mask": att[i:i + 16]}
               for i in range(0, len(rows), 16)]
    Trainer(lm, TrainConfig(lr=3e-3, max_steps=steps, warmup_steps=10, out_dir=str(out_dir), progress=False),
            batches).train()


def test_docs_grpo_recipe_on_plain_prompts(tmp_path):
    """The same on plain-text "a+b=" prompts ([bos] prompt, answer, </s>)."""
    tok = toy_char_tokenizer()
    torch.manual_seed(0)
    lm = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32,
                               pad_token_id=0, eos_token_id=3, bos_token_id=2, model_type="llama", tie_embeddings=True))
    problems = arithmetic_problems(max_operand=4)
    sft_warmup(lm, tok, problems, 100, tmp_path / "warmup")
    sft_model = tmp_path / "sft_model"
    save_pretrained(lm.eval(), sft_model)
    tok.save(sft_model / "tokenizer.json")
    assert json.loads((sft_model / "config.json").read_text())["eos_token_id"] == 3  # where a reply ends
    math = tmp_path / "math.jsonl"  # the documented row: {"prompt": ..., "answers": ...}
    math.write_text("".join(json.dumps({"prompt": p, "answers": a}) + "\n" for p, a in problems), encoding="utf-8")

    result = run("grpo", sft_model, math, "-o", tmp_path / "grpo_model", "--reward-fn",
                 "lmkit.align.rewards:exact_answer", "--group-size", 8, "--steps", 6, "--batch-size", 4,
                 "--max-new-tokens", MAX_NEW_TOKENS, "--lr", 1e-3)
    assert result.exit_code == 0, result.output
    mean_reward, mean_len = grpo_figures(tmp_path / "grpo_model")
    print(f"GRPO (plain): mean reward {mean_reward:.3f}, mean completion length {mean_len:.2f} / {MAX_NEW_TOKENS}")
    assert mean_reward > 0
    assert mean_len < MAX_NEW_TOKENS
