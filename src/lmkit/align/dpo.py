"""DPO (Rafailov et al. 2023) and its variants IPO (Azar et al. 2023) and conservative DPO.

DPO skips the reward model and the RL loop of RLHF: the optimal KL-regularised policy
satisfies r(x, y) = beta log pi(y|x) / pi_ref(y|x) + beta log Z(x), and putting that
reward into the Bradley–Terry likelihood cancels Z. With the log-ratios

    h_c = log pi(y_c|x) - log pi_ref(y_c|x)      h_r = log pi(y_r|x) - log pi_ref(y_r|x)

(log-probabilities summed over the response tokens, see logprobs.py):

    sigmoid (DPO)  L = -log sigma(beta (h_c - h_r))
    cDPO           L = -(1 - eps) log sigma(beta (h_c - h_r)) - eps log sigma(-beta (h_c - h_r))
                   (labels flipped with probability eps: "conservative" DPO, label smoothing)
    IPO            L = ((h_c - h_r) - 1 / (2 beta))^2
                   IPO regresses the margin to a finite target instead of pushing it to
                   infinity, so it does not overfit deterministic preferences. As TRL (and
                   as the IPO authors confirmed to TRL) h is the per-token *mean* log-ratio
                   by default (``ipo_mean=True``), which keeps beta comparable across lengths.

Metrics (as TRL): implicit rewards beta*h_c and beta*h_r, margin beta*(h_c - h_r), and
accuracy = share of pairs with margin > 0 (the policy prefers y_c more than pi_ref does).

The reference: a frozen copy (full-model policy), the policy with adapters disabled (LoRA
policy; no second copy), or reference log-probs precomputed once before training
(`precompute_reference_logprobs`) — then pi_ref is never needed during training.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.align.logprobs import completion_logprobs
from lmkit.align.objective import Objective, ObjectiveTrainer
from lmkit.align.reference import Reference
from lmkit.errors import ConfigError
from lmkit.models.output import ModelOutput

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses [B] and implicit rewards beta*h_c, beta*h_r [B] (detached).

    `label_smoothing` eps > 0 with loss_type "sigmoid" is cDPO. For "ipo", giving the
    response lengths turns the summed log-ratios into per-token means (TRL's IPO)."""
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"DPO loss_type={loss_type!r}: must be one of {LOSS_TYPES}")
    if beta <= 0:
        raise ConfigError(f"DPO beta={beta!r}: must be > 0")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"DPO label_smoothing={label_smoothing!r}: must be in [0, 0.5)")
    h_c = policy_chosen_logps - ref_chosen_logps
    h_r = policy_rejected_logps - ref_rejected_logps
    if loss_type == "sigmoid":
        z = beta * (h_c - h_r)
        losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    else:
        if label_smoothing:
            raise ConfigError("label_smoothing is for the sigmoid loss (cDPO); IPO has no label noise term")
        if chosen_lengths is not None and rejected_lengths is not None:
            h = h_c / chosen_lengths.clamp(min=1) - h_r / rejected_lengths.clamp(min=1)
        else:
            h = h_c - h_r
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    return losses, (beta * h_c).detach(), (beta * h_r).detach()


