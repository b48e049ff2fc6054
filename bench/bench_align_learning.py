"""Learning figures for lmkit.align (quality, not timing): reward model, DPO, PPO, GRPO.

Tiny Llama-style models on synthetic tasks (lmkit.align.synthetic); writes PNG curves to
docs/img/align_*.png and prints one JSON line of figures per method.

    OMP_NUM_THREADS=1 python3 bench/bench_align_learning.py [rm|dpo|ppo|grpo|all] [--lora]
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

from lmkit.train.metrics_log import plot_curves
from lmkit.align.synthetic import LETTERS, arithmetic_problems, letter_preferences, toy_char_tokenizer
from lmkit.data.preference import tokenize_pairs
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.train import TrainConfig, Trainer

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
TOK = toy_char_tokenizer()
BOS, EOS, PAD = 2, 3, 0


def model(d=64, layers=2, heads=4, seq=32, seed=0):
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=TOK.vocab_size, d_model=d, n_layers=layers, n_heads=heads, d_ff=2 * d,
                                 max_seq_len=seq, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
                                 model_type="llama", tie_embeddings=True))


def lora(lm):
    from lmkit.peft.lora import LoraConfig, inject_lora

    return inject_lora(lm, LoraConfig(r=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj", "lm_head")))


def bench_rm(use_lora):
    from lmkit.align.reward_model import RewardModel, train_reward_model

    tr = tokenize_pairs(letter_preferences(1024, seed=1), TOK, 32, bos_id=BOS, eos_id=EOS)
    ev = tokenize_pairs(letter_preferences(256, seed=2), TOK, 32, bos_id=BOS, eos_id=EOS)
    rm = RewardModel(lora(model()) if use_lora else model())
    t = time.time()
    recs, final = train_reward_model(rm, tr, TrainConfig(lr=3e-3 if use_lora else 1e-3, max_steps=200, warmup_steps=10,
                                                         eval_every=20, out_dir="/tmp/bench_align_rm", progress=False),
                                     eval_pairs=ev, batch_size=32)
    sfx = "_lora" if use_lora else ""
    plot_curves(recs, ["loss", "accuracy", "eval_accuracy", "reward_margin"], IMG / f"align_reward_model{sfx}.png",
                "reward model (Bradley-Terry), held-out accuracy")
    first_eval = next(r for r in recs if "eval_accuracy" in r)
    return {"method": "reward_model" + sfx, "first_eval_step": first_eval["step"],
            "eval_accuracy_first": first_eval["eval_accuracy"],
            "eval_accuracy_final": final["eval_accuracy"], "steps": 200, "seconds": round(time.time() - t, 1)}


def bench_dpo(use_lora, loss_type="sigmoid"):
    from lmkit.align.dpo import train_dpo

    # responses of 4-6 letters: DPO's implicit reward is a sum over tokens (see docs/alignment.md)
    tr = tokenize_pairs(letter_preferences(1024, seed=1, response_len=(4, 6)), TOK, 32, bos_id=BOS, eos_id=EOS)
    ev = tokenize_pairs(letter_preferences(256, seed=2, response_len=(4, 6)), TOK, 32, bos_id=BOS, eos_id=EOS)
    pol = lora(model()) if use_lora else model()
    t = time.time()
    recs, final = train_dpo(pol, tr, TrainConfig(lr=3e-3 if use_lora else 1e-3, max_steps=200, warmup_steps=10,
                                                 eval_every=10, out_dir="/tmp/bench_align_dpo", progress=False),
                            eval_pairs=ev, batch_size=32, beta=0.1, loss_type=loss_type)
    sfx = ("_lora" if use_lora else "") + ("" if loss_type == "sigmoid" else f"_{loss_type}")
    plot_curves(recs, ["loss", "eval_accuracy", "eval_reward_margin", "reward_chosen", "reward_rejected"],
                IMG / f"align_dpo{sfx}.png", f"DPO ({loss_type}) on synthetic preferences")
    evals = [r for r in recs if "eval_accuracy" in r]
    return {"method": "dpo" + sfx, "first_eval_step": evals[0]["step"], "eval_accuracy_first": evals[0]["eval_accuracy"],
            "eval_accuracy_final": final["eval_accuracy"], "eval_margin_first": evals[0]["eval_reward_margin"],
            "eval_margin_final": final["eval_reward_margin"], "seconds": round(time.time() - t, 1)}


def bench_ppo(use_lora):
    from lmkit.align.ppo import PPOConfig, train_ppo
    from lmkit.align.rewards import good_letters

    lm = lora(model()) if use_lora else model()
    rng = random.Random(0)
    prompts = [[BOS] + TOK.encode("".join(rng.choice(LETTERS) for _ in range(3))) for _ in range(256)]
    t = time.time()
    recs = train_ppo(lm, prompts, PPOConfig(iterations=150, batch_size=32, mini_batch_size=16, max_new_tokens=8,
                                            lr=3e-3 if use_lora else 1e-3, init_kl_coef=0.1, target_kl=2.0,
                                            kl_horizon=2000),
                     reward_fn=good_letters, tokenizer=TOK)
    sfx = "_lora" if use_lora else ""
    plot_curves(recs, ["score", "kl", "kl_coef", "entropy"], IMG / f"align_ppo{sfx}.png",
                "PPO, reward = share of a-d letters, adaptive KL (target 2)")
    first = sum(r["score"] for r in recs[:10]) / 10
    last = sum(r["score"] for r in recs[-10:]) / 10
    return {"method": "ppo" + sfx, "score_first10": round(first, 3), "score_last10": round(last, 3),
            "kl_max": round(max(r["kl"] for r in recs), 3), "kl_last10": round(sum(r["kl"] for r in recs[-10:]) / 10, 3),
            "kl_coef_final": round(recs[-1]["kl_coef"], 4), "seconds": round(time.time() - t, 1)}


def sft_warmup(lm, problems, steps, lr=3e-3):
    rows = []
    for p, a in problems:
        ids = [BOS] + TOK.encode(p) + TOK.encode(a) + [EOS]
        rows.append((ids, [-100] * (1 + len(p)) + TOK.encode(a) + [EOS]))
    T = max(len(r[0]) for r in rows)
    X = torch.zeros(len(rows), T, dtype=torch.long)
    Y = torch.full((len(rows), T), -100)
    M = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        X[i, : len(a)] = torch.tensor(a)
        Y[i, : len(b)] = torch.tensor(b)
        M[i, : len(a)] = 1
    batches = [{"input_ids": X[i:i + 16], "labels": Y[i:i + 16], "attention_mask": M[i:i + 16]}
               for i in range(0, len(rows), 16)]
    Trainer(lm, TrainConfig(lr=lr, max_steps=steps, warmup_steps=10, out_dir="/tmp/bench_align_sft", progress=False),
            batches).train()
    return lm.eval()


def greedy_accuracy(lm, problems):
    from lmkit.infer.generate import generate

    out = generate(lm, [[BOS] + TOK.encode(p) for p, _ in problems], max_new_tokens=3, eos_token_id=EOS,
                   pad_token_id=PAD, tokenizer=TOK)
    return sum(t.strip() == a for t, (_, a) in zip(out.texts, problems)) / len(problems)


def bench_grpo(use_lora, steps=400, sft_steps=60):
    from lmkit.align.grpo import GRPOConfig, train_grpo
    from lmkit.align.rewards import exact_answer

    problems = arithmetic_problems()  # all 100 "a+b=" with a, b in 0..9
    lm = sft_warmup(model(seq=16), problems, sft_steps)
    if use_lora:
        lora(lm)
    acc0 = greedy_accuracy(lm, problems)
    prompts = [[BOS] + TOK.encode(p) for p, _ in problems]
    curve = [{"step": 0, "greedy_accuracy": acc0}]

    def cb(rec):
        if rec["step"] % 25 == 0:
            curve.append({"step": rec["step"], "greedy_accuracy": greedy_accuracy(lm, problems)})

    t = time.time()
    recs = train_grpo(lm, prompts, GRPOConfig(steps=steps, batch_size=16, group_size=8, max_new_tokens=3,
                                              lr=3e-3 if use_lora else 5e-4, beta=0.04),
                      reward_fn=exact_answer, tokenizer=TOK, callback=cb)
    sfx = "_lora" if use_lora else ""
    plot_curves(recs + curve, ["reward", "greedy_accuracy", "kl", "frac_zero_std"], IMG / f"align_grpo{sfx}.png",
                "GRPO on a+b= (exact-answer reward) after SFT warm-up")
    return {"method": "grpo" + sfx, "greedy_accuracy_before": acc0, "greedy_accuracy_after": curve[-1]["greedy_accuracy"],
            "sampled_reward_first10": round(sum(r["reward"] for r in recs[:10]) / 10, 3),
            "sampled_reward_last10": round(sum(r["reward"] for r in recs[-10:]) / 10, 3),
            "seconds": round(time.time() - t, 1)}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    use_lora = "--lora" in sys.argv
    torch.set_num_threads(1)
    jobs = {"rm": bench_rm, "dpo": bench_dpo, "ppo": bench_ppo, "grpo": bench_grpo}
    for name in (jobs if which == "all" else [which]):
        print(json.dumps(jobs[name](use_lora)), flush=True)
        if name == "dpo" and not use_lora:
            print(json.dumps(bench_dpo(False, "ipo")), flush=True)
