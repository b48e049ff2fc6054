"""GRPO: group relative policy optimisation (DeepSeekMath, Shao et al. 2024), as TRL implements it.

No value model: the baseline of a response is the mean reward of G responses sampled for
the same prompt. Per step:

 1. sample G responses for each of `batch_size` prompts (lmkit.infer sampling)
 2. reward each (a verifiable function such as rewards.exact_answer, or a reward model)
 3. group-normalised advantage of response i of a prompt:
        A_i = (r_i - mean_j r_j) / (std_j r_j + eps)          (same A for all its tokens)
    (``scale_rewards=False`` keeps r_i - mean, as Dr. GRPO recommends)
 4. per token, with ratio = pi / pi_old and the k3 estimator of KL(pi || pi_ref)
        k3     = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1      (>= 0, unbiased)
        loss_t = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * k3
 5. aggregate: "grpo" = mean over each response's tokens, then over responses (the paper);
    "token" = mean over all tokens of the batch (DAPO / TRL "bnpo": long answers are not
    down-weighted). `num_iterations` > 1 reuses a batch for several updates (then pi_old
    differs from pi and the clip matters); with 1 the ratio is 1 and only its gradient acts.

A group whose rewards are all equal gives zero advantages: it teaches nothing, which is
why the task must be within reach of the starting model (hence an SFT warm-up first).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lmkit.align.gae import masked_mean
from lmkit.align.logprobs import token_logprobs
from lmkit.align.online_step import online_optimizer, optimizer_step
from lmkit.align.reference import Reference
from lmkit.align.rollout import prompt_batches, sample_rollouts, score_rollouts
from lmkit.errors import ConfigError
from lmkit.infer.stop import model_eos_ids

LOSS_TYPES = ("grpo", "token")


@dataclass
class GRPOConfig:
    steps: int = 100
    batch_size: int = 8  # prompts per step
    group_size: int = 8  # G responses per prompt
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    beta: float = 0.04  # KL coefficient (0: no reference needed)
    epsilon: float = 0.2
    num_iterations: int = 1
    loss_type: str = "grpo"
    scale_rewards: bool = True
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    out_dir: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_new_tokens", "num_iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"GRPOConfig.{name}={v!r}: must be a positive integer")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ConfigError(f"GRPOConfig.group_size={self.group_size!r}: must be >= 2 (the baseline is the group mean)")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"GRPOConfig.loss_type={self.loss_type!r}: must be one of {LOSS_TYPES}")
        for name in ("epsilon", "lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"GRPOConfig.{name}={getattr(self, name)!r}: must be > 0")
        if self.beta < 0:
            raise ConfigError(f"GRPOConfig.beta={self.beta!r}: must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """[N * G] rewards (groups contiguous) -> [N * G] advantages (r - group mean) / (group std + eps).

    std is the unbiased sample std, as torch.std and TRL."""
    if rewards.numel() % group_size:
        raise ConfigError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    g = rewards.view(-1, group_size).float()
    adv = g - g.mean(1, keepdim=True)
    if scale:
        adv = adv / (g.std(1, keepdim=True) + eps)
    return adv.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) from samples of pi: exp(d) - d - 1, d = ref - logp."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, epsilon: float = 0.2, beta: float = 0.04,
              loss_type: str = "grpo") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss over [B, T] per-token log-probs (advantages [B]); returns (loss, stats)."""
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * a)
    kl = None
    if beta and ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
    mask = mask.to(per_token.dtype)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "token":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        raise ConfigError(f"loss_type={loss_type!r}: must be one of {LOSS_TYPES}")
    clipped = ((ratio < 1 - epsilon) & (a < 0)) | ((ratio > 1 + epsilon) & (a > 0))
    stats = {"clip_ratio": masked_mean(clipped.float(), mask)}
    if kl is not None:
        stats["kl"] = masked_mean(kl, mask)
    return loss, stats


def train_grpo(
    policy: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GRPOConfig,
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
    """Train `policy` (a DecoderLM, possibly with LoRA) with GRPO on token-id prompts.

    The reference (for beta > 0): `ref_model`, else the LoRA base (adapters disabled),
    else a frozen copy of the starting policy. Returns one record per step (reward,
    reward_std, kl, clip_ratio, completion length, ...)."""
    from lmkit.train.metrics_log import MetricsLogger

    cfg = config
    if not prompts:
        raise ConfigError("GRPO needs at least one prompt")
    reference = Reference.for_policy(policy, ref_model) if cfg.beta > 0 else None
    eos = eos_token_id if eos_token_id is not None else (model_eos_ids(policy) or None)  # the whole eos list
    opt = online_optimizer(policy, cfg.lr, cfg.weight_decay)
    torch.manual_seed(cfg.seed)
    batches = prompt_batches(prompts, cfg.batch_size, cfg.seed)
    logger = MetricsLogger(cfg.out_dir) if cfg.out_dir else None
    reward_kwargs = reward_kwargs or {}
    g = cfg.group_size
    records: list[dict[str, Any]] = []
    from lmkit.progress import Progress

    for step in Progress(total=cfg.steps, desc="grpo", unit="step", progress=cfg.progress).track(range(cfg.steps)):
        t0 = time.perf_counter()
        idx = [i for i in next(batches) for _ in range(g)]
        roll = sample_rollouts(policy, [prompts[i] for i in idx], max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, eos_token_id=eos,
                               pad_id=pad_id, tokenizer=tokenizer, seed=cfg.seed * 100003 + step)
        roll.extra = {k: [v[i] for i in idx] for k, v in reward_kwargs.items()}
        rewards = score_rollouts(roll, reward_fn=reward_fn, reward_model=reward_model)
        adv = group_advantages(rewards, g, cfg.scale_rewards)
        ids, att = roll.input_ids, roll.attention_mask
        mask = roll.completion_mask[:, 1:].float()

        def logprobs_of(model):
            logits = model(ids, attention_mask=att).logits
            if cfg.temperature != 1.0:
                logits = logits / cfg.temperature
            return token_logprobs(logits, ids)

        with torch.no_grad():
            old_logp = None
            if cfg.num_iterations > 1:
                was = policy.training
                policy.eval()
                old_logp = logprobs_of(policy)
                policy.train(was)
            ref_logp = None
            if reference is not None:
                with reference.run() as ref:
                    ref_logp = logprobs_of(ref)
        policy.train()
        stats_acc: dict[str, list[float]] = {"loss": [], "clip_ratio": [], "kl": []}
        for _ in range(cfg.num_iterations):
            logp = logprobs_of(policy)
            old = old_logp if old_logp is not None else logp.detach()
            loss, stats = grpo_loss(logp, old, ref_logp, adv, mask, epsilon=cfg.epsilon, beta=cfg.beta,
                                    loss_type=cfg.loss_type)
            optimizer_step(opt, loss, policy, cfg.max_grad_norm)
            stats_acc["loss"].append(float(loss.detach()))
            for k, v in stats.items():
                stats_acc[k].append(float(v.detach()))
        grouped = rewards.view(-1, g)
        record = {
            "step": step + 1,
            "reward": float(rewards.mean()),
            "reward_std": float(grouped.std(1).mean()),
            "frac_zero_std": float((grouped.std(1) == 0).float().mean()),
            "completion_len": float(mask.sum(-1).mean()),
            **{k: sum(v) / len(v) for k, v in stats_acc.items() if v},
            "time_s": time.perf_counter() - t0,
        }
        records.append(record)
        if logger is not None:
            logger.log(record)
        if callback is not None:
            callback(record)
    policy.eval()
    if logger is not None:
        logger.close()
    return records