class DPOObjective(Objective):
    """Pair batches -> DPO/IPO/cDPO loss of `policy` against a `Reference` (or ``ref_logps`` in the batch)."""

    def __init__(self, policy: nn.Module, reference: Reference | None, *, beta: float = 0.1,
                 loss_type: str = "sigmoid", label_smoothing: float = 0.0, ipo_mean: bool = True) -> None:
        super().__init__()
        dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=beta, loss_type=loss_type,
                 label_smoothing=label_smoothing)  # validate the settings now
        self.policy = policy
        self.config = policy.config
        object.__setattr__(self, "reference", reference)  # not a submodule: never saved or optimised
        self.beta, self.loss_type, self.label_smoothing, self.ipo_mean = beta, loss_type, label_smoothing, ipo_mean

    def forward(self, input_ids, attention_mask=None, completion_mask=None, ref_logps=None, **_: Any) -> ModelOutput:
        if completion_mask is None:
            raise ConfigError("DPO batches need a completion_mask (use lmkit.data.preference.collate_pairs)")
        b = input_ids.shape[0] // 2
        pol = completion_logprobs(self.policy, input_ids, attention_mask, completion_mask)
        if ref_logps is not None:
            ref = torch.cat([ref_logps[:, 0], ref_logps[:, 1]]).to(pol.sum)
        else:
            if self.reference is None:
                raise ConfigError("no reference: give ref_logps in the batch or a Reference")
            with self.reference.run() as ref_model:
                ref = completion_logprobs(ref_model, input_ids, attention_mask, completion_mask).sum
        lengths = pol.lengths
        use_len = self.loss_type == "ipo" and self.ipo_mean
        losses, rc, rr = dpo_loss(
            pol.sum[:b], pol.sum[b:], ref[:b], ref[b:], beta=self.beta, loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
            chosen_lengths=lengths[:b] if use_len else None, rejected_lengths=lengths[b:] if use_len else None,
        )
        margin = rc - rr
        self.record(b, reward_chosen=rc.mean(), reward_rejected=rr.mean(), reward_margin=margin.mean(),
                    accuracy=(margin > 0).float().mean(), logp_chosen=pol.sum[:b].detach().mean(),
                    logp_rejected=pol.sum[b:].detach().mean())
        return ModelOutput(loss=losses.mean())


@torch.no_grad()
def precompute_reference_logprobs(reference: Reference, pairs: Sequence, batch_size: int = 16,
                                  pad_id: int = 0) -> torch.Tensor:
    """[N, 2] summed reference log-probs (chosen, rejected) of every tokenized pair."""
    from lmkit.data.preference import collate_pairs

    out = []
    with reference.run() as ref_model:
        dev = next(ref_model.parameters()).device
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            batch = {k: v.to(dev) for k, v in collate_pairs(chunk, pad_id).items()}
            lp = completion_logprobs(ref_model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).sum
            out.append(torch.stack([lp[: len(chunk)], lp[len(chunk):]], 1).cpu())
    return torch.cat(out)


def train_dpo(policy: nn.Module, train_pairs: Sequence, config, *, ref_model: nn.Module | None = None,
              eval_pairs: Sequence | None = None, batch_size: int = 8, pad_id: int = 0, beta: float = 0.1,
              loss_type: str = "sigmoid", label_smoothing: float = 0.0, precompute_ref: bool = True,
              resume: bool | str = False) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """DPO on tokenized pairs with a `TrainConfig`. `policy` is trained in place.

    Reference: `ref_model` if given; else a LoRA policy's base (adapters disabled); else a
    frozen copy of `policy` taken now. With ``precompute_ref`` (default) the reference
    log-probs of every pair are computed once up front and the reference is not run again.
    Returns per-step records (loss, reward_margin, accuracy, ...; eval_* every eval_every
    steps) and the final held-out metrics."""
    from lmkit.data.preference import PairBatches

    reference = Reference.for_policy(policy, ref_model)
    train_extra = eval_extra = None
    if precompute_ref:
        train_extra = {"ref_logps": precompute_reference_logprobs(reference, train_pairs, batch_size, pad_id)}
        if eval_pairs:
            eval_extra = {"ref_logps": precompute_reference_logprobs(reference, eval_pairs, batch_size, pad_id)}
    objective = DPOObjective(policy, reference, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    train = PairBatches(train_pairs, batch_size, pad_id, seed=config.seed, extra=train_extra)
    evals = PairBatches(eval_pairs, batch_size, pad_id, shuffle=False, extra=eval_extra) if eval_pairs else None
    trainer = ObjectiveTrainer(objective, config, train, evals, resume=resume)
    records = trainer.train()
    final = trainer.evaluate() if evals is not None else {}
    policy.eval()
    return records, final
