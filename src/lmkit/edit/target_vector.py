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
from lmkit.edit.prompt_tokens import SubjectPrompt, encode_subject_prompt, pad_right, target_ids, target_logprobs
from lmkit.errors import ConfigError


@dataclass
class TargetVectorConfig:
    steps: int = 80
    lr: float = 0.5
    kl_weight: float = 0.5
    weight_decay: float = 0.05
    clamp_norm: float = 10.0
    stop_nll: float = 0.02  # stop once the mean NLL of the target is below this
    bare_weight: float | None = None  # the bare prompt's share of the NLL (None: an equal share with each prefix)

    def __post_init__(self) -> None:
        if self.bare_weight is not None and not 0.0 <= self.bare_weight <= 1.0:
            raise ConfigError(f"bare_weight is the bare prompt's share of the NLL, in [0, 1]; got {self.bare_weight}")


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


def _adding(positions: list[int], delta: torch.Tensor):
    """A patch for `patch_output`: row i of the batch gets delta[i] added at position positions[i]."""
    rows, index = torch.arange(len(positions)), torch.tensor(positions)

    def fn(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[rows, index] += delta.to(out.dtype)
        return out

    return fn


def optimise_site_delta(model: nn.Module, tokenizer, site: nn.Module, request: EditRequest, prefixes: list[str],
                        cfg: TargetVectorConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, δ): the site's output at the subject's last token in the bare prompt, and the change δ
    that, added there in every prompt, makes `request.target_new` follow the prompt."""
    h, delta = optimise_site_deltas(model, tokenizer, site, [request], prefixes, cfg)
    return h[0], delta[0]


def optimise_site_deltas(model: nn.Module, tokenizer, site: nn.Module, requests: list[EditRequest],
                         prefixes: list[str], cfg: TargetVectorConfig | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(h [n, d], δ [n, d]) for independent requests, optimised together in one batch (each row of
    δ acts only on its own request's prompts, so the result is that of n separate optimisations;
    a request whose NLL is below cfg.stop_nll stops moving)."""
    cfg = cfg or TargetVectorConfig()
    prefixes = [""] + [p for p in prefixes if p]
    seqs, starts, subj, owner, tgts = [], [], [], [], []
    ess_seqs, ess_last, ess_subj, ess_owner = [], [], [], []
    for i, request in enumerate(requests):
        tgt = target_ids(tokenizer, request.target_new)
        for p in rewrite_prompts(tokenizer, request, prefixes):
            seqs.append(p.ids + tgt[:-1])
            starts.append(len(p.ids) - 1)
            subj.append(p.subject_last)
            owner.append(i)
            tgts.append(tgt)
        for t in request.essence_prompts:
            e = encode_subject_prompt(tokenizer, t, request.subject)
            ess_seqs.append(e.ids)
            ess_last.append(len(e.ids) - 1)
            ess_subj.append(e.subject_last)
            ess_owner.append(i)
    n = len(requests)
    ids = pad_right(seqs)
    owner_t, ess_owner_t = torch.tensor(owner), torch.tensor(ess_owner, dtype=torch.long)
    bare = torch.tensor([prefixes.index("") + i * len(prefixes) for i in range(n)])  # each request's bare prompt
    ess_ids = pad_right(ess_seqs) if ess_seqs else None
    with torch.no_grad(), record_outputs(site) as seen:
        model(ids[bare])
        h = at_positions(seen[0], [subj[int(b)] for b in bare]).detach()
        before = F.log_softmax(at_positions(model(ess_ids).logits, ess_last).float(), -1) if ess_seqs else None
    delta = torch.zeros_like(h, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    width = max(len(t) for t in tgts)
    tpos = torch.tensor([[s + j if j < len(t) else s for j in range(width)] for s, t in zip(starts, tgts)])
    tgt_t = torch.tensor([t + [0] * (width - len(t)) for t in tgts])
    tmask = torch.tensor([[1.0] * len(t) + [0.0] * (width - len(t)) for t in tgts])
    rows = torch.arange(len(seqs))[:, None]
    prompt_weight = torch.ones(len(seqs))  # each request's weights sum to 1
    if cfg.bare_weight is not None and len(prefixes) > 1:
        prompt_weight.fill_((1 - cfg.bare_weight) / (len(prefixes) - 1))
        prompt_weight[bare] = cfg.bare_weight
    else:
        prompt_weight /= len(prefixes)
    ess_per = torch.zeros(n).index_add_(0, ess_owner_t, torch.ones(len(ess_seqs))).clamp(min=1)
    h_sq = h.norm(dim=-1) ** 2
    max_norm = cfg.clamp_norm * h.norm(dim=-1, keepdim=True)
    done = torch.zeros(n, dtype=torch.bool)

    with only_trainable(model):
        for _ in range(cfg.steps):
            with patch_output(site, _adding(subj, delta[owner_t])):
                logp = F.log_softmax(model(ids).logits.float(), -1)
            tok_nll = -(logp[rows, tpos, tgt_t] * tmask).sum(1) / tmask.sum(1)  # per prompt
            nll = torch.zeros(n).index_add(0, owner_t, tok_nll * prompt_weight)  # per request
            done = done | (nll.detach() < cfg.stop_nll)
            if bool(done.all()):
                break
            loss = nll + cfg.weight_decay * delta.norm(dim=-1) ** 2 / h_sq
            if ess_seqs:
                with patch_output(site, _adding(ess_subj, delta[ess_owner_t])):
                    after = F.log_softmax(at_positions(model(ess_ids).logits, ess_last).float(), -1)
                kl = (before.exp() * (before - after)).sum(-1)
                loss = loss + cfg.kl_weight * torch.zeros(n).index_add(0, ess_owner_t, kl) / ess_per
            frozen = delta.detach()[done].clone()
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                delta.mul_(torch.clamp(max_norm / delta.norm(dim=-1, keepdim=True).clamp(min=1e-12), max=1.0))
                delta[done] = frozen
    return h, delta.detach()


@torch.no_grad()
def bare_target_nll(model: nn.Module, tokenizer, site: nn.Module, requests: list[EditRequest],
                    delta: torch.Tensor) -> torch.Tensor:
    """[n]: the NLL per token of each request's target_new after its bare prompt, with δ added to
    `site`'s output at the subject: whether the target vector reaches the answer at all."""
    prompts = [encode_subject_prompt(tokenizer, r.prompt, r.subject) for r in requests]
    tgts = [target_ids(tokenizer, r.target_new) for r in requests]
    with patch_output(site, _adding([p.subject_last for p in prompts], delta)):
        logits = model(pad_right([p.ids + t for p, t in zip(prompts, tgts)])).logits
    return -target_logprobs(logits, [len(p.ids) for p in prompts], tgts)
