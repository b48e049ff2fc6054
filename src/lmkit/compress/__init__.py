"""lmkit.compress — make a trained model smaller.

Pruning (masks.py, magnitude.py, nm_sparsity.py, schedule.py, finetune.py):
  magnitude_prune(model, 0.5, scope="layer"|"global"), prune_nm(model, 2, 4),
  keep_masks(trainer) re-applies masks after each optimizer step, sparsity_report(model),
  remove_pruning(model), prune_and_finetune(...) with a PruneSchedule (cubic, Zhu & Gupta);
  prune_ffn_neurons(model, keep) removes whole FFN channels (a smaller dense model, structured.py).
Knowledge distillation (distillation.py):
  distillation_loss(student_logits, teacher_logits, labels, temperature=T, alpha=a),
  DistillationModel(student, teacher), distill(teacher, student, data, train_config=...).
"""

from lmkit.compress.distillation import (
    DistillationModel,
    distill,
    distillation_loss,
    hidden_state_loss,
    soft_target_loss,
)
from lmkit.compress.finetune import prune_and_finetune, prune_model
from lmkit.compress.magnitude import magnitude_prune
from lmkit.compress.masks import (
    DEFAULT_TARGETS,
    apply_masks,
    find_targets,
    keep_masks,
    masks_from_zeros,
    remove_pruning,
    sparsity_report,
)
from lmkit.compress.nm_sparsity import is_nm_sparse, nm_mask, prune_nm
from lmkit.compress.schedule import PruneSchedule
from lmkit.compress.structured import neuron_importance, prune_ffn_neurons

__all__ = [
    "DEFAULT_TARGETS",
    "DistillationModel",
    "PruneSchedule",
    "apply_masks",
    "distill",
    "distillation_loss",
    "find_targets",
    "hidden_state_loss",
    "is_nm_sparse",
    "keep_masks",
    "magnitude_prune",
    "masks_from_zeros",
    "neuron_importance",
    "nm_mask",
    "prune_and_finetune",
    "prune_ffn_neurons",
    "prune_model",
    "prune_nm",
    "remove_pruning",
    "soft_target_loss",
    "sparsity_report",
]
