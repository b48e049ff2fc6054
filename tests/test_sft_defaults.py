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


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_defaults_teach_the_end_of_turn(tmp_path, method):
    """With the default settings, greedy replies to held-out prompts end with <|im_end|>."""
    from lmkit.data.sft import sft_loader, toy_sft_rows
    from lmkit.infer import generate
    from lmkit.peft.finetune import _config_for, run_finetune, toy_task

    task = toy_task(seed=0, n_train=256, n_eval=32, pretrain_steps=60)
    config = _config_for(method, None)
    if config is not None:
        config = type(config).from_dict({**config.to_dict(), **SFT_DEFAULTS.method_options(method)})
    tc = SFT_DEFAULTS.train_config(method, out_dir=str(tmp_path), device="cpu", progress=False, eval_steps=0)
    train = sft_loader(task.train, 8, pack=True, seq_len=256, pad_id=0, seed=0)
    report = run_finetune(method, task.base, task.tokenizer, train, None, config, tc)
    model = report.model.eval()
    eot = task.tokenizer.token_to_id("<|im_end|>")
    ended = 0
    for row in toy_sft_rows(20, seed=1000):
        prompt, _ = task.template.render_with_mask(row["messages"][:1], task.tokenizer, add_generation_prompt=True)
        seq = generate(model, [prompt], max_new_tokens=40, eos_token_id=[eot]).sequences[0]
        ended += seq[-1:] == [eot]
    assert ended >= 18  # >= 90 %
