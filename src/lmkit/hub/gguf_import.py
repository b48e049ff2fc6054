"""Load a llama.cpp GGUF file as an lmkit model: `load_gguf("model.gguf")` (also reached through
`load_pretrained("model.gguf")`).

Reads the architectures `llama` (Llama 1-3, Mistral and what `lmkit export gguf` writes) and
`qwen2`, tensor types F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K and Q6_K (`hub/gguf_quants.py`).
The config comes from the `{arch}.*` metadata, the tensors are renamed back from llama.cpp's
names (`hub/gguf.py` has the table), and for `llama` the rows of Wq / Wk (and their biases)
are un-permuted: llama.cpp's converter reorders them for its adjacent-pair RoPE, lmkit rotates
halves like Hugging Face (`unpermute`). `qwen2` files use the halves layout already.

Quantized tensors load *dequantized* into a float model (fp32 unless `dtype` says otherwise).
That is the default because it is exact end to end (logits equal transformers' GGUF loader).
`quantized=True` keeps the 4-bit ones quantized instead: Q4_0 and Q4_K Linear weights become
`Int4OffsetLinear` layers on PyTorch's fused int4 kernel, holding exactly the file's values
((q - 8) * scale + offset per group of 32; `int4_linear_from_gguf`), ~4.5 bits a weight and
several times faster at decode; the matmul runs with bf16 activations and bf16 scales, so
logits move by bf16 rounding. The other types stay dequantized floats: Q8_0 keeps one scale
per 32 weights, which no fused kernel takes (the int8 kernel has one scale per row: not exact;
an 8-bit group layer would be exact but dequantizes on every call, slower than a float
matmul), and Q5_0 / Q6_K have no 5- / 6-bit kernel. `linear_from_gguf` is the hook for layers that can take the blocks as they are:
it is called for every Linear whose weight is stored quantized, with the module's name, the
float Linear and the `GGUFTensor` (type + raw blocks, rows already in lmkit's order;
`integer_groups()` gives them as int8 codes with a scale and offset per group of 32, or 16 for
Q6_K: Q4_0 / Q4_K are exactly `torch._weight_int4pack_mm`'s (q - 8) * scale + zero with group
32), and may return a module to use instead.
The tokenizer is read by `hub/gguf_tokenizer.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lmkit.errors import CheckpointError, ConfigError, require
from lmkit.hub.gguf_names import lmkit_name, unpermute
from lmkit.hub.gguf_quants import GGMLType, dequantize, ggml_type, integer_groups, nbytes

ARCHITECTURES = ("llama", "qwen2")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: its type, torch-order shape and raw bytes ([rows, row bytes])."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    raw: np.ndarray

    @property
    def quantized(self) -> bool:
        return self.type.block_size > 1

    def integer_groups(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(codes int8 [rows, n], scales, offsets [rows, n / group], group) with value = code * scale
        + offset, for integer layers (`hub.gguf_quants.integer_groups`; Q8_0 / Q4_0 / Q5_0 / Q4_K / Q6_K)."""
        codes, scales, offsets, group = integer_groups(self.raw, self.type)
        return torch.from_numpy(codes), torch.from_numpy(scales), torch.from_numpy(offsets), group

    def dequantize(self) -> torch.Tensor:
        """The values as a float32 tensor of `shape`."""
        return torch.from_numpy(np.array(dequantize(self.raw, self.type).reshape(self.shape)))


