"""`run_finetune`: one driver for full fine-tuning and every PEFT method, with the trade-offs measured.

    report = run_finetune("lora", model, tokenizer, train_loader, eval_loader,
                          LoraConfig(r=8), TrainConfig(max_steps=200, lr=1e-3))
    report.trainable_params, report.peak_memory_bytes, report.eval_loss, report.base_eval_loss

Methods: full (every parameter trains), lora, qlora, adalora, and every method of
`lmkit.peft.registry` (adapter, fusion, adapterdrop, prefix, prompt, ptuning, ptuning2,
bitfit, probe). Training is lmkit's `Trainer`; AdaLoRA's orthogonal regulariser is added to
the loss by a forward hook and its rank allocator runs after every optimizer step (an
optimizer step post-hook, i.e. after the update and before the gradients are cleared).

Measured for every run:
  trainable / total parameters (distinct tensors; NF4 codes count as weights, not params:
      `total_params` is the parameter count of the model *before* the method was applied
      plus the parameters it added);
  peak memory of training (from the adapted model to the end): on CUDA
      `torch.cuda.max_memory_allocated`; on Linux CPU the process's peak resident set
      (VmHWM, reset through /proc/self/clear_refs when training starts; it includes the
      Python + torch baseline, so compare methods run the same way — bench_peft_methods.py
      runs each in a fresh process); elsewhere the growth of ru_maxrss;
  state_bytes: bytes of weights + buffers + gradients + optimizer state after training — the
      part of memory the method decides (the notes' memory formula: see docs/finetuning.md);
  held-out loss of the frozen base before training and of the tuned model after;
  base_unchanged: every frozen parameter and buffer is bit-identical after training.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.train.config import TrainConfig

CORE_METHODS = ("full", "lora", "qlora", "adalora")


def all_methods() -> list[str]:
    names = list(CORE_METHODS)
    try:
        from lmkit.peft.registry import method_names

        names += [m for m in method_names() if m not in names]
    except ImportError:  # pragma: no cover - registry is another module's
        pass
    return names


@dataclass
class FinetuneReport:
    method: str
    trainable_params: int
    total_params: int
    trainable_pct: float
    peak_memory_bytes: int
    memory_kind: str
    state_bytes: int
    base_eval_loss: float | None
    eval_loss: float | None
    train_loss: float | None
    steps: int
    seconds: float
    steps_per_s: float
    base_unchanged: bool | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        mem = f"{self.peak_memory_bytes / 2**20:.1f} MiB ({self.memory_kind})"
        ev = "n/a" if self.eval_loss is None else f"{self.eval_loss:.4f}"
        base = "n/a" if self.base_eval_loss is None else f"{self.base_eval_loss:.4f}"
        return (f"{self.method}: trainable {self.trainable_params:,} / {self.total_params:,} params "
                f"({self.trainable_pct:.3f}%), peak memory {mem}, held-out loss {base} -> {ev}, "
                f"{self.steps} steps in {self.seconds:.1f}s")


# ---- helpers ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_loss(model: nn.Module, data: Iterable, device: torch.device | str | None = None,
                  max_batches: int | None = None) -> float:
    """Mean token cross-entropy over labelled batches (labels shifted inside, -100 ignored)."""
    from lmkit.train.losses import count_targets, cross_entropy

    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    total, n = 0.0, 0
    try:
        for batch in itertools.islice(iter(data), max_batches):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            labels = batch.pop("labels")
            out = model(**batch)
            total += cross_entropy(out.logits, labels, shift=True, reduction="sum").item()
            n += count_targets(labels)
    finally:
        model.train(was_training)
    if n == 0:
        raise ConfigError("the evaluation data has no target tokens")
    return total / n


def _param_count(model: nn.Module) -> tuple[int, int]:
    params = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in params.values() if p.requires_grad), sum(p.numel() for p in params.values())


def _frozen_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            out[n] = p.detach().clone()
    for n, b in model.named_buffers():
        if "ranknum" not in n:
            out[n] = b.detach().clone()
    return out


def _unchanged(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    now = dict(model.named_parameters())
    now.update(dict(model.named_buffers()))
    return all(k in now and torch.equal(now[k].detach().cpu(), v.cpu()) for k, v in snapshot.items())


def _tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Weights + buffers + gradients + optimizer state, in bytes. A trainable parameter's
    gradient counts even when it was freed after the last step (it exists during every step)."""
    ts = list(model.parameters()) + list(model.buffers())
    if optimizer is not None:
        for st in optimizer.state.values():
            ts += [v for v in st.values() if torch.is_tensor(v)]
    grads = _tensor_bytes(p for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad)
    return _tensor_bytes(ts) + grads


