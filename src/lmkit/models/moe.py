"""Mixture of Experts FFN: a router sends each token to k of N expert FFNs.

Parameters grow with N while compute per token grows only with k (sparse activation).
Each expert is a FeedForward of hidden size config.moe_d_ff (Qwen3-MoE's fine-grained experts
are much narrower than its dense FFN; None: d_ff), and config.moe_layers says which layers are
sparse (Qwen3-MoE's decoder_sparse_step / mlp_only_layers); the other layers keep a dense FFN.

Routing
  topk    (Mixtral)  p = softmax(router logits) over all N experts; take the k largest;
                     renormalise them to sum to 1 when config.norm_topk_prob.
  switch  (Switch Transformer, Fedus et al. 2021)  top-1; the expert output is scaled by its
                     router probability p_i (not renormalised, so the router gets a gradient).
  output = sum over the chosen experts e of weight_e * FFN_e(x).

Auxiliary losses (stored, already weighted, in `self.aux_loss` after each forward)
  load balancing  N * sum_i f_i * P_i, f_i = (top-k assignments to expert i) / tokens,
                  P_i = mean router probability of expert i (Switch eq. 4-6; for k > 1 the
                  same counting as Hugging Face Mixtral's `load_balancing_loss_func`, where
                  sum_i f_i = k). Minimal (= k) when routing is uniform.
  router z-loss   mean over tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al. 2022): keeps
                  router logits small, which keeps the softmax numerically stable.
  aux_loss = router_aux_loss_coef * load_balancing + router_z_loss_coef * z_loss.

Capacity (config.capacity_factor, GShard / Switch): each expert processes at most
  capacity = ceil(capacity_factor * tokens * k / N) assignments per forward. Priority: all
  first choices before any second choice (and so on), and within one choice rank, earlier
  tokens (in flattened batch-major order) first. An assignment over capacity is dropped: it
  contributes zero, the other chosen experts keep their (not renormalised) weights, and a
  token whose every assignment is dropped gets a zero MoE output, so only the residual
  connection carries it through the layer.

Padding: the owning model passes `token_mask` (bool [B, T], True = real token) to the
forward; padded tokens are then left out of the loss statistics and take no capacity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.models.ffn import FeedForward


def load_balancing_loss(
    router_probs: torch.Tensor, expert_indices: torch.Tensor, n_experts: int, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """router_probs [N, E] (softmax over all experts), expert_indices [N, k] -> scalar N_e * sum f_i P_i."""
    probs = router_probs.float()
    weight = torch.ones(probs.shape[0], device=probs.device) if token_mask is None else token_mask.float()
    n_tokens = weight.sum().clamp(min=1.0)
    counts = (F.one_hot(expert_indices, n_experts).float() * weight[:, None, None]).sum(dim=(0, 1))
    f = counts / n_tokens
    p = (probs * weight[:, None]).sum(0) / n_tokens
    return n_experts * (f * p).sum()


def router_z_loss(router_logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean over (real) tokens of logsumexp(logits)^2."""
    z = torch.logsumexp(router_logits.float(), dim=-1).pow(2)
    if token_mask is None:
        return z.mean()
    w = token_mask.float()
    return (z * w).sum() / w.sum().clamp(min=1.0)


def capacity_keep(
    expert_indices: torch.Tensor, n_experts: int, capacity: int, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """[N, k] expert choices -> bool [N, k]: which assignments fit (priority: choice rank, then token order)."""
    n, k = expert_indices.shape
    valid = torch.ones(n, dtype=torch.bool, device=expert_indices.device) if token_mask is None else token_mask
    order = expert_indices.t().reshape(-1)  # rank-major: every first choice, then every second choice...
    valid_o = valid.repeat(k)
    onehot = F.one_hot(order, n_experts) * valid_o[:, None]
    position = (onehot.cumsum(0) * onehot).sum(-1)  # 1-based slot inside the chosen expert
    keep = valid_o & (position <= capacity)
    return keep.view(k, n).t()


class MoE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.n_experts <= 0:
            raise ValueError("MoE needs config.n_experts > 0")
        self.n_experts = config.n_experts
        self.switch = config.router == "switch"
        self.top_k = 1 if self.switch else config.n_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob and not self.switch
        self.capacity_factor = config.capacity_factor
        self.aux_coef = config.router_aux_loss_coef
        self.z_coef = config.router_z_loss_coef
        self.gate = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(config, config.moe_d_ff) for _ in range(config.n_experts))
        # Filled by forward (for losses, logging and tests).
        self.aux_loss: torch.Tensor | None = None
        self.load_balancing_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        self.router_logits: torch.Tensor | None = None
        self.expert_indices: torch.Tensor | None = None
        self.kept: torch.Tensor | None = None

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits [N, E] -> (probs [N, E], weights [N, k], indices [N, k])."""
        probs = logits.float().softmax(dim=-1)
        weights, indices = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights, indices

    def capacity(self, n_tokens: int) -> int | None:
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, d] -> [B, T, d]; token_mask [B, T] (True = real token) leaves padding out."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        mask = None
        if token_mask is not None:
            mask = token_mask.reshape(-1).to(device=flat.device, dtype=torch.bool)
            if mask.numel() != flat.shape[0]:
                raise ValueError(f"MoE token_mask has {mask.numel()} entries for {flat.shape[0]} tokens")
        logits = self.gate(flat)
        probs, weights, indices = self.route(logits)
        keep = None
        n_real = flat.shape[0] if mask is None else int(mask.sum())
        cap = self.capacity(n_real)
        if cap is not None:
            keep = capacity_keep(indices, self.n_experts, cap, mask)

        out = torch.zeros_like(flat)
        chosen = F.one_hot(indices, self.n_experts)  # [N, k, E]
        if keep is not None:
            chosen = chosen * keep[..., None]
        hit = chosen.sum(dim=(0, 1)).nonzero().flatten().tolist()
        for e in hit:
            tok, slot = torch.where(chosen[:, :, e] > 0)
            y = self.experts[e](flat[tok]) * weights[tok, slot, None]
            out[tok] = out[tok] + y.to(out.dtype)  # a token picks an expert at most once: no duplicate rows

        self.router_logits = logits
        self.expert_indices = indices
        self.kept = keep
        self.load_balancing_loss = load_balancing_loss(probs, indices, self.n_experts, mask)
        self.z_loss = router_z_loss(logits, mask)
        self.aux_loss = self.aux_coef * self.load_balancing_loss + self.z_coef * self.z_loss
        return out.view(shape)
