"""`lmkit info`: what a checkpoint is, without loading its weights.

The model is built on PyTorch's meta device (shapes only, no memory), so describing a
70B checkpoint is as quick as describing a tiny one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmkit.models.summary import count_by_component, human_bytes, human_count, weight_memory


def describe_checkpoint(directory: str | os.PathLike) -> str:
    from lmkit.hub.pretrained import arch_module, read_hf_config

    directory = Path(directory)
    hf = read_hf_config(directory)
    arch = arch_module(hf.get("model_type"))
    cfg = arch.config_from_hf(hf)
    with torch.device("meta"):
        model = arch.build_model(cfg)
    counts = count_by_component(model)
    total = sum(counts.values())
    mem = weight_memory(model)
    on_disk = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    lines = [
        f"checkpoint   {directory}",
        f"model_type   {cfg.model_type}  ({type(model).__name__}, arch={cfg.arch})",
        f"shape        d_model={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads} "
        f"kv_heads={cfg.n_kv_heads} head_dim={cfg.head_dim} d_ff={cfg.d_ff} vocab={cfg.vocab_size}",
        f"positions    {cfg.position}  max_seq_len={cfg.max_seq_len}"
        + (f"  sliding_window={cfg.sliding_window}" if cfg.sliding_window else ""),
        f"norm / ffn   {cfg.norm} ({cfg.norm_position}-norm) / {cfg.activation}{' gated' if cfg.gated_ffn else ''}"
        + (f"  MoE {cfg.n_experts} experts, top-{cfg.n_experts_per_tok}" if cfg.n_experts else ""),
        f"parameters   {human_count(total)} ({total:,})",
    ]
    for name, n in counts.items():
        lines.append(f"  {name:<14}{human_count(n):>10}  {100 * n / total:5.1f}%")
    lines.append("weight memory")
    for prec in ("fp32", "bf16", "int8", "nf4"):
        lines.append(f"  {prec:<14}{human_bytes(mem.bytes_at(prec)):>10}")
    if on_disk:
        lines.append(f"on disk      {human_bytes(on_disk)} of safetensors")
    vocab_line = describe_vocabulary(directory, cfg.vocab_size)
    if vocab_line:
        lines.append(vocab_line)
    return "\n".join(lines)


def describe_vocabulary(directory: Path, rows: int) -> str | None:
    """The tokenizer's size against the model's `rows` embedding rows, and the padding between.

    Checkpoints often pad the embedding beyond the tokenizer (Qwen2: 151,936 rows, 151,665
    tokens); lmkit never generates the padding ids when the model runs with its tokenizer.
    None when the directory holds no tokenizer.
    """
    from lmkit.errors import LmkitError
    from lmkit.tokenizers.loading import load_tokenizer

    if not any((directory / n).is_file() for n in ("tokenizer.json", "vocab.txt")) \
            and not any(directory.glob("*.model")):
        return None
    try:
        n = len(load_tokenizer(directory))
    except LmkitError as exc:
        return f"tokenizer    unreadable: {exc}"
    if n == rows:
        return f"tokenizer    {n:,} ids = {rows:,} embedding rows (no padding)"
    if n < rows:
        return (f"tokenizer    {n:,} ids for {rows:,} embedding rows: {rows - n:,} padding rows "
                "(never generated with this tokenizer)")
    return (f"tokenizer    {n:,} ids but only {rows:,} embedding rows: ids >= {rows:,} have no "
            "embedding (the model cannot read them)")
