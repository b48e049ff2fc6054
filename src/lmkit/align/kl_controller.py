"""KL penalty coefficient controllers (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences").

PPO-RLHF maximises  score - beta * KL(pi || pi_ref)  so the policy does not drift into text
the reward model was never trained on (reward hacking). A fixed beta is simple; the
adaptive controller moves beta so the observed KL tracks a target:

    e     = clip(KL / KL_target - 1, -0.2, 0.2)
    beta <- beta * (1 + e * n_steps / horizon)

(n_steps = samples since the last update). KL above target raises the penalty, below
lowers it; the clip bounds the change per update.
"""

from __future__ import annotations

from lmkit.errors import ConfigError


class FixedKLController:
    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ConfigError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef <= 0 or target <= 0 or horizon <= 0:
            raise ConfigError(
                f"adaptive KL needs init_kl_coef > 0, target > 0, horizon > 0 (got {init_kl_coef}, {target}, {horizon})"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
