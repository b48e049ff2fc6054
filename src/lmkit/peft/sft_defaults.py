"""Default training settings of `lmkit sft` / `lmkit finetune`: chosen so that the model learns
to end its turn.

The one token a chat model must learn from scratch in SFT is the template's end of turn
(ChatML's <|im_end|>): one target per reply, against dozens of reply tokens the base model
can already half-predict. Too few updates at too low a learning rate leave its probability
near zero at the end of a reply, and the model talks until max_tokens. Measured on
quickstart models (1.0 M parameters, tokenizer with the chat tokens reserved) fine-tuned with
the CLI on 400 toy chat rows (`data.sft.toy_sft_rows`); 40 held-out prompts, greedy decoding
up to 48 tokens; P = probability of <|im_end|> right after the held-out reply:

  quickstart --steps 300 (val. perplexity 133):
    lora q/v, old default (lr 1e-3, cosine to 0)      P 0.008   5 % of replies end with it
    lora all-linear, these defaults                   P 0.049   100 % ("After zero comes one.")
  quickstart cut at 85 steps (val. perplexity 434):
    sft, old default (lr 1e-4)                        P 0.05    100 %
    sft, these defaults (lr 1e-3)                     P 0.99    100 % (and correct)
    lora q/v, old default                             P 0.006   25 %
    lora q/v, lr 2e-3 + cosine floor                  P 0.010   45 %
    lora all-linear, these defaults                   P 0.02    100 %
  toy_task (d_model 64; tests/test_sft_defaults.py): full SFT old default 55 %, these 100 %.

The README's own path (bench/bench_sft_end_of_turn.py: quickstart, `lmkit finetune ... --method
lora` with these defaults on chat.jsonl less 19 held-out rows, merge; greedy, 256 tokens; share
of replies that end with <|im_end|>, the same in `lmkit chat`, `lmkit generate` and
transformers.generate):

  quickstart default 1200 steps, lora lr 2e-3 (200 steps)   84 % (the other 16 % stop on
                                                            <|endoftext|>, P(<|im_end|>) 0.000)
                                 lora lr 2e-3, 400 steps    100 %
                                 lora lr 5e-3 (these)       100 %
  quickstart --steps 400,        lora lr 2e-3               100 %
                                 lora lr 5e-3 (these)       100 %

(The 1e-3 full fine-tuning rate suits the small models lmkit trains on a CPU; pass --lr 1e-5
.. 2e-5 for billion-parameter checkpoints.)

    tc = SFT_DEFAULTS.train_config("lora", out_dir="runs/lora/run")   # a TrainConfig
    SFT_DEFAULTS.lr_for("full"), SFT_DEFAULTS.steps
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmkit.errors import ConfigError
from lmkit.train.config import TrainConfig


@dataclass(frozen=True)
class SFTDefaults:
    steps: int = 200
    lr_full: float = 1e-3  # every weight trains (small models; see the docstring)
    lr_peft: float = 5e-3  # LoRA and the other parameter-efficient methods (2e-3: 84 % ended, see above)
    warmup_fraction: float = 0.05  # linear warmup over this share of the steps (at most max_warmup)
    max_warmup: int = 30
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio, not 0: the last steps still learn
    # LoRA / QLoRA / AdaLoRA on every linear layer but the LM head (QLoRA paper, PEFT's "all-linear"):
    # with q_proj/v_proj only, the end of turn was not learned (P(<|im_end|>) 0.01, 45 % of replies ended)
    lora_target_modules: tuple[str, ...] = ("all-linear",)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"SFTDefaults.steps must be >= 1, got {self.steps}")
        for name in ("lr_full", "lr_peft"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"SFTDefaults.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"SFTDefaults.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        if not self.lora_target_modules:
            raise ConfigError("SFTDefaults.lora_target_modules must name at least one module (or 'all-linear')")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"SFTDefaults.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def method_options(self, method: str) -> dict[str, Any]:
        """Method config fields these defaults set (when the user did not): LoRA's targets."""
        if method in ("lora", "qlora", "adalora"):
            return {"target_modules": tuple(self.lora_target_modules)}
        return {}

    def lr_for(self, method: str) -> float:
        return self.lr_full if method == "full" else self.lr_peft

    def warmup_for(self, steps: int) -> int:
        return min(self.max_warmup, int(steps * self.warmup_fraction))

    def train_config(self, method: str, steps: int | None = None, lr: float | None = None,
                     **fields: Any) -> TrainConfig:
        """A TrainConfig with these defaults; `steps` / `lr` None take the defaults, `fields`
        set any other TrainConfig field (out_dir, seed, device, precision ...)."""
        steps = self.steps if steps is None else int(steps)
        return TrainConfig(max_steps=steps, lr=self.lr_for(method) if lr is None else float(lr),
                           warmup_steps=self.warmup_for(steps), schedule=self.schedule,
                           min_lr_ratio=self.min_lr_ratio, **fields)


SFT_DEFAULTS = SFTDefaults()
