"""AdaLoRA (Zhang et al. 2023): LoRA whose rank budget moves to the matrices that need it.

The update of each adapted W is written in SVD form

    ΔW = P Λ Q,   P = lora_B [out, r],  Λ = diag(lora_E) [r],  Q = lora_A [r, in]
    h  = W x + (alpha / ranknum) · P (Λ ⊙ (Q x))          (as PEFT: scaling alpha / r)

and three things turn it into adaptive rank allocation:

* orthogonality regulariser  R(P, Q) = ||PᵀP − I||²_F + ||QQᵀ − I||²_F, added to the loss with
  weight γ (`orth_reg_weight`), keeps P and Q close to orthogonal so that Λ carries the
  singular values and dropping one triplet (P_i, λ_i, Q_i) removes exactly that direction.
  (PEFT instead adds the *mean of the unsquared* norms; ``orth_reg="peft"`` does that.)
* sensitivity importance of every entry, I(w) = |w · ∂L/∂w|, smoothed over steps:
      Ī ← β1 Ī + (1 − β1) I                    (EMA of the sensitivity)
      Ū ← β2 Ū + (1 − β2) |I − Ī|              (EMA of its uncertainty)
      s(w) = Ī · Ū
  and the score of triplet i of a matrix: S_i = s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji).
* a cubic budget schedule over the total number of kept triplets b(t):
      t ≤ t_init: b = b_init (= init_r · #matrices, no pruning, warm-up)
      t_init < t ≤ T − t_final: b = b_target + (b_init − b_target) (1 − (t − t_init)/(T − t_final − t_init))³,
                                 applied every ΔT steps
      t > T − t_final: b = b_target, the mask is frozen for the final fine-tuning
  Pruning sets λ_i = 0 for every triplet whose score is at most the (b_init − b)-th smallest
  score over *all* matrices: important matrices keep more rank than others. A masked λ can
  come back later (its P, Q keep training and it is re-scored), as in the paper and PEFT.

`AdaLoraAllocator.update_and_allocate(model, step)` must run after backward and before the
gradients are cleared (after `optimizer.step()`); `run_finetune` hooks it into the Trainer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import dataclass_from_dict
from lmkit.models.module_tree import replace_module
from lmkit.peft.lora import find_targets, linear_shapes


@dataclass
class AdaLoraConfig:
    init_r: int = 12
    target_r: int = 8  # average rank per matrix at the end (budget = target_r * #matrices)
    alpha: float = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    orth_reg: str = "paper"  # paper: sum of squared Frobenius norms; peft: mean of unsquared norms
    total_step: int | None = None  # the run's optimizer steps (run_finetune fills it in)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)

        def bad(name: str, why: str) -> None:
            raise ConfigError(f"AdaLoraConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("init_r", "target_r", "deltaT"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        if self.target_r > self.init_r:
            bad("target_r", f"must not exceed init_r={self.init_r}")
        for name in ("tinit", "tfinal"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "must be an integer >= 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, "must be in [0, 1)")
        if not self.alpha > 0:
            bad("alpha", "must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if self.orth_reg_weight < 0:
            bad("orth_reg_weight", "must be >= 0")
        if self.orth_reg not in ("paper", "peft"):
            bad("orth_reg", "must be 'paper' or 'peft'")
        if self.total_step is not None:
            if not isinstance(self.total_step, int) or self.total_step < 1:
                bad("total_step", "must be a positive integer")
            if self.tinit >= self.total_step - self.tfinal:
                bad("tinit", f"must be < total_step - tfinal = {self.total_step - self.tfinal} (no budgeting phase left)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdaLoraConfig":
        return dataclass_from_dict(cls, d)


class AdaLoraLinear(nn.Module):
    """A frozen linear layer plus ΔW = P diag(λ) Q in SVD form (one adapter)."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = int(base_layer.in_features), int(base_layer.out_features)
        if r > min(self.in_features, self.out_features):
            raise ConfigError(
                f"AdaLoRA init_r={r} is larger than a {self.out_features}x{self.in_features} matrix allows"
            )
        w = getattr(base_layer, "weight", None)
        dtype = w.dtype if isinstance(w, torch.Tensor) and w.is_floating_point() else torch.float32
        device = next(iter(list(base_layer.parameters()) + list(base_layer.buffers()))).device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=dtype, device=device))  # Q
        self.lora_E = nn.Parameter(torch.zeros(r, 1, dtype=dtype, device=device))  # Λ
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, dtype=dtype, device=device))  # P
        nn.init.normal_(self.lora_A, 0.0, 0.02)
        nn.init.normal_(self.lora_B, 0.0, 0.02)
        self.register_buffer("ranknum", torch.tensor(float(r)), persistent=True)
        self.scaling = float(alpha)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.disabled = False
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.float() @ (self.lora_A.float() * self.lora_E.float())) * self.scaling / (
            self.ranknum.float() + 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.disabled or self.merged:
            return result
        x = self.dropout(x.to(self.lora_A.dtype))
        update = (x @ (self.lora_A * self.lora_E).T @ self.lora_B.T) * self.scaling / (self.ranknum + 1e-5)
        return result + update.to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() + self.delta_weight()).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() - self.delta_weight()).to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.lora_E.shape[0]}"


