"""Alignment methods learn on synthetic tasks (tiny models; full-size runs in bench/bench_align_learning.py)."""

from __future__ import annotations

import random

import pytest
import torch

from lmkit.align.dpo import train_dpo
from lmkit.align.grpo import GRPOConfig, train_grpo
from lmkit.align.logprobs import completion_logprobs
from lmkit.align.ppo import PPOConfig, train_ppo
from lmkit.align.reference import Reference
from lmkit.align.reward_model import RewardModel, load_reward_model, save_reward_model, score_pairs, train_reward_model
from lmkit.align.rewards import good_letters
from lmkit.align.synthetic import LETTERS, letter_preferences, toy_char_tokenizer
from lmkit.data.preference import collate_pairs, tokenize_pairs
from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.peft.lora import LoraConfig, inject_lora
from lmkit.train import TrainConfig

TOK = toy_char_tokenizer()
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def tiny(seed=0, d=32):
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=TOK.vocab_size, d_model=d, n_layers=2, n_heads=2, d_ff=2 * d, max_seq_len=32,
                                 pad_token_id=0, eos_token_id=3, bos_token_id=2, model_type="llama", tie_embeddings=True))


def make_pairs(response_len=(3, 8)):
    tr = tokenize_pairs(letter_preferences(256, seed=1, response_len=response_len), TOK, 32, bos_id=2, eos_id=3)
    ev = tokenize_pairs(letter_preferences(128, seed=2, response_len=response_len), TOK, 32, bos_id=2, eos_id=3)
    return tr, ev


@pytest.fixture(scope="module")
def pairs():
    return make_pairs()


def prompts(n=64, seed=0):
    rng = random.Random(seed)
    return [[2] + TOK.encode("".join(rng.choice(LETTERS) for _ in range(3))) for _ in range(n)]


def test_reward_model_learns_preference_and_round_trips(pairs, tmp_path):
    tr, ev = pairs
    rm = RewardModel(tiny())
    cfg = TrainConfig(lr=3e-3, max_steps=60, warmup_steps=5, eval_every=30, out_dir=str(tmp_path / "rm"), progress=False)
    records, final = train_reward_model(rm, tr, cfg, eval_pairs=ev, batch_size=16)
    assert final["eval_accuracy"] >= 0.9
    assert records[-1]["loss"] < records[0]["loss"]
    rc, rr = score_pairs(rm, ev)
    assert float((rc > rr).float().mean()) == pytest.approx(final["eval_accuracy"])  # independent recount
    save_reward_model(rm, tmp_path / "rm_model")
    again = load_reward_model(tmp_path / "rm_model")
    rc2, _ = score_pairs(again, ev[:8])
    torch.testing.assert_close(rc2, rc[:8])


@pytest.mark.parametrize("use_lora", [False, True])
def test_dpo_raises_heldout_accuracy_and_margin(tmp_path, use_lora):
    # responses of similar length: DPO's implicit reward is a sum over tokens, so very
    # different lengths add a length term that this small run does not fully learn away
    tr, ev = make_pairs(response_len=(4, 6))
    policy = tiny()
    if use_lora:
        inject_lora(policy, LoraConfig(r=8, alpha=16, target_modules=ALL_LINEAR))
    cfg = TrainConfig(lr=3e-3, max_steps=60, warmup_steps=5, eval_every=10,
                      out_dir=str(tmp_path / "dpo"), progress=False)
    records, final = train_dpo(policy, tr, cfg, eval_pairs=ev, batch_size=16, beta=0.2)
    evals = [r for r in records if "eval_accuracy" in r]
    assert final["eval_accuracy"] > 0.9
    assert evals[-1]["eval_reward_margin"] > evals[0]["eval_reward_margin"] > 0
    assert records[-1]["loss"] < 0.69


def test_dpo_reference_online_equals_precomputed(pairs):
    tr, _ = pairs
    batch = collate_pairs(tr[:6], 0)
    from lmkit.align.dpo import DPOObjective, precompute_reference_logprobs
    from lmkit.align.reference import frozen_copy

    policy = tiny()
    ref = frozen_copy(tiny(seed=5))
    reference = Reference(policy, ref)
    pre = precompute_reference_logprobs(reference, tr[:6])
    obj = DPOObjective(policy, reference, beta=0.1)
    a = obj(**batch).loss
    b = obj(**batch, ref_logps=pre).loss
    torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="needs a reference model"):
        Reference(tiny())


def test_lora_reference_is_the_base_model(pairs):
    tr, _ = pairs
    batch = collate_pairs(tr[:4], 0)
    base = tiny()
    with torch.no_grad():
        want = completion_logprobs(base, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).sum
    lm = inject_lora(tiny(), LoraConfig(r=4, alpha=8, target_modules=ALL_LINEAR))
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # the adapted model now differs from the base
        adapted = completion_logprobs(lm, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).sum
    with Reference(lm).run() as ref:
        got = completion_logprobs(ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).sum
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (adapted - want).abs().max() > 1e-2


