"""The SFT defaults build the TrainConfig that `lmkit sft` / `finetune` train with."""

import pytest

from lmkit.errors import ConfigError
from lmkit.peft.sft_defaults import SFT_DEFAULTS, SFTDefaults


def test_train_config_from_defaults():
    tc = SFT_DEFAULTS.train_config("lora", out_dir="x", seed=3)
    assert tc.max_steps == SFT_DEFAULTS.steps and tc.lr == SFT_DEFAULTS.lr_peft and tc.seed == 3
    assert tc.schedule == "cosine" and tc.min_lr_ratio == SFT_DEFAULTS.min_lr_ratio
    assert 0 < tc.warmup_steps <= SFT_DEFAULTS.max_warmup
    full = SFT_DEFAULTS.train_config("full", steps=40, lr=1e-5)
    assert (full.max_steps, full.lr, full.warmup_steps) == (40, 1e-5, 2)
    assert SFT_DEFAULTS.lr_for("full") < SFT_DEFAULTS.lr_for("prompt")
    assert SFT_DEFAULTS.method_options("lora") == {"target_modules": ("all-linear",)}
    assert SFT_DEFAULTS.method_options("prefix") == {}


@pytest.mark.parametrize("bad", [{"steps": 0}, {"lr_full": 0}, {"warmup_fraction": 1.0}, {"min_lr_ratio": 2},
                                 {"lora_target_modules": ()}])
def test_invalid_defaults(bad):
    with pytest.raises(ConfigError):
        SFTDefaults(**bad)
