"""lmkit.train — the training loop and everything around it.

`Trainer` (trainer.py) with `TrainConfig` (config.py); optimizers (optim.py), lr schedules
(schedule.py), losses (losses.py), atomic checkpoints (checkpoint.py), DDP/FSDP
(distributed.py), metrics logging (metrics_log.py), the training-memory estimator
(memory.py), adversarial training on embeddings (adversarial.py: FGM/FGSM/PGD/FreeLB,
`TrainConfig.adversarial`) and domain-adversarial training (domain_adversarial.py: DANN).
"""

from lmkit.train.config import TrainConfig
from lmkit.train.losses import count_targets, cross_entropy
from lmkit.train.memory import MemoryEstimate, estimate_memory
from lmkit.train.optim import SGD, AdamW, build_optimizer, param_groups
from lmkit.train.schedule import build_scheduler, lr_factor
from lmkit.train.trainer import Trainer, set_seed

__all__ = [
    "AdamW",
    "MemoryEstimate",
    "SGD",
    "TrainConfig",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "count_targets",
    "cross_entropy",
    "estimate_memory",
    "lr_factor",
    "param_groups",
    "set_seed",
]
