"""lmkit.align — post-training from preferences and rewards (RLHF stages 2-3, DPO, GRPO).

* `reward_model`  decoder + scalar head; Bradley–Terry loss; `train_reward_model`
* `dpo`           DPO (sigmoid), IPO, conservative DPO; `train_dpo`
* `ppo`           PPO-RLHF with a value head (`value_head`), GAE (`gae`), KL control (`kl_controller`)
* `grpo`          group-normalised advantages, k3 KL, no value model; `train_grpo`
* `rewards`       verifiable / rule-based reward functions; `synthetic` toy tasks
* `logprobs`, `reference`, `rollout`, `objective`: the shared pieces (PNG curves: `lmkit.train.metrics_log.plot_curves`)
Preference data lives in `lmkit.data.preference`. See docs/alignment.md.
"""

# Loaded on first use: `lmkit` imports lmkit.align.commands for every invocation, which
# imports this package, and the CLI must stay fast.
_EXPORTS = {
    "dpo_loss": "dpo", "train_dpo": "dpo", "GRPOConfig": "grpo", "train_grpo": "grpo", "PPOConfig": "ppo",
    "train_ppo": "ppo", "RewardModel": "reward_model", "load_reward_model": "reward_model",
    "save_reward_model": "reward_model", "train_reward_model": "reward_model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"lmkit.align.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lmkit.align' has no attribute {name!r}")
