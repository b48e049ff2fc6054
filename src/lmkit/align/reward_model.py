"""Reward model (奖励模型, RLHF stage 2): a decoder with a scalar head, trained on preference pairs.

    r(x, y) = w . h_last          h_last = the final hidden state (after the final norm) at the
                                  last non-padding token of prompt + response

The head reads the last *real* token, whatever the padding: with right padding that is
the position before the first pad, with left padding the final column; both come from the
attention mask (index = T - 1 - argmax(flip(mask))).

Training (Bradley–Terry, as InstructGPT): the probability that people prefer y_c over y_r
is modelled as sigma(r(x, y_c) - r(x, y_r)), so the loss is

    L = -log sigma(r_c - r_r - m)

with an optional margin m >= 0 (Llama 2 uses one for pairs rated "much better"); pairwise
accuracy is the share of pairs with r_c > r_r. Only differences of rewards are learned:
the scale is fixed by the loss, the offset is arbitrary.

The notes ask whether the reward model must match the policy (奖励模型需要和基础模型一致吗):
it need not share the architecture, but here it shares the tokenizer — PPO scores the
policy's token sequences directly — and is usually initialised from the SFT model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.align.objective import Objective, ObjectiveTrainer
from lmkit.errors import CheckpointError
from lmkit.models.output import ModelOutput

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


def last_token_index(attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | int:
    """Index of the last 1 in each row of a [B, T] mask (T - 1 without a mask)."""
    if attention_mask is None:
        return seq_len - 1
    return seq_len - 1 - attention_mask.long().flip(-1).argmax(-1)


class RewardModel(nn.Module):
    """`backbone` (a DecoderLM) + ``score``: Linear(d_model, 1); forward -> rewards [B]."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.score = nn.Linear(backbone.config.d_model, 1, bias=False)
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(backbone.config.d_model + 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        out = self.backbone(input_ids, attention_mask=attention_mask, num_logits_to_keep=1)
        h = out.hidden_states  # [B, T, D], after the final norm
        idx = last_token_index(attention_mask, input_ids.shape[1])
        rows = torch.arange(h.shape[0], device=h.device)
        last = h[rows, idx] if torch.is_tensor(idx) else h[:, idx]
        return self.score(last.to(self.score.weight.dtype)).squeeze(-1).float()


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                  margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Bradley–Terry loss, mean over pairs: -log sigma(r_c - r_r - margin)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards - margin).mean()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs the model orders correctly (ties count as wrong)."""
    return float((chosen_rewards > rejected_rewards).float().mean())


class RewardObjective(Objective):
    """Pair batches (chosen rows first, rejected rows second) -> Bradley–Terry loss."""

    def __init__(self, reward_model: RewardModel, margin: float = 0.0) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.reward_model = reward_model
        self.config = reward_model.config
        self.margin = margin

    def forward(self, input_ids, attention_mask=None, completion_mask=None, margin=None, **_: Any) -> ModelOutput:
        r = self.reward_model(input_ids, attention_mask)
        b = input_ids.shape[0] // 2
        rc, rr = r[:b], r[b:]
        m = margin if margin is not None else self.margin
        loss = pairwise_loss(rc, rr, m)
        self.record(b, accuracy=(rc > rr).float().mean(), reward_chosen=rc.mean(), reward_rejected=rr.mean(),
                    reward_margin=(rc - rr).mean())
        return ModelOutput(loss=loss)


def train_reward_model(reward_model: RewardModel, train_pairs: Sequence, config, *, eval_pairs: Sequence | None = None,
                       batch_size: int = 8, pad_id: int = 0, margin: float = 0.0,
                       resume: bool | str = False) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Train on tokenized pairs (`lmkit.data.preference.TokenizedPair`) with a `TrainConfig`.

    Returns the per-step records and the final held-out metrics (``eval_accuracy`` ...,
    empty without eval_pairs)."""
    from lmkit.data.preference import PairBatches

    objective = RewardObjective(reward_model, margin)
    train = PairBatches(train_pairs, batch_size, pad_id, seed=config.seed)
    evals = PairBatches(eval_pairs, batch_size, pad_id, shuffle=False) if eval_pairs else None
    trainer = ObjectiveTrainer(objective, config, train, evals, resume=resume)
    records = trainer.train()
    final = trainer.evaluate() if evals is not None else {}
    reward_model.eval()
    return records, final


@torch.no_grad()
def score_pairs(reward_model: RewardModel, pairs: Sequence, batch_size: int = 16, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and of the rejected response of every pair."""
    from lmkit.data.preference import collate_pairs

    dev = next(reward_model.parameters()).device
    was = reward_model.training
    reward_model.eval()
    rc, rr = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = collate_pairs(chunk, pad_id)
        r = reward_model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
        rc.append(r[: len(chunk)].cpu())
        rr.append(r[len(chunk):].cpu())
    reward_model.train(was)
    return torch.cat(rc), torch.cat(rr)


# ---- files -------------------------------------------------------------------------------------
def save_reward_model(reward_model: RewardModel, directory: str | os.PathLike) -> None:
    """The backbone as a Hugging Face checkpoint (hub.save_pretrained) + reward_head.safetensors.

    A LoRA backbone is saved merged (the adapters folded into the weights)."""
    from safetensors.torch import save_file

    from lmkit.align.reference import has_adapters
    from lmkit.atomic import atomic_path, atomic_write_text
    from lmkit.hub import save_pretrained

    backbone = reward_model.backbone
    if has_adapters(backbone):
        import copy

        from lmkit.peft.lora import unload_lora

        backbone = unload_lora(copy.deepcopy(backbone), merge=True)
    save_pretrained(backbone, directory)
    with atomic_path(Path(directory) / HEAD_FILE) as tmp:
        save_file({"score.weight": reward_model.score.weight.detach().cpu().contiguous()}, str(tmp))
    atomic_write_text(Path(directory) / META_FILE, json.dumps({"head": "score", "reads": "last_non_padding_token"}) + "\n")


def load_reward_model(directory: str | os.PathLike) -> RewardModel:
    from safetensors.torch import load_file

    from lmkit.hub import load_pretrained

    head = Path(directory) / HEAD_FILE
    if not head.is_file():
        raise CheckpointError(f"{directory} has no {HEAD_FILE}: it is not a reward model saved by lmkit reward-train")
    rm = RewardModel(load_pretrained(directory))
    sd = load_file(str(head))
    if "score.weight" not in sd or sd["score.weight"].shape != rm.score.weight.shape:
        raise CheckpointError(f"{head}: expected score.weight of shape {tuple(rm.score.weight.shape)}")
    with torch.no_grad():
        rm.score.weight.copy_(sd["score.weight"])
    return rm.eval()
