"""P-tuning v1 (Liu et al. 2021, "GPT Understands, Too").

Like prompt tuning, continuous virtual tokens enter only at the input layer, but

  * they are produced by a prompt encoder from n trainable embeddings, so neighbouring
    virtual tokens are not independent: LSTM (bidirectional, 2 layers) + MLP head, or an MLP
    (`encoder="lstm" | "mlp"`). The layout and parameter names are PEFT's `PromptEncoder`
    (embedding, lstm_head, mlp_head), so weights copy across;
  * their position is configurable: `template=(n_before, n_after)` puts n_before virtual
    tokens in front of the input and n_after right after it (the paper's templates
    "[P..] x [P..] y"; with a bidirectional encoder every token sees both groups).

The prompt encoder is only needed while training: `finalize_ptuning` replaces it by the
n computed embeddings (outputs unchanged). Trainable (MLP, hidden h):
n·d + (d·h + h) + (h·h + h) + (h·d + d); (LSTM): n·d + LSTM(d -> h, 2 layers, both
directions) + (2h·2h + 2h) + (2h·d + d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.peft.method_common import MethodConfig, bad, check_choice, check_int, freeze, model_config_of
from lmkit.peft.prompt_tuning import VirtualTokenModel

ENCODERS = ("lstm", "mlp")


@dataclass
class PTuningConfig(MethodConfig):
    method = "ptuning"
    n_virtual_tokens: int = 8
    encoder: str = "lstm"
    hidden_size: int | None = None  # None: d_model
    template: tuple[int, int] | None = None  # (n_before, n_after); None: all n in front
    dropout: float = 0.0  # LSTM dropout (between its layers)
    finalized: bool = False  # set by finalize_ptuning: the prompts are stored directly, no encoder

    def __post_init__(self) -> None:
        check_int(self, "n_virtual_tokens")
        check_choice(self, "encoder", ENCODERS)
        if self.hidden_size is not None:
            check_int(self, "hidden_size")
        if self.template is not None:
            self.template = tuple(int(x) for x in self.template)
            if len(self.template) != 2 or min(self.template) < 0 or sum(self.template) != self.n_virtual_tokens:
                bad(self, "template", f"must be (n_before, n_after), both >= 0, summing to n_virtual_tokens={self.n_virtual_tokens}")


class PromptEncoder(nn.Module):
    def __init__(self, n: int, d: int, hidden: int, kind: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.n, self.kind = n, kind
        self.embedding = nn.Embedding(n, d)
        if kind == "lstm":
            self.lstm_head = nn.LSTM(d, hidden, num_layers=2, dropout=dropout, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, d))
        else:
            self.mlp_head = nn.Sequential(
                nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d)
            )
        self.prompts: nn.Parameter | None = None

    def compute(self) -> torch.Tensor:
        e = self.embedding.weight[None]  # [1, n, d]
        if self.kind == "lstm":
            e = self.lstm_head(e)[0]
        return self.mlp_head(e)[0]

    def forward(self) -> torch.Tensor:
        return self.prompts if self.prompts is not None else self.compute()

    @torch.no_grad()
    def finalize(self) -> None:
        if self.prompts is None:
            self.prompts = nn.Parameter(self.compute().detach().clone())
            del self.embedding, self.mlp_head
            if self.kind == "lstm":
                del self.lstm_head


def apply_ptuning(model: nn.Module, config: PTuningConfig | None = None) -> VirtualTokenModel:
    """Freeze `model`; return a VirtualTokenModel with a trainable P-tuning prompt encoder."""
    config = config or PTuningConfig()
    mcfg = model_config_of(model)
    freeze(model)
    p = next(model.parameters())
    enc = PromptEncoder(config.n_virtual_tokens, mcfg.d_model, config.hidden_size or mcfg.d_model,
                        config.encoder, config.dropout).to(device=p.device, dtype=p.dtype)
    if config.finalized:
        enc.finalize()
    before, after = config.template if config.template is not None else (config.n_virtual_tokens, 0)
    wrapped = VirtualTokenModel(model, enc, before, after)
    wrapped._ptuning_config = config
    return wrapped


def finalize_ptuning(model: VirtualTokenModel) -> VirtualTokenModel:
    """Replace the prompt encoder by the virtual token embeddings it computes (outputs unchanged)."""
    enc = getattr(model, "prompt_encoder", None)
    if not isinstance(enc, PromptEncoder):
        raise ConfigError("finalize_ptuning: not a P-tuning model (apply_ptuning first)")
    enc.finalize()
    if hasattr(model, "_ptuning_config"):
        model._ptuning_config.finalized = True
    return model


def ptuning_param_count(model_config: ModelConfig, config: PTuningConfig) -> int:
    n, d = config.n_virtual_tokens, model_config.d_model
    h = config.hidden_size or d
    total = n * d
    if config.finalized:
        return total
    if config.encoder == "mlp":
        return total + (d * h + h) + (h * h + h) + (h * d + d)
    # LSTM: per layer and direction 4h·(input + h) weights + 2·4h biases; layer 2 input is 2h
    lstm = 2 * (4 * h * (d + h) + 8 * h) + 2 * (4 * h * (2 * h + h) + 8 * h)
    return total + lstm + (2 * h * 2 * h + 2 * h) + (2 * h * d + d)