@pytest.mark.parametrize("use_lora", [False, True])
def test_ppo_raises_reward_with_bounded_kl(use_lora):
    lm = tiny()
    if use_lora:
        inject_lora(lm, LoraConfig(r=8, alpha=16, target_modules=ALL_LINEAR))
    cfg = PPOConfig(iterations=30, batch_size=16, mini_batch_size=8, max_new_tokens=8, lr=1e-2 if use_lora else 3e-3,
                    init_kl_coef=0.05, target_kl=1.0, kl_horizon=1000)
    records = train_ppo(lm, prompts(), cfg, reward_fn=good_letters, tokenizer=TOK)
    first = sum(r["score"] for r in records[:5]) / 5
    last = sum(r["score"] for r in records[-5:]) / 5
    assert last > first + 0.2
    assert max(r["kl"] for r in records) < 15.0  # bounded by the KL penalty (target 1, adaptive)
    assert records[-1]["kl_coef"] >= records[0]["kl_coef"]  # KL above target raised the penalty
    if use_lora:
        assert not any(p.requires_grad for n, p in lm.named_parameters() if "lora_" not in n)


def _sft_warmup(lm, problems, steps, out_dir):
    from lmkit.train import Trainer

    rows = [([2] + TOK.encode(p + a) + [3], [-100] * (1 + len(p)) + TOK.encode(a) + [3]) for p, a in problems]
    t = max(len(r[0]) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    labels = torch.full((len(rows), t), -100)
    att = torch.zeros(len(rows), t, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], att[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    batches = [{"input_ids": ids[i:i + 16], "labels": labels[i:i + 16], "attention_mask": att[i:i + 16]}
               for i in range(0, len(rows), 16)]
    Trainer(lm, TrainConfig(lr=3e-3, max_steps=steps, warmup_steps=10, out_dir=str(out_dir),
                            progress=False), batches).train()
    return lm.eval()


def test_grpo_raises_arithmetic_accuracy_after_sft(tmp_path):
    """Verifiable reward (exact answer of a+b=, a, b in 0..4) after a short SFT warm-up."""
    from lmkit.align.rewards import exact_answer
    from lmkit.align.rollout import sample_rollouts
    from lmkit.align.synthetic import arithmetic_problems

    problems = arithmetic_problems(max_operand=4)
    torch.manual_seed(0)
    lm = DecoderLM(ModelConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16,
                               pad_token_id=0, eos_token_id=3, bos_token_id=2, model_type="llama", tie_embeddings=True))
    _sft_warmup(lm, problems, 100, tmp_path / "sft")
    prompts_ = [[2] + TOK.encode(p) for p, _ in problems]

    def sampled_accuracy(seed):  # 16 samples per problem at temperature 1: pass@1 as GRPO optimises it
        r = sample_rollouts(lm, prompts_ * 16, max_new_tokens=3, eos_token_id=3, tokenizer=TOK, seed=seed)
        return sum(exact_answer(r.prompt_texts, r.completion_texts)) / len(r)

    before = sampled_accuracy(1)
    train_grpo(lm, prompts_, GRPOConfig(steps=60, batch_size=8, group_size=8, max_new_tokens=3, lr=1e-3),
               reward_fn=exact_answer, tokenizer=TOK)
    after = sampled_accuracy(2)
    assert 0.05 < before < 0.6  # the warm-up put the task within reach, not solved
    assert after > before + 0.07


@pytest.mark.parametrize("use_lora", [False, True])
def test_grpo_raises_rule_based_reward(use_lora):
    lm = tiny()
    if use_lora:
        inject_lora(lm, LoraConfig(r=8, alpha=16, target_modules=ALL_LINEAR))
    cfg = GRPOConfig(steps=30, batch_size=4, group_size=8, max_new_tokens=8, lr=1e-2 if use_lora else 3e-3)
    records = train_grpo(lm, prompts(), cfg, reward_fn=good_letters, tokenizer=TOK)
    first = sum(r["reward"] for r in records[:5]) / 5
    last = sum(r["reward"] for r in records[-5:]) / 5
    assert last > first + 0.2
    assert records[-1]["kl"] > 0


def test_rl_bad_input():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        PPOConfig(batch_size=4, mini_batch_size=8)
    with pytest.raises(ConfigError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ConfigError, match="returned 1 scores for 8"):
        train_grpo(tiny(), prompts(4), GRPOConfig(steps=1, batch_size=1, group_size=8, max_new_tokens=2),
                   reward_fn=lambda p, c, **k: [1.0], tokenizer=TOK)