def adalora_layers(model: nn.Module) -> Iterator[tuple[str, AdaLoraLinear]]:
    for name, m in model.named_modules():
        if isinstance(m, AdaLoraLinear):
            yield name, m


def inject_adalora(model: nn.Module, config: AdaLoraConfig) -> nn.Module:
    """Wrap the target layers with AdaLoRA, freeze everything else. Returns `model`."""
    if any(True for _ in adalora_layers(model)):
        raise ConfigError("the model already has AdaLoRA layers")
    names = find_targets(model, config.target_modules)
    for name in names:  # validate before changing anything
        m = model.get_submodule(name)
        if config.init_r > min(m.in_features, m.out_features):
            raise ConfigError(
                f"AdaLoRA init_r={config.init_r} is larger than {name} ({m.out_features}x{m.in_features}) allows"
            )
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        replace_module(model, name, AdaLoraLinear(model.get_submodule(name), config.init_r, config.alpha, config.dropout))
    model.adalora_config = config
    return model


def apply_adalora(model: nn.Module, config: AdaLoraConfig | None = None) -> nn.Module:
    """Registry entry point."""
    return inject_adalora(model, config or AdaLoraConfig())


def adalora_param_count(model_config, config: AdaLoraConfig) -> int:
    """Closed form at injection: init_r (in + out + 1) per adapted matrix (P, Q and Λ)."""
    shapes = linear_shapes(model_config)
    per_layer = sum(config.init_r * (i + o + 1) for name, (i, o) in shapes.items()
                    if "all-linear" in config.target_modules or name in config.target_modules)
    return per_layer * model_config.n_layers


def orthogonal_regularization(model: nn.Module, mode: str = "paper") -> torch.Tensor:
    """Σ ||PᵀP − I||²_F + ||QQᵀ − I||²_F over the AdaLoRA layers ("peft": mean of the unsquared norms)."""
    terms = []
    for _, layer in adalora_layers(model):
        a, b = layer.lora_A, layer.lora_B
        for cov in (a @ a.T, b.T @ b):
            eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
            diff = torch.linalg.matrix_norm(cov - eye, ord="fro")
            terms.append(diff ** 2 if mode == "paper" else diff)
    if not terms:
        raise ConfigError("the model has no AdaLoRA layers")
    total = torch.stack(terms)
    return total.sum() if mode == "paper" else total.mean()


def add_orth_reg_to_loss(model: nn.Module, weight: float, mode: str = "paper"):
    """Forward hook: in training mode, output.loss += weight · R. Returns the hook handle."""

    def hook(module, args, output):
        if module.training and weight > 0 and getattr(output, "loss", None) is not None:
            output.loss = output.loss + weight * orthogonal_regularization(module, mode)
        return output

    return model.register_forward_hook(hook)


