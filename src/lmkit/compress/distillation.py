"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a small student learns from a
teacher's output distribution ("soft targets") as well as from the data's hard labels.

At temperature T the teacher's and student's distributions over the vocabulary are
    p = softmax(z_teacher / T),   q = softmax(z_student / T).
A higher T flattens p and exposes the "dark knowledge" — which wrong tokens the teacher
finds plausible. The loss per counted position is

    L = alpha * T^2 * KL(p || q)  +  (1 - alpha) * CE(softmax(z_student), y)

(KL summed over the vocabulary, both terms averaged over the positions whose label is not
-100). Why T^2: dKL/dz_student = (q - p) / T, and for large T, q - p ~ (z_s - z_t)/(T V)
(zero-mean logits), so the soft gradient shrinks like 1/T^2; multiplying by T^2 keeps its
size independent of T, so alpha keeps meaning the same share of the gradient when T changes.
The hard-label term uses T = 1 (the student is finally used at T = 1).

For a causal LM, position t predicts token t+1: with shift=True the last logit and the first
label are dropped (the same convention as lmkit's models and Trainer), and the teacher's
distribution at t is the target for the student's at t.

Hidden-state distillation (the notes: "学生模型学习教师模型的输出概率分布或隐藏层表示"):
`hidden_weight > 0` adds hidden_weight * MSE(W h_student, h_teacher) on the final hidden
states (after the final norm), W a learned projection when the widths differ (as in
TinyBERT); the logit term is the core of KD and the default.

`DistillationModel` wraps (student, frozen teacher) into one module whose forward returns the
distillation loss, so lmkit's unchanged `Trainer` trains it: only the student (and the
projection) are parameters — the teacher is held outside the module tree, stays in eval
mode (no dropout) and runs under no_grad.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.output import ModelOutput

