"""The vector an edit writes: the smallest change δ of one site's output, at the subject's last token,
that makes the new target likely (ROME's v*, MEMIT's z).

Optimised by Adam on
    -log P(target_new | prefix + prompt)                  averaged over the random prefixes
    + kl_weight · KL(P_before(· | essence) ‖ P_after(· | essence))   the subject's other facts stay
    + weight_decay · ‖δ‖² / ‖h‖²
with ‖δ‖ clamped to clamp_norm · ‖h‖ (h: the site's output at the subject in the bare prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.edit.layer_hooks import at_positions, only_trainable, patch_output, record_outputs
from lmkit.edit.prompt_tokens import SubjectPrompt, encode_subject_prompt, pad_right, target_ids


@dataclass
class TargetVectorConfig:
    steps: int = 80
    lr: float = 0.5
    kl_weight: float = 0.5
    weight_decay: float = 0.05
    clamp_norm: float = 10.0
    stop_nll: float = 0.02  # stop once the mean NLL of the target is below this


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: `prompt` with {} for `subject`, continued by `target_new`."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    essence_prompts: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: dict) -> "EditRequest":
        rw = record["requested_rewrite"]
        true = rw.get("target_true", {}).get("str") if isinstance(rw.get("target_true"), dict) else rw.get("target_true")
        new = rw["target_new"]["str"] if isinstance(rw["target_new"], dict) else rw["target_new"]
        essence = tuple(p.replace(rw["subject"], "{}", 1) for p in record.get("essence_prompts", ()) if rw["subject"] in p)
        return cls(rw["prompt"], rw["subject"], new, true, essence)


def rewrite_prompts(tokenizer, request: EditRequest, prefixes: list[str]) -> list[SubjectPrompt]:
    """The request's prompt after each prefix ("" = bare), subject positions included."""
    return [encode_subject_prompt(tokenizer, request.prompt, request.subject, p) for p in prefixes]


def optimise_site_delta(model: nn.Module, tokenizer, site: nn.Module, request: EditRequest, prefixes: list[str],
                        cfg: TargetVectorConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, δ): the site's output at the subject's last token in the bare prompt, and the change δ
    that, added there in every prompt, makes `request.target_new` follow the prompt."""
    cfg = cfg or TargetVectorConfig()
    prefixes = [""] + [p for p in prefixes if p]
    prompts = rewrite_prompts(tokenizer, request, prefixes)
    tgt = target_ids(tokenizer, request.target_new)
    seqs = [p.ids + tgt[:-1] for p in prompts]
    ids = pad_right(seqs)
    starts = [len(p.ids) - 1 for p in prompts]
    subj = [p.subject_last for p in prompts]
    essence = [encode_subject_prompt(tokenizer, t, request.subject) for t in request.essence_prompts]
    ess_ids = pad_right([e.ids for e in essence]) if essence else None
    ess_last = [len(e.ids) - 1 for e in essence]
    with torch.no_grad(), record_outputs(site) as seen:
        model(ids[:1])
        h = at_positions(seen[0], subj[:1])[0].detach()
        before = F.log_softmax(at_positions(model(ess_ids).logits, ess_last).float(), -1) if essence else None
    delta = torch.zeros_like(h, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    rows = torch.arange(len(prompts))
    tpos = torch.tensor(starts)[:, None] + torch.arange(len(tgt))[None]
    tgt_t = torch.tensor(tgt)[None].expand(len(prompts), -1)
    max_norm = cfg.clamp_norm * h.norm()

    def add_delta(positions):
        def fn(out):
            out = out.clone()
            out[torch.arange(len(positions)), torch.tensor(positions)] += delta.to(out.dtype)
            return out
        return fn

    with only_trainable(model):
        for _ in range(cfg.steps):
            with patch_output(site, add_delta(subj)):
                logp = F.log_softmax(model(ids).logits.float(), -1)
            nll = -logp[rows[:, None], tpos, tgt_t].mean()
            loss = nll + cfg.weight_decay * delta.norm() ** 2 / h.norm() ** 2
            if essence:
                with patch_output(site, add_delta([e.subject_last for e in essence])):
                    after = F.log_softmax(at_positions(model(ess_ids).logits, ess_last).float(), -1)
                loss = loss + cfg.kl_weight * F.kl_div(after, before, log_target=True, reduction="batchmean")
            if nll.item() < cfg.stop_nll:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    return h, delta.detach()