class AdaLoraAllocator:
    """Importance scores, budget schedule and masking (PEFT's RankAllocator, same arithmetic)."""

    def __init__(self, model: nn.Module, config: AdaLoraConfig) -> None:
        if config.total_step is None:
            raise ConfigError("AdaLoraConfig.total_step must be set for rank allocation (the run's optimizer steps)")
        self.config = config
        self.layers = dict(adalora_layers(model))
        if not self.layers:
            raise ConfigError("the model has no AdaLoRA layers")
        self.init_bgt = sum(layer.lora_E.shape[0] for layer in self.layers.values())
        self.target_bgt = config.target_r * len(self.layers)
        self.ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}
        self.rank_pattern: dict[str, list[bool]] | None = None
        self.history: list[tuple[int, int]] = []  # (step, budget) whenever a mask was applied

    def _params(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, layer in self.layers.items():
            for pn in ("lora_A", "lora_B", "lora_E"):
                yield f"{name}.{pn}", getattr(layer, pn)

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        c = self.config
        if step <= c.tinit:
            return self.init_bgt, False
        if step > c.total_step - c.tfinal:
            return self.target_bgt, True
        mul = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.init_bgt - self.target_bgt) * mul ** 3 + self.target_bgt)
        return budget, step % c.deltaT == 0

    @torch.no_grad()
    def update_ipt(self) -> None:
        b1, b2 = self.config.beta1, self.config.beta2
        for n, p in self._params():
            if p.grad is None:
                continue
            if n not in self.ipt:
                self.ipt[n] = torch.zeros_like(p)
                self.exp_avg_ipt[n] = torch.zeros_like(p)
                self.exp_avg_unc[n] = torch.zeros_like(p)
            self.ipt[n] = (p * p.grad).abs()
            self.exp_avg_ipt[n] = b1 * self.exp_avg_ipt[n] + (1 - b1) * self.ipt[n]
            self.exp_avg_unc[n] = b2 * self.exp_avg_unc[n] + (1 - b2) * (self.ipt[n] - self.exp_avg_ipt[n]).abs()

    def scores(self) -> dict[str, torch.Tensor]:
        """Triplet score S_i per layer: s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji)."""
        out = {}
        for name in self.layers:
            s = {pn: self.exp_avg_ipt[f"{name}.{pn}"] * self.exp_avg_unc[f"{name}.{pn}"]
                 for pn in ("lora_A", "lora_B", "lora_E")}
            out[name] = s["lora_E"].view(-1) + s["lora_A"].mean(dim=1) + s["lora_B"].mean(dim=0)
        return out

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, list[bool]]:
        scores = self.scores()
        k = self.init_bgt - budget
        pattern = {}
        if k <= 0:
            return {name: [True] * layer.lora_E.shape[0] for name, layer in self.layers.items()}
        threshold = torch.kthvalue(torch.cat([s.view(-1) for s in scores.values()]), k=k)[0].item()
        for name, layer in self.layers.items():
            drop = scores[name] <= threshold
            layer.lora_E.masked_fill_(drop.view(-1, 1), 0.0)
            pattern[name] = (~drop).tolist()
        return pattern

    @torch.no_grad()
    def mask_using_rank_pattern(self) -> None:
        for name, keep in (self.rank_pattern or {}).items():
            layer = self.layers[name]
            keep_t = torch.tensor(keep, device=layer.lora_E.device)
            layer.lora_E.masked_fill_(~keep_t.view(-1, 1), 0.0)

    def update_and_allocate(self, step: int) -> int | None:
        """Call once per optimizer step (0-based `step`), after backward, before zero_grad.
        Returns the budget applied at this step, or None."""
        c = self.config
        final_start = c.total_step - c.tfinal
        if step < final_start:
            self.update_ipt()
            budget, mask = self.budget_schedule(step)
            if mask:
                self.rank_pattern = self.mask_to_budget(budget)
                self.history.append((step, budget))
                return budget
            return None
        if step == final_start:  # the final mask, from the scores gathered so far
            budget, _ = self.budget_schedule(step)
            self.rank_pattern = self.mask_to_budget(budget)
            self.history.append((step, budget))
            self.ipt, self.exp_avg_ipt, self.exp_avg_unc = {}, {}, {}
            return budget
        self.mask_using_rank_pattern()
        return None

    def ranks(self) -> dict[str, int]:
        """Kept triplets per layer (the current rank of each ΔW)."""
        return {name: int((layer.lora_E.detach().view(-1) != 0).sum()) for name, layer in self.layers.items()}


def adalora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in adalora_layers(model):
        for pn in ("lora_A", "lora_B", "lora_E"):
            out[f"{name}.{pn}"] = getattr(layer, pn).detach()
        out[f"{name}.ranknum"] = layer.ranknum.detach()
    return out


def save_adalora(model: nn.Module, directory, base_model_name_or_path: str | None = None) -> None:
    """adalora_config.json + adalora.safetensors (lmkit names); the base model path is recorded
    when given."""
    from pathlib import Path

    from safetensors.torch import save_file

    from lmkit.hub.safetensors_io import staged_directory

    config = getattr(model, "adalora_config", None)
    if config is None:
        raise ConfigError("the model has no AdaLoRA layers to save")
    tensors = {k: v.contiguous().cpu() for k, v in adalora_state_dict(model).items()}
    with staged_directory(directory, replaces=("adalora_config.json", "adalora.safetensors")) as tmp:
        meta = {"peft_type": "ADALORA", **config.to_dict()}
        if base_model_name_or_path is not None:
            meta["base_model_name_or_path"] = str(base_model_name_or_path)
        (tmp / "adalora_config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / "adalora.safetensors"), metadata={"format": "pt"})
    return Path(directory)


def load_adalora(model: nn.Module, directory) -> nn.Module:
    from pathlib import Path

    from safetensors.torch import load_file

    from lmkit.errors import CheckpointError

    directory = Path(directory)
    cfg_path = directory / "adalora_config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no adalora_config.json — not an lmkit AdaLoRA adapter")
    d = json.loads(cfg_path.read_text(encoding="utf-8"))
    d.pop("peft_type", None)
    d.pop("base_model_name_or_path", None)
    inject_adalora(model, AdaLoraConfig.from_dict(d))
    state = load_file(str(directory / "adalora.safetensors"))
    own = {}
    for name, layer in adalora_layers(model):
        for pn in ("lora_A", "lora_B", "lora_E", "ranknum"):
            own[f"{name}.{pn}"] = getattr(layer, pn)
    bad = sorted(set(state) ^ set(own)) + [k for k in state if k in own and state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"the AdaLoRA adapter does not fit this model: {bad[:6]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return model


def merge_adalora(model: nn.Module) -> nn.Module:
    """Fold every ΔW into its base weight and remove the AdaLoRA wrappers (a plain model)."""
    for name, layer in list(adalora_layers(model)):
        layer.merge()
        replace_module(model, name, layer.base_layer)
    if hasattr(model, "adalora_config"):
        del model.adalora_config
    return model