@dataclass(frozen=True)
class GGUFFile:
    """The metadata (key -> Python value) and tensors (name -> GGUFTensor) of a GGUF file."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse a GGUF file (the container with the `gguf` package's reader; the tensor data stays
    memory-mapped until dequantized)."""
    gguf = require("gguf", "gguf")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {str(path)!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
        meta = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
        tensors = {}
        for t in reader.tensors:
            kind = ggml_type(int(t.tensor_type))
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            raw = np.asarray(t.data).view(np.uint8).reshape(-1, nbytes(kind, shape[-1]))
            tensors[t.name] = GGUFTensor(t.name, kind, shape, raw)
    except (ValueError, OSError, IndexError, KeyError, TypeError, OverflowError, ZeroDivisionError) as exc:
        # a truncated or corrupt file (UnicodeDecodeError is a ValueError)
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
    return GGUFFile(path, meta, tensors)


def hf_config_from_gguf(f: GGUFFile) -> dict:
    """The GGUF metadata as the Hugging Face config.json that `arch_llama` reads."""
    meta = f.metadata
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{f.path}: GGUF architecture {arch!r} is not supported (lmkit reads {ARCHITECTURES})")

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise CheckpointError(f"{f.path}: GGUF metadata {arch}.{name} is missing")
        return value

    d = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", d // heads))
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise CheckpointError(f"{f.path}: partial rotary ({rope_dim} of {head_dim} head dims) is not supported")
    if "rope_freqs.weight" in f.tensors:
        raise CheckpointError(f"{f.path}: per-frequency RoPE factors (rope_freqs, Llama 3.1 scaling) are not supported")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    embed = f.tensors.get("token_embd.weight")
    if embed is None:
        raise CheckpointError(f"{f.path}: no token_embd.weight tensor")
    qkv_bias = "blk.0.attn_q.bias" in f.tensors
    o_bias = "blk.0.attn_output.bias" in f.tensors
    model_type = "qwen2" if arch == "qwen2" or (qkv_bias and not o_bias) else "llama"
    hf: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": int(vocab or embed.shape[0]),
        "hidden_size": d,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(meta.get(f"{arch}.context_length", 2048)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "hidden_act": "silu",
    }
    if model_type == "llama":
        hf["attention_bias"] = qkv_bias
        hf["mlp_bias"] = "blk.0.ffn_up.bias" in f.tensors
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise CheckpointError(f"{f.path}: RoPE scaling {scaling!r} is not supported (lmkit reads linear)")
        hf["rope_scaling"] = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
    bos, eos, eot = (meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "eot"))
    pad = meta.get("tokenizer.ggml.padding_token_id")
    ends = [int(i) for i in (eos, eot) if i is not None]
    hf["bos_token_id"] = None if bos is None else int(bos)
    hf["pad_token_id"] = None if pad is None else int(pad)
    hf["eos_token_id"] = (ends[0] if len(set(ends)) == 1 else sorted(set(ends), key=ends.index)) if ends else None
    return hf


def lmkit_tensors(f: GGUFFile, cfg) -> dict[str, GGUFTensor]:
    """The file's tensors under lmkit's names and in lmkit's row order: for `llama` files the
    rows of Wq / Wk (whole rows of blocks, so the raw bytes are reordered losslessly) and the
    values of their biases are un-permuted."""
    permuted = f.metadata.get("general.architecture") == "llama"
    out: dict[str, GGUFTensor] = {}
    unknown = []
    for name, t in f.tensors.items():
        try:
            ours = lmkit_name(name)
        except KeyError:
            unknown.append(name)
            continue
        heads = {".attn_q.": cfg.n_heads, ".attn_k.": cfg.n_kv_heads}
        n_head = next((n for part, n in heads.items() if part in name), None) if permuted else None
        if n_head is not None and len(t.shape) == 2:
            t = GGUFTensor(ours, t.type, t.shape, unpermute(torch.from_numpy(np.array(t.raw)), n_head).numpy())
        elif n_head is not None:
            values = unpermute(t.dequantize(), n_head).numpy().astype(np.float32)
            t = GGUFTensor(ours, ggml_type("F32"), t.shape, values.view(np.uint8).reshape(1, -1))
        out[ours] = GGUFTensor(ours, t.type, t.shape, t.raw)
    if unknown:
        raise CheckpointError(f"{f.path}: GGUF tensors lmkit has no place for: {', '.join(sorted(unknown))}")
    return out


def state_from_gguf(f: GGUFFile, cfg) -> dict[str, torch.Tensor]:
    """Dequantized float32 tensors under lmkit's names (lm_head too when it is tied)."""
    sd = {k: t.dequantize() for k, t in lmkit_tensors(f, cfg).items()}
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    return sd


LinearHook = Callable[[str, nn.Linear, GGUFTensor], "nn.Module | None"]
INT4_KERNEL_TYPES = ("Q4_0", "Q4_K")  # GGUF types `int4_linear_from_gguf` keeps quantized


