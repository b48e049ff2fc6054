"""`lmkit info`: what a checkpoint is and what it needs, without reading its weights.

Only config.json, generation_config.json, the tokenizer files and the safetensors headers
are read. The model is built with every tensor on PyTorch's meta device (shapes only, no
memory, no initialisation), so describing a 70B checkpoint is as quick as describing a tiny
one, and a folder whose weights are missing or truncated is described all the same.

Memory estimates (before activations, batch 1):
  inference       weights in the load dtype + the KV cache at the full context:
                  2 (K, V) x layers x kv_heads x head_dim x context x bytes
                  (an encoder-decoder also caches the cross-attention K, V of a full-length input)
  full fine-tune  weights + gradients in the load dtype + AdamW's m and v in fp32
                  (2 x bytes + 8 per parameter: 16 B in fp32, 12 B in bf16; mixed precision
                  with an fp32 master copy would add 4 more, see train/memory.py)
  LoRA            frozen weights in the load dtype + the adapters' weights, gradients and
                  AdamW states in fp32 (16 B per adapter parameter), for LoraConfig's defaults
                  (r=8 on q_proj and v_proj)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmkit.models.skeleton import parameters_on_meta
from lmkit.models.summary import count_by_component, human_bytes, human_count, weight_memory

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_HF_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "F32": "fp32", "BF16": "bf16", "F16": "fp16",
              "float64": "fp64", "F64": "fp64"}
LORA_DEFAULTS = (8, ("q_proj", "v_proj"))  # peft/lora.py LoraConfig: r, target_modules


def describe_checkpoint(directory: str | os.PathLike, dtype: str = "auto") -> str:
    """The text `lmkit info DIRECTORY` prints; memory figures are for loading in `dtype`
    ("auto": the checkpoint's own)."""
    from lmkit.hub.pretrained import arch_module, read_hf_config

    directory = Path(directory)
    hf = read_hf_config(directory)
    arch = arch_module(hf.get("model_type"))
    cfg = arch.config_from_hf(hf)
    with torch.device("meta"), parameters_on_meta():
        model = arch.build_model(cfg)
    counts = count_by_component(model)
    total = sum(counts.values())
    mem = weight_memory(model)
    stored = checkpoint_dtype(directory, hf)
    load = stored if dtype == "auto" else dtype
    size = DTYPE_BYTES.get(load, 4)
    on_disk = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    tokenizer = _tokenizer(directory)
    lines = [
        f"checkpoint   {directory}",
        f"family       {cfg.model_type}  ({type(model).__name__}, arch={cfg.arch})",
        f"shape        d_model={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads} "
        f"kv_heads={cfg.n_kv_heads} head_dim={cfg.head_dim} d_ff={cfg.d_ff} vocab={cfg.vocab_size}",
        f"context      {cfg.max_seq_len:,} tokens" + (f"  sliding_window={cfg.sliding_window}" if cfg.sliding_window else ""),
        f"positions    {cfg.position}" + (f"  RoPE type {rope_type(hf, cfg)}, theta={cfg.rope_theta:g}"
                                          if cfg.position == "rope" else ""),
        f"norm / ffn   {cfg.norm} ({cfg.norm_position}-norm) / {cfg.activation}{' gated' if cfg.gated_ffn else ''}"
        + (f"  MoE {cfg.n_experts} experts, top-{cfg.n_experts_per_tok}" if cfg.n_experts else ""),
        f"dtype        {stored} in the checkpoint" + (f"; figures below for {load}" if load != stored else ""),
        f"parameters   {human_count(total)} ({total:,})",
    ]
    for name, n in counts.items():
        lines.append(f"  {name:<14}{human_count(n):>10}  {100 * n / max(total, 1):5.1f}%")
    lines.append("weight memory")
    for prec in ("fp32", "bf16", "int8", "nf4"):
        lines.append(f"  {prec:<14}{human_bytes(mem.bytes_at(prec)):>10}")
    if on_disk:
        lines.append(f"on disk      {human_bytes(on_disk)} of safetensors")
    lines.append(f"template     {chat_template_source(directory, tokenizer)}")
    lines.append(f"eos ids      {describe_eos(directory, hf, tokenizer)}")
    lines += memory_lines(model, cfg, total, size, load)
    if tokenizer is not None:
        lines.append(describe_vocabulary(tokenizer, cfg.vocab_size))
    return "\n".join(lines)


def checkpoint_dtype(directory: Path, hf: dict) -> str:
    """The floating dtype the weights are stored in: config.json's `torch_dtype` / `dtype`,
    else the first safetensors header (headers only; "unknown" when unreadable)."""
    for key in ("torch_dtype", "dtype"):
        name = hf.get(key)
        if isinstance(name, str) and name.replace("torch.", "") in _HF_DTYPES:
            return _HF_DTYPES[name.replace("torch.", "")]
    from lmkit.errors import LmkitError
    from lmkit.hub.safetensors_io import read_header

    for path in sorted(directory.glob("*.safetensors")):
        try:
            header = read_header(path)
        except (LmkitError, OSError):
            continue
        kinds = {v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
        floats = sorted(_HF_DTYPES[k] for k in kinds if k in _HF_DTYPES)
        if floats:
            return floats[0] if len(floats) == 1 else "fp32"
    return "unknown"


def rope_type(hf: dict, cfg: Any) -> str:
    """config.json's rope_scaling type (rope_type or type), else lmkit's own name, else default."""
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
    name = None
    if isinstance(scaling, dict):
        name = scaling.get("rope_type") or scaling.get("type")
    name = name or getattr(cfg, "rope_scaling", None) or "default"
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    return f"{name}" + (f" (factor {factor:g})" if isinstance(factor, (int, float)) and name != "default" else "")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def chat_template_source(directory: Path, tokenizer: Any) -> str:
    """Where the checkpoint's chat template comes from: Jinja in tokenizer_config.json or
    chat_template.jinja, else the built-in template whose tokens the tokenizer has, else none."""
    found = []
    template = _read_json(directory / "tokenizer_config.json").get("chat_template")
    if isinstance(template, str) and template.strip():
        found.append("Jinja in tokenizer_config.json")
    elif isinstance(template, list):
        names = [t.get("name") for t in template if isinstance(t, dict) and t.get("template")]
        if names:
            found.append(f"Jinja in tokenizer_config.json (named: {', '.join(str(n) for n in names)})")
    if (directory / "chat_template.jinja").is_file():
        found.append("Jinja in chat_template.jinja")
    if found:
        return "; ".join(found)
    if tokenizer is not None and not isinstance(tokenizer, _Unreadable):
        from lmkit.hub.end_of_turn import chat_template_of

        builtin = chat_template_of(tokenizer)
        if builtin is not None:
            return f"none in the checkpoint; built-in {builtin.name} (the tokenizer has its tokens)"
    return "none (no Jinja template, and no vocabulary with a built-in template's tokens)"


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def describe_eos(directory: Path, hf: dict, tokenizer: Any) -> str:
    """The end-of-sequence ids of config.json and generation_config.json (generation stops at
    any of them), with their token text when a tokenizer is there."""
    config_ids = _ids(hf.get("eos_token_id"))
    gen_path = directory / "generation_config.json"
    gen_ids = _ids(_read_json(gen_path).get("eos_token_id")) if gen_path.is_file() else []
    union = list(dict.fromkeys(config_ids + gen_ids))
    if not union:
        return "none (config.json and generation_config.json name no eos_token_id)"

    def shown(i: int) -> str:
        text = None
        if tokenizer is not None:
            try:
                text = tokenizer.id_to_token(i)
            except Exception:  # an id outside the tokenizer's vocabulary
                text = None
        return f"{i} {text!r}" if text is not None else str(i)

    where = [f"config.json {config_ids}" if config_ids else "config.json none"]
    if gen_path.is_file():
        where.append(f"generation_config.json {gen_ids}" if gen_ids else "generation_config.json none")
    return ", ".join(shown(i) for i in union) + f"  ({'; '.join(where)})"


def kv_cache_bytes(cfg: Any, size: int, batch: int = 1) -> int:
    """K and V of every attention layer for `batch` sequences of the full context."""
    if cfg.arch == "encoder" or cfg.arch == "lstm":
        return 0
    per_layer = 2 * (cfg.n_kv_heads or cfg.n_heads) * cfg.head_dim * cfg.max_seq_len * size * batch
    if cfg.arch == "encoder_decoder":
        return 2 * per_layer * (cfg.n_decoder_layers or cfg.n_layers)  # self + cross attention
    return per_layer * cfg.n_layers


def lora_parameters(model: nn.Module, r: int, targets: tuple[str, ...]) -> int:
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets)


def memory_lines(model: nn.Module, cfg: Any, total: int, size: int, load: str) -> list[str]:
    weights = total * size
    kv = kv_cache_bytes(cfg, size)
    r, targets = LORA_DEFAULTS
    lora = lora_parameters(model, r, targets)
    full = total * (2 * size + 8)
    lines = [f"memory ({load}, before activations)",
             f"  {'inference':<14}{human_bytes(weights + kv):>10}  = weights {human_bytes(weights)}"
             + (f" + KV cache {human_bytes(kv)} ({cfg.max_seq_len:,} tokens, batch 1)" if kv else ""),
             f"  {'full finetune':<14}{human_bytes(full):>10}  = weights + grads {2 * size} B/param "
             f"+ AdamW m, v fp32 8 B/param"]
    if lora:
        lines.append(f"  {'LoRA':<14}{human_bytes(weights + 16 * lora):>10}  = frozen weights + "
                     f"{human_count(lora)} adapter params x 16 B (r={r} on {', '.join(targets)})")
    return lines


def _tokenizer(directory: Path) -> Any:
    """The checkpoint's tokenizer, None when it has no tokenizer file, or the error text."""
    from lmkit.errors import LmkitError
    from lmkit.tokenizers.loading import load_tokenizer

    if not any((directory / n).is_file() for n in ("tokenizer.json", "vocab.txt")) \
            and not any(directory.glob("*.model")):
        return None
    try:
        return load_tokenizer(directory)
    except (LmkitError, OSError, ValueError) as exc:
        return _Unreadable(str(exc))


class _Unreadable:
    """Stands for a tokenizer that failed to load, so its line can say why."""

    def __init__(self, why: str) -> None:
        self.why = why

    def id_to_token(self, idx: int) -> None:
        return None


def describe_vocabulary(tokenizer: Any, rows: int) -> str:
    """The tokenizer's size against the model's `rows` embedding rows, and the padding between.

    Checkpoints often pad the embedding beyond the tokenizer (Qwen2: 151,936 rows, 151,665
    tokens); lmkit never generates the padding ids when the model runs with its tokenizer.
    """
    if isinstance(tokenizer, _Unreadable):
        return f"tokenizer    unreadable: {tokenizer.why}"
    n = len(tokenizer)
    if n == rows:
        return f"tokenizer    {n:,} ids = {rows:,} embedding rows (no padding)"
    if n < rows:
        return (f"tokenizer    {n:,} ids for {rows:,} embedding rows: {rows - n:,} padding rows "
                "(never generated with this tokenizer)")
    return (f"tokenizer    {n:,} ids but only {rows:,} embedding rows: ids >= {rows:,} have no "
            "embedding (the model cannot read them)")