def _peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _proc_status("VmHWM") is not None
    except OSError:
        return False


def _config_for(method: str, method_config):
    if method_config is not None:
        return method_config
    if method == "lora":
        from lmkit.peft.lora import LoraConfig

        return LoraConfig()
    if method == "qlora":
        from lmkit.peft.qlora import QLoraConfig

        return QLoraConfig()
    if method == "adalora":
        from lmkit.peft.adalora import AdaLoraConfig

        return AdaLoraConfig()
    if method == "full":
        return None
    from lmkit.peft.registry import get_method

    return get_method(method).config_cls()


def apply_method(method: str, model: nn.Module, method_config=None, *, total_steps: int | None = None):
    """Apply `method` to `model` in place; returns (model, config, allocator or None)."""
    config = _config_for(method, method_config)
    allocator = None
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "lora":
        from lmkit.peft.lora import LoraConfig, inject_lora

        if not isinstance(config, LoraConfig) or type(config).__name__ != "LoraConfig":
            raise ConfigError(f"method 'lora' needs a LoraConfig, got {type(config).__name__}")
        inject_lora(model, config)
    elif method == "qlora":
        from lmkit.peft.qlora import QLoraConfig, apply_qlora

        if not isinstance(config, QLoraConfig):
            raise ConfigError(f"method 'qlora' needs a QLoraConfig, got {type(config).__name__}")
        apply_qlora(model, config)
    elif method == "adalora":
        from lmkit.peft.adalora import AdaLoraAllocator, AdaLoraConfig, add_orth_reg_to_loss, inject_adalora

        if not isinstance(config, AdaLoraConfig):
            raise ConfigError(f"method 'adalora' needs an AdaLoraConfig, got {type(config).__name__}")
        if config.total_step is None:
            if total_steps is None:
                raise ConfigError("AdaLoRA needs total_step (the number of optimizer steps)")
            config = dataclasses.replace(config, total_step=total_steps)
        inject_adalora(model, config)
        add_orth_reg_to_loss(model, config.orth_reg_weight, config.orth_reg)
        allocator = AdaLoraAllocator(model, config)
    else:
        from lmkit.peft.registry import get_method

        spec = get_method(method)
        if not isinstance(config, spec.config_cls):
            raise ConfigError(f"method {method!r} needs a {spec.config_cls.__name__}, got {type(config).__name__}")
        model = spec.apply(model, config)
    return model, config, allocator


def run_finetune(
    method: str,
    model: nn.Module,
    tokenizer: Any,
    train_data: Iterable,
    eval_data: Iterable | None,
    method_config: Any = None,
    train_config: TrainConfig | None = None,
    *,
    check_base: bool = True,
) -> FinetuneReport | None:
    """Fine-tune `model` in place with `method` on `train_data`; returns the measured report,
    whose `.model` is the trained model (the same object, or the wrapper a method such as
    prompt tuning puts around it). `tokenizer` is accepted for methods that need one.

    Under a sharded layout (`train_config.parallel` with tp / pp / fsdp, method 'full') the
    report's model is the gathered whole model, on rank 0; the other ranks get None."""
    from lmkit.train.trainer import Trainer

    if method not in all_methods():
        raise ConfigError(f"unknown fine-tuning method {method!r}; choose one of {all_methods()}")
    train_config = train_config or TrainConfig()
    device = _device(train_config)
    model.to(device)
    base_total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    base_eval = evaluate_loss(model, eval_data, device, train_config.eval_steps or None) if eval_data is not None else None

    cuda = device.type == "cuda"
    kept_alive = list(model.parameters())  # hold them so that no new tensor can reuse an id
    params_before = {id(p) for p in kept_alive}
    model, config, allocator = apply_method(method, model, method_config, total_steps=train_config.max_steps)
    model.to(device)
    trainable, _ = _param_count(model)
    added = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in params_before)
    total = base_total + added
    del kept_alive
    if trainable == 0:
        raise ConfigError(f"method {method!r} left no trainable parameters")
    snapshot = _frozen_snapshot(model) if (check_base and method != "full") else None

    # peak memory of the training run: from here (model adapted, before the optimizer exists)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    hwm = False if cuda else _reset_peak_rss()
    rss_start = _proc_status("VmRSS") if hwm else None
    rss_before = _peak_rss_bytes()
    trainer = Trainer(model, train_config, train_data, eval_data)
    if allocator is not None:
        trainer.optimizer.register_step_post_hook(lambda opt, args, kwargs: allocator.update_and_allocate(trainer.step))
    t0 = time.perf_counter()
    records = trainer.train()
    seconds = time.perf_counter() - t0
    if trainer.strategy not in ("none", "ddp"):  # sharded or split: the whole model, on rank 0 only
        if method != "full":
            raise ConfigError(f"method {method!r} trains under one process or DDP; a parallel: layout needs 'full'")
        model = trainer.full_model()
        if model is None:
            return None  # rank > 0: rank 0 reports and saves
    eval_loss = evaluate_loss(model, eval_data, device, train_config.eval_steps or None) if eval_data is not None else None

    extra: dict[str, Any] = {"config": config.to_dict() if hasattr(config, "to_dict") else None}
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    elif hwm:
        peak, kind = _proc_status("VmHWM"), "peak RSS of the process during training (CPU)"
        extra["rss_at_start"] = rss_start
    else:
        peak, kind = max(_peak_rss_bytes() - rss_before, 0), "growth of the process's peak RSS (CPU)"
    if method == "qlora":
        from lmkit.peft.qlora import nf4_storage

        extra.update(nf4_storage(model))
    if allocator is not None:
        extra["adalora_ranks"] = allocator.ranks()
        extra["adalora_budget_history"] = allocator.history
    steps = len(records)
    report = FinetuneReport(
        method=method, trainable_params=trainable, total_params=total,
        trainable_pct=100.0 * trainable / max(total, 1), peak_memory_bytes=int(peak), memory_kind=kind,
        state_bytes=state_bytes(model, trainer.optimizer), base_eval_loss=base_eval, eval_loss=eval_loss,
        train_loss=records[-1]["loss"] if records else None, steps=steps, seconds=seconds,
        steps_per_s=steps / seconds if seconds > 0 else math.inf,
        base_unchanged=_unchanged(model, snapshot) if snapshot is not None else None, extra=extra,
    )
    report.model = model  # the trained model (a method may wrap the one passed in); not serialised
    return report


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