def int4_linear_from_gguf(name: str, linear: nn.Linear, t: GGUFTensor) -> nn.Module | None:
    """An `Int4OffsetLinear` holding a Q4_0 / Q4_K weight exactly (None for other types: they stay float)."""
    from lmkit.quant.linear import Int4OffsetLinear

    if t.type.name not in INT4_KERNEL_TYPES:
        return None
    codes, scales, offsets, group = t.integer_groups()
    return Int4OffsetLinear.from_codes((codes + 8).to(torch.uint8), scales, offsets, group, linear.bias)


def load_gguf(path: str | os.PathLike, dtype: torch.dtype | None = None,
              linear_from_gguf: LinearHook | None = None, quantized: bool = False) -> nn.Module:
    """Build the lmkit DecoderLM of a GGUF file and load its (dequantized) weights, in eval mode.

    dtype None gives float32. `quantized` keeps Q4_0 / Q4_K Linear weights as int4 kernel layers
    (`int4_linear_from_gguf`); `linear_from_gguf` (see the module docstring) may swap the Linear
    layers whose weights are quantized in the file for modules built from the blocks. The
    tensor shapes are checked against a model built on the meta device first, so a corrupt
    file is refused with a message instead of allocating whatever its metadata claims."""
    from lmkit.hub import arch_llama

    f = read_gguf(path)
    try:
        cfg = arch_llama.config_from_hf(hf_config_from_gguf(f))
    except ConfigError as exc:
        raise ConfigError(f"{f.path}: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, ZeroDivisionError) as exc:
        raise ConfigError(f"{f.path}: a metadata value has the wrong type or value ({type(exc).__name__}: {exc})") from exc
    _check_shapes(f, cfg, arch_llama.build_model)
    try:
        model = arch_llama.build_model(cfg).to(dtype or torch.float32)
    except (RuntimeError, MemoryError, OverflowError) as exc:
        raise ConfigError(f"{f.path}: cannot build this model ({type(exc).__name__}: {exc})") from exc
    own = model.state_dict()
    with torch.no_grad():
        for k, v in state_from_gguf(f, cfg).items():
            own[k].copy_(v)
    if linear_from_gguf is None and quantized:
        linear_from_gguf = int4_linear_from_gguf
    if linear_from_gguf is not None:
        _swap_linears(model, f, linear_from_gguf)
    return model.eval()


def _check_shapes(f: GGUFFile, cfg, build: Callable) -> None:
    """Every tensor the model needs is in the file with its shape (a meta-device model: no memory)."""
    if cfg.n_layers > len(f.tensors):
        raise ConfigError(f"{f.path}: block_count={cfg.n_layers} cannot fit a file of {len(f.tensors)} tensors")
    try:
        with torch.device("meta"):
            own = {k: tuple(v.shape) for k, v in build(cfg).state_dict().items()}
    except (RuntimeError, MemoryError, OverflowError, ValueError) as exc:
        raise ConfigError(f"{f.path}: cannot build this model ({type(exc).__name__}: {exc})") from exc
    found = {}
    for name, t in f.tensors.items():
        try:
            found[lmkit_name(name)] = t.shape
        except KeyError:
            raise CheckpointError(f"{f.path}: GGUF tensor {name!r} has no place in the model") from None
    if cfg.tie_embeddings and "embed_tokens.weight" in found:
        found["lm_head.weight"] = found["embed_tokens.weight"]
    missing = sorted(set(own) - set(found))
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += [f"{k}: file {found[k]}, model {own[k]}" for k in found if k in own and found[k] != own[k]]
    problems += [f"unexpected {k}" for k in found if k not in own]
    if problems:
        raise CheckpointError(f"{f.path}: the tensors do not fit the model the metadata describes: "
                              + "; ".join(problems))


def _swap_linears(model: nn.Module, f: GGUFFile, hook: LinearHook) -> None:
    tensors = lmkit_tensors(f, model.config)
    for name, module in list(model.named_modules()):
        t = tensors.get(f"{name}.weight")
        if isinstance(module, nn.Linear) and t is not None and t.quantized:
            replacement = hook(name, module, t)
            if replacement is not None:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, replacement)
