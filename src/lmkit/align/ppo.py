"""PPO for language models (RLHF stage 3; Ziegler et al. 2019, InstructGPT, TRL's PPO).

One iteration:
 1. rollout   sample a response for each of `batch_size` prompts with lmkit.infer (sampling)
 2. score     the reward model or a Python reward function gives one score per response
 3. evaluate  without gradients: the policy's log-probs (pi_old) and values V of every
              response token, and the reference's log-probs (pi_ref: frozen model, or the
              LoRA policy with adapters disabled)
 4. rewards   per token  r_t = -beta * (log pi_old - log pi_ref)_t     (KL penalty, k1)
              and the score is added at the last response token
 5. GAE       advantages A_t and returns R_t = A_t + V_t (gae.py); advantages whitened
 6. optimise  `ppo_epochs` passes over shuffled mini-batches of the rollout:
                ratio    = exp(log pi - log pi_old)
                pg_loss  = mean max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))
                v_clip   = V_old + clip(V - V_old, -eps_v, eps_v)
                vf_loss  = 0.5 * mean max((V - R)^2, (v_clip - R)^2)
                loss     = pg_loss + vf_coef * vf_loss - ent_coef * entropy
 7. KL control the coefficient beta follows the adaptive controller (kl_controller.py)

Means are over response tokens. Logged per iteration: score (mean reward), kl (mean over
responses of the summed per-token log-ratio, the quantity the penalty constrains),
kl_coef, pg_loss, vf_loss, entropy, clipfrac, approx_kl, response length.

The notes' suggestions to speed PPO up with "experience replay and target networks" are
DQN techniques and do not fit PPO, which is on-policy: each rollout is used for a few
epochs right after it is sampled and then thrown away (the ratio clip keeps those epochs
safe); see docs/alignment.md.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lmkit.align.gae import compute_gae, masked_mean, whiten
from lmkit.align.kl_controller import AdaptiveKLController, FixedKLController
from lmkit.align.logprobs import entropy_from_logits, token_logprobs
from lmkit.align.online_step import online_optimizer, optimizer_step
from lmkit.align.reference import Reference
from lmkit.align.rollout import prompt_batches, sample_rollouts, score_rollouts
from lmkit.align.value_head import PolicyWithValue
from lmkit.errors import ConfigError
from lmkit.infer.stop import model_eos_ids


@dataclass
class PPOConfig:
    iterations: int = 100
    batch_size: int = 16  # prompts (= responses) per rollout
    mini_batch_size: int = 8
    ppo_epochs: int = 4
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True
    target_kl: float = 6.0
    kl_horizon: int = 10000
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = None  # subtracted from the score of responses cut by max_new_tokens
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    out_dir: str | None = None  # metrics.jsonl goes here when set
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens", "kl_horizon"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"PPOConfig.{name}={v!r}: must be a positive integer")
        if self.mini_batch_size > self.batch_size:
            raise ConfigError(f"PPOConfig.mini_batch_size={self.mini_batch_size} is larger than batch_size={self.batch_size}")
        for name in ("cliprange", "cliprange_value", "lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"PPOConfig.{name}={getattr(self, name)!r}: must be > 0")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"PPOConfig.{name}={getattr(self, name)!r}: must be in [0, 1]")
        for name in ("vf_coef", "ent_coef", "init_kl_coef", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"PPOConfig.{name}={getattr(self, name)!r}: must be >= 0")
        if self.adaptive_kl and (self.init_kl_coef <= 0 or self.target_kl <= 0):
            raise ConfigError("adaptive_kl needs init_kl_coef > 0 and target_kl > 0 (or set adaptive_kl=False)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    cliprange: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss (masked mean) and the share of tokens where the clip was active."""
    ratio = torch.exp(logp - old_logp)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return masked_mean(torch.max(loss1, loss2), mask), masked_mean((loss2 > loss1).float(), mask)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * mean max((V - R)^2, (V_clip - R)^2) and the clip fraction."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    l1, l2 = (values - returns) ** 2, (clipped - returns) ** 2
    return 0.5 * masked_mean(torch.max(l1, l2), mask), masked_mean((l2 > l1).float(), mask)