# ---- a small shared task (tests, benchmarks, docs) -------------------------------------------
@dataclass
class ToyTask:
    tokenizer: Any
    base: nn.Module  # a DecoderLM pretrained on the task's facts as plain text (not on the chat format)
    train: list  # SFTExample
    eval: list  # SFTExample (held out: other rows of the same distribution)
    template: Any


def toy_task(seed: int = 0, n_train: int = 256, n_eval: int = 64, pretrain_steps: int = 60,
             d_model: int = 64, progress: bool = False, out_dir: str | None = None) -> ToyTask:
    """Tokenizer + tiny Llama-style base + SFT examples for comparing fine-tuning methods on a CPU.

    The base learns plain sentences ("The opposite of hot is cold.", "After four comes five.")
    for `pretrain_steps` steps; the SFT data asks the same facts as ChatML conversations, so
    fine-tuning has to teach the format and the question -> answer mapping."""
    import tempfile

    from lmkit.data.packing import PackedDataset, PackedLoader
    from lmkit.data.sft import tokenize_conversations, toy_pretrain_text, toy_sft_rows
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.tokenizers import BPETokenizer
    from lmkit.tokenizers.chat_template import CHATML
    from lmkit.train.trainer import Trainer

    torch.manual_seed(seed)
    train_rows, eval_rows = toy_sft_rows(n_train, seed), toy_sft_rows(n_eval, seed + 1000)
    pre = toy_pretrain_text(400, seed + 2000)
    tok = BPETokenizer.train([CHATML.render(r["messages"]) for r in train_rows] + [pre], vocab_size=320,
                             special_tokens=CHATML.special_tokens)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=d_model, n_layers=2, n_heads=4, n_kv_heads=2,
                      d_ff=2 * d_model, max_seq_len=256, norm="rmsnorm", activation="silu", gated_ffn=True,
                      position="rope", model_type="llama", tie_embeddings=False,
                      eos_token_id=tok.token_to_id(CHATML.end_of_turn))
    base = DecoderLM(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(max_steps=pretrain_steps, lr=5e-3, warmup_steps=5, out_dir=out_dir or tmp,
                         progress=progress, device="cpu", seed=seed)
        Trainer(base, tc, PackedLoader(PackedDataset(tok.encode(pre), 64), 16, seed=seed)).train()
    base.eval()
    for p in base.parameters():
        p.grad = None
    tr = tokenize_conversations([r["messages"] for r in train_rows], tok, CHATML)
    ev = tokenize_conversations([r["messages"] for r in eval_rows], tok, CHATML)
    return ToyTask(tok, base, tr, ev, CHATML)