IGNORE_INDEX = -100


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ConfigError(
            f"vocabulary mismatch: the student predicts {student_logits.shape[-1]} tokens and the "
            f"teacher {teacher_logits.shape[-1]}; distillation compares distributions over the same "
            "vocabulary, so build the student with the teacher's tokenizer and vocab_size"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: both must see the same batch"
        )


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    shift: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean over counted positions.

    labels only select the positions (label != ignore_index); None counts every position.
    """
    _check(student_logits, teacher_logits)
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature!r}: must be > 0")
    if shift:
        student_logits, teacher_logits = student_logits[..., :-1, :], teacher_logits[..., :-1, :]
        labels = labels[..., 1:] if labels is not None else None
    v = student_logits.shape[-1]
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # fp32 at least (bf16 logits)
    log_q = F.log_softmax(student_logits.reshape(-1, v).to(dtype) / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.reshape(-1, v).to(dtype) / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # per position
    if labels is not None:
        keep = (labels.reshape(-1) != ignore_index).to(kl.dtype)
        kl = kl * keep
        n = keep.sum().clamp(min=1)
    else:
        n = kl.numel()
    return temperature**2 * kl.sum() / n


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    shift: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(student, labels); see the module doc.

    alpha = 1: soft targets only (labels may be None); alpha = 0: plain cross-entropy.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha!r}: must be in [0, 1] (the weight of the soft-target term)")
    soft = soft_target_loss(student_logits, teacher_logits, labels, temperature=temperature,
                            shift=shift, ignore_index=ignore_index)
    if alpha == 1.0:
        return soft
    if labels is None:
        raise ConfigError("alpha < 1 mixes in the hard-label cross-entropy, which needs labels")
    from lmkit.train.losses import cross_entropy

    hard = cross_entropy(student_logits, labels, shift=shift, ignore_index=ignore_index)
    return alpha * soft + (1.0 - alpha) * hard


class DistillationModel(nn.Module):
    """student + frozen teacher -> a module whose training forward returns the KD loss.

    In eval mode (or without labels) it is just the student, so Trainer.evaluate measures the
    student's own cross-entropy / perplexity.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 1.0,
                 alpha: float = 0.5, hidden_weight: float = 0.0) -> None:
        super().__init__()
        s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
        if s_cfg is not None and t_cfg is not None and s_cfg.vocab_size != t_cfg.vocab_size:
            raise ConfigError(
                f"vocabulary mismatch: teacher vocab_size={t_cfg.vocab_size}, student "
                f"vocab_size={s_cfg.vocab_size}; the student must use the teacher's tokenizer "
                "(build it with vocab_size equal to the teacher's)"
            )
        if temperature <= 0:
            raise ConfigError(f"temperature={temperature!r}: must be > 0")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha={alpha!r}: must be in [0, 1]")
        if hidden_weight < 0:
            raise ConfigError(f"hidden_weight={hidden_weight!r}: must be >= 0")
        self.student = student
        self.config = s_cfg
        self.temperature, self.alpha, self.hidden_weight = float(temperature), float(alpha), float(hidden_weight)
        object.__setattr__(self, "_teacher", teacher)  # not a submodule: no params, no state_dict
        self._teacher_grad = [p.requires_grad for p in teacher.parameters()]
        teacher.requires_grad_(False)
        teacher.eval()
        if hidden_weight > 0:
            d_s, d_t = s_cfg.d_model, t_cfg.d_model
            self.hidden_proj = nn.Linear(d_s, d_t, bias=False) if d_s != d_t else nn.Identity()

    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    def release_teacher(self) -> None:
        """Give the teacher its requires_grad flags back."""
        for p, g in zip(self._teacher.parameters(), self._teacher_grad):
            p.requires_grad_(g)

    def train(self, mode: bool = True) -> "DistillationModel":
        super().train(mode)
        self._teacher.eval()  # never dropout in the teacher
        return self

    def _apply(self, fn, recurse=True):  # .to(device) / .half() move the teacher too
        super()._apply(fn, recurse)
        self._teacher._apply(fn)
        return self

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        self.student.gradient_checkpointing_enable(enabled)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> ModelOutput:
        out = self.student(input_ids=input_ids, **kwargs)
        if labels is None or not self.training:
            return out
        with torch.no_grad():
            t_out = self._teacher(input_ids=input_ids, **kwargs)
        loss = distillation_loss(out.logits, t_out.logits, labels, temperature=self.temperature, alpha=self.alpha)
        if self.hidden_weight > 0:
            loss = loss + self.hidden_weight * hidden_state_loss(
                self.hidden_proj(out.hidden_states), t_out.hidden_states, labels)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        return ModelOutput(logits=out.logits, loss=loss, hidden_states=out.hidden_states, aux_loss=out.aux_loss)


def hidden_state_loss(student_h: torch.Tensor, teacher_h: torch.Tensor, labels: torch.Tensor | None = None,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean squared error between (projected) student and teacher hidden states over the
    positions that predict a counted label (label at t+1 != ignore_index)."""
    if student_h.shape != teacher_h.shape:
        raise ConfigError(f"hidden states {tuple(student_h.shape)} vs {tuple(teacher_h.shape)}: project the student's first")
    se = (student_h.float() - teacher_h.float()).pow(2).mean(-1)  # [B, T]
    if labels is None:
        return se.mean()
    keep = F.pad(labels[..., 1:] != ignore_index, (0, 1), value=False).to(se.dtype)
    return (se * keep).sum() / keep.sum().clamp(min=1)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    train_data: Iterable,
    eval_data: Iterable | None = None,
    *,
    train_config,
    temperature: float = 1.0,
    alpha: float = 0.5,
    hidden_weight: float = 0.0,
) -> dict[str, Any]:
    """Train `student` (in place) to imitate `teacher` with lmkit's Trainer.

    Returns {"history": per-step records, and eval_loss/eval_ppl of the student when
    eval_data is given}.
    """
    from lmkit.train.trainer import Trainer

    if train_config.label_smoothing:
        raise ConfigError("label_smoothing does not apply to distillation (the soft targets already smooth); set it to 0")
    wrapper = DistillationModel(student, teacher, temperature=temperature, alpha=alpha, hidden_weight=hidden_weight)
    try:
        trainer = Trainer(wrapper, train_config, train_data, eval_data)
        trainer.train()
        result: dict[str, Any] = {"history": trainer.history}
        if eval_data is not None:
            result.update(trainer.evaluate())
    finally:
        wrapper.release_teacher()
    return result