def kl_penalised_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                         kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards -kl_coef * (logp - ref_logp), plus the score at each row's last
    response token; and the per-token KL estimate. All [B, T-1]."""
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = (mask.shape[1] - 1 - mask.long().flip(-1).argmax(-1))
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def _policy_eval(policy: PolicyWithValue, ids, att, temperature: float):
    logits, values = policy(ids, att)
    logits = logits / temperature if temperature != 1.0 else logits
    return logits, values


def train_ppo(
    policy: PolicyWithValue | nn.Module,
    prompts: Sequence[Sequence[int]],
    config: PPOConfig,
    *,
    reward_fn: Callable[..., Sequence[float]] | None = None,
    reward_model: nn.Module | None = None,
    ref_model: nn.Module | None = None,
    tokenizer=None,
    eos_token_id: int | list[int] | None = None,
    pad_id: int = 0,
    reward_kwargs: dict[str, Sequence[Any]] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `policy` (a `PolicyWithValue`, or a bare DecoderLM that gets a value head) with PPO.

    prompts: token-id lists. The reference is `ref_model`, else the LoRA policy's base
    (adapters disabled), else a frozen copy of the starting policy. reward_kwargs: columns
    aligned with `prompts` passed to reward_fn (e.g. answers). Returns one record per iteration."""
    from lmkit.train.metrics_log import MetricsLogger

    cfg = config
    if not isinstance(policy, PolicyWithValue):
        policy = PolicyWithValue(policy)
    lm = policy.lm
    if not prompts:
        raise ConfigError("PPO needs at least one prompt")
    reference = Reference.for_policy(lm, ref_model)
    eos = eos_token_id if eos_token_id is not None else (model_eos_ids(lm) or None)  # the whole eos list
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.init_kl_coef))
    opt = online_optimizer(policy, cfg.lr, cfg.weight_decay)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    batches = prompt_batches(prompts, cfg.batch_size, cfg.seed)
    logger = MetricsLogger(cfg.out_dir) if cfg.out_dir else None
    reward_kwargs = reward_kwargs or {}
    records: list[dict[str, Any]] = []
    from lmkit.progress import Progress

    bar = Progress(total=cfg.iterations, desc="ppo", unit="it", progress=cfg.progress)
    for it in bar.track(range(cfg.iterations)):
        t0 = time.perf_counter()
        idx = next(batches)
        roll = sample_rollouts(lm, [prompts[i] for i in idx], max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, eos_token_id=eos,
                               pad_id=pad_id, tokenizer=tokenizer, seed=cfg.seed * 100003 + it)
        roll.extra = {k: [v[i] for i in idx] for k, v in reward_kwargs.items()}
        scores = score_rollouts(roll, reward_fn=reward_fn, reward_model=reward_model)
        raw_scores = scores.clone()
        if cfg.missing_eos_penalty is not None:
            ended = torch.tensor(roll.ended, device=scores.device)
            scores = torch.where(ended, scores, scores - cfg.missing_eos_penalty)
        ids, att = roll.input_ids, roll.attention_mask
        mask = roll.completion_mask[:, 1:].float()
        with torch.no_grad():
            was = policy.training
            policy.eval()
            logits, values_full = _policy_eval(policy, ids, att, cfg.temperature)
            policy.train(was)
            old_logp = token_logprobs(logits, ids) * mask
            old_values = values_full[:, :-1] * mask
            with reference.run() as ref:
                ref_logits = ref(ids, attention_mask=att).logits
                ref_logits = ref_logits / cfg.temperature if cfg.temperature != 1.0 else ref_logits
                ref_logp = token_logprobs(ref_logits, ids) * mask
            rewards, kl = kl_penalised_rewards(scores, old_logp, ref_logp, mask, kl_ctl.value)
            adv, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = whiten(adv, mask)
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "entropy", "clipfrac", "vf_clipfrac",
                                                          "approx_kl")}
        policy.train()
        n = len(roll)
        for _ in range(cfg.ppo_epochs):
            order = list(range(n))
            rng.shuffle(order)
            for s in range(0, n, cfg.mini_batch_size):
                mb = torch.tensor(order[s : s + cfg.mini_batch_size], device=ids.device)
                logits, values = _policy_eval(policy, ids[mb], att[mb], cfg.temperature)
                m = mask[mb]
                logp = token_logprobs(logits, ids[mb]) * m
                v = values[:, :-1]
                pg_loss, clipfrac = ppo_policy_loss(logp, old_logp[mb], adv[mb], m, cfg.cliprange)
                vf_loss, vf_clipfrac = ppo_value_loss(v, old_values[mb], returns[mb], m, cfg.cliprange_value)
                entropy = masked_mean(entropy_from_logits(logits[:, :-1]), m)
                loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
                optimizer_step(opt, loss, policy, cfg.max_grad_norm)
                with torch.no_grad():
                    approx_kl = 0.5 * masked_mean((logp - old_logp[mb]) ** 2, m)
                for k, val in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("entropy", entropy),
                               ("clipfrac", clipfrac), ("vf_clipfrac", vf_clipfrac), ("approx_kl", approx_kl)):
                    stats[k].append(float(val.detach()))
        mean_kl = float(kl.sum(-1).mean())
        record = {
            "step": it + 1,
            "score": float(raw_scores.mean()),
            "kl": mean_kl,
            "kl_coef": kl_ctl.value,
            "non_score_reward": float((-kl_ctl.value * kl).sum(-1).mean()),
            "response_len": float(mask.sum(-1).mean()),
            **{k: sum(v) / len(v) for k, v in stats.items()},
            "time_s": time.perf_counter() - t0,
        }
        kl_ctl.update(mean_kl, n)
        records.append(record)
        if logger is not None:
            logger.log(record)
        if callback is not None:
            callback(record)
        bar.set_postfix(score=record["score"], kl=mean_kl)
    policy.eval()
    if logger is not None:
        logger.close()
    return records
