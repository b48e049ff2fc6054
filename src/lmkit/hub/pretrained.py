"""Load and save Hugging Face checkpoint directories (config.json + safetensors).

The directory's `model_type` picks an architecture module (`hub/arch_<name>.py`), which
translates the config and the tensor names; the tensors are then checked one by one against
the model lmkit builds, so a wrong checkpoint fails with a message naming each bad key
instead of producing garbage.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import torch
from torch import nn

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub.hf_config import read_json_object
from lmkit.hub.safetensors_io import WEIGHT_PATTERNS, map_state_dict, staged_directory, write_weights
from lmkit.models.skeleton import fill_parameters, meta_tensors, parameters_on_meta

ARCH_MODULES = {
    "gpt2": "lmkit.hub.arch_gpt2",
    "llama": "lmkit.hub.arch_llama",
    "qwen2": "lmkit.hub.arch_llama",
    "mistral": "lmkit.hub.arch_llama",
    "mixtral": "lmkit.hub.arch_llama",
    "qwen3": "lmkit.hub.arch_llama",
    "qwen3_moe": "lmkit.hub.arch_llama",
    "olmo2": "lmkit.hub.arch_llama",
    "bert": "lmkit.hub.arch_bert",
    "t5": "lmkit.hub.arch_t5",
    "gemma": "lmkit.hub.arch_gemma",
    "gemma2": "lmkit.hub.arch_gemma",
    "gemma3_text": "lmkit.hub.arch_gemma",
    "gpt_neox": "lmkit.hub.arch_neox",
    "phi3": "lmkit.hub.arch_phi3",
}
CONFIG_FILES = ("config.json", "generation_config.json")


def supported_model_types() -> list[str]:
    return sorted(ARCH_MODULES)


def arch_module(model_type: str | None) -> ModuleType:
    """The architecture module for a Hugging Face `model_type` (CheckpointError if unsupported)."""
    if not model_type or model_type not in ARCH_MODULES:
        raise CheckpointError(
            f"unsupported model_type {model_type!r}; lmkit can load: {', '.join(supported_model_types())}"
        )
    return importlib.import_module(ARCH_MODULES[model_type])


def read_hf_config(directory: str | os.PathLike) -> dict:
    """The parsed config.json of a Hugging Face checkpoint directory."""
    return read_json_object(
        Path(directory) / "config.json", f"{Path(directory)}: no config.json — not a Hugging Face checkpoint directory"
    )


def _aliases(model: nn.Module) -> dict[str, str]:
    """{name: first name of the same tensor} for tied parameters (lm_head sharing the embedding)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = id(t)
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], strict: bool = True,
                           check_only: bool = False) -> list[str]:
    """Copy `sd` into `model`, checking every key and shape first; nothing is copied on error.

    Tied parameters may appear under either name. With strict=False, missing tensors keep
    their initial values (with a warning) and unexpected ones are ignored; shape mismatches
    are always errors. Returns the names missing from `sd`.
    """
    own = model.state_dict(keep_vars=True)
    aliases = _aliases(model)
    sd = dict(sd)
    for alias, target in aliases.items():  # a tied weight stored under its other name
        if alias in sd and target not in sd:
            sd[target] = sd[alias]
        sd.pop(alias, None)
    expected = [k for k in own if k not in aliases]
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(k for k in sd if k not in own)
    mis_shaped = [
        f"{k}: expected {tuple(own[k].shape)}, found {tuple(sd[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} tensor(s) with the wrong shape:\n  " + "\n  ".join(mis_shaped))
    if strict and missing:
        problems.append(f"{len(missing)} tensor(s) missing from the checkpoint:\n  " + "\n  ".join(missing))
    if strict and unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensor(s) the model has no place for:\n  " + "\n  ".join(unexpected)
        )
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "\n".join(problems))
    if check_only:
        return missing
    if missing:
        warnings.warn(f"tensors missing from the checkpoint keep their initial values: {missing}", stacklevel=2)
    with torch.no_grad():
        for k in expected:
            if k in sd:
                dst = own[k]
                src = sd[k].to(device=dst.device, dtype=dst.dtype if dst.is_floating_point() else sd[k].dtype)
                dst.copy_(src)
    return missing


def _checkpoint_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype:
    dtypes = {t.dtype for t in sd.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters only: buffers such as RoPE's inverse frequencies stay fp32."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)


@contextlib.contextmanager
def _config_errors(where: Path) -> Iterator[None]:
    """Inside: reading config.json into a model. Every failure becomes an LmkitError naming the file."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{exc} [in {where}]") from exc
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} [in {where}]") from exc
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, ZeroDivisionError, RuntimeError) as exc:
        raise ConfigError(f"{where}: a setting has the wrong type or value ({type(exc).__name__}: {exc})") from exc


def _check_module_counts(cfg, n_tensors: int, where: Path) -> None:
    """Every layer and expert holds at least one tensor: a config asking for more of them than the
    checkpoint has tensors is corrupt, and building it (even without memory) would take hours."""
    for name in ("n_layers", "n_decoder_layers", "n_experts"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > n_tensors:
            raise ConfigError(f"{where}: {name}={value} cannot fit a checkpoint of {n_tensors} tensors")


LOAD_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or one of the names "fp32", "bf16", "fp16" ("auto"/None: None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower().replace("torch.", "")
    aliases = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    name = aliases.get(name, name)
    if name == "auto":
        return None
    if name not in LOAD_DTYPES:
        raise ConfigError(f"dtype {dtype!r}: use one of auto, {', '.join(LOAD_DTYPES)}")
    return LOAD_DTYPES[name]


def load_pretrained(
    directory: str | os.PathLike, dtype: torch.dtype | str | None = None, strict: bool = True,
    quantized: bool = False,
) -> nn.Module:
    """Build the lmkit model of a Hugging Face checkpoint directory and load its weights.

    dtype (a torch dtype or "fp32" / "bf16" / "fp16") None keeps the checkpoint's floating
    dtype (fp32 when it mixes several).
    The model comes back in eval mode with `model.config` set. A quantized checkpoint written by
    `lmkit quantize` (quantization.json instead of config.json) loads as its quantized model;
    there dtype applies to everything not quantized (embeddings, norms, skipped Linears: the
    activations), while the quantized weights keep their codes and float32 scales.
    A `.gguf` file (llama.cpp) loads through `hub/gguf_import.py`, dequantized (fp32 by default),
    or with `quantized=True` its Q4_0 / Q4_K Linear weights as int4 kernel layers (exact values,
    bf16 compute; other types stay float). `quantized` has no effect on other checkpoints.

    Memory: the safetensors files are memory-mapped and the model is built with its parameters
    on the meta device (`models/skeleton.py`); each tensor is then copied, in the target dtype,
    into its parameter and its file pages are dropped, so the peak is about one copy of the
    weights in the target dtype. The model owns its memory: the files may be deleted or
    rewritten once this returns.
    """
    dtype = resolve_dtype(dtype)
    if str(directory).lower().endswith(".gguf") and Path(directory).is_file():
        from lmkit.hub.gguf_import import load_gguf

        return load_gguf(directory, dtype=dtype, quantized=quantized)
    if not (Path(directory) / "config.json").exists() and (Path(directory) / "quantization.json").exists():
        from lmkit.quant.checkpoint import load_quantized

        model = load_quantized(directory)
        # dtype casts the float parts (embeddings, norms, unquantized Linears, biases), so activations
        # run in it; the quantized layers keep their codes and fp32 constants (QuantLinearBase._apply)
        return (model.to(dtype) if dtype is not None else model).eval()
    hf = read_hf_config(directory)
    where = Path(directory) / "config.json"
    with _config_errors(where):
        arch = arch_module(hf.get("model_type"))
        cfg = arch.config_from_hf(hf)
    mapped = map_state_dict(directory)
    raw = mapped.tensors
    target = dtype or _checkpoint_dtype(raw)
    with _config_errors(where):
        sd = arch.state_from_hf(raw, cfg)  # may settle parts of cfg from the weights (BERT heads)
        _check_module_counts(cfg, len(raw), where)
        model = _build(arch, cfg, where, skeleton=True)  # no memory for the parameters yet
    del raw
    try:
        missing = load_state_dict_strict(model, sd, strict=strict, check_only=True)
    except CheckpointError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    if missing:  # they keep their initial values, so those must exist
        model = _build(arch, cfg, where, skeleton=False)
        cast_parameters(model, target)
        warnings.warn(f"tensors missing from the checkpoint keep their initial values: {missing}", stacklevel=2)
    fill_parameters(model, _canonical(model, sd), dtype=target, after_copy=mapped.release)
    left = meta_tensors(model)
    if left:
        raise CheckpointError(f"{directory}: internal error, these tensors were not loaded: {left[:10]}")
    model.generation_defaults = _generation_defaults(directory)
    return model.eval()


def _build(arch: ModuleType, cfg, where: Path, skeleton: bool) -> nn.Module:
    try:
        if not skeleton:
            return arch.build_model(cfg)
        with parameters_on_meta():
            return arch.build_model(cfg)
    except (RuntimeError, MemoryError, OverflowError) as exc:  # e.g. buffers for an absurd max_seq_len
        raise ConfigError(f"{where}: cannot build this model ({type(exc).__name__}: {exc})") from exc


def _canonical(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` with a tied tensor stored under its other name moved to the model's first name."""
    sd = dict(sd)
    for alias, target in _aliases(model).items():
        if alias in sd and target not in sd:
            sd[target] = sd[alias]
        sd.pop(alias, None)
    return sd


def _generation_defaults(directory: str | os.PathLike):
    """generation_config.json's eos ids and sampling defaults; a broken file only warns (the
    forward pass never reads it, and transformers loads such checkpoints too)."""
    from lmkit.hub.generation_defaults import GenerationDefaults, read_generation_defaults

    try:
        return read_generation_defaults(directory)
    except CheckpointError as exc:
        warnings.warn(f"{exc}; generating with lmkit's defaults", stacklevel=3)
        return GenerationDefaults()


def _generation_config(cfg, defaults=None) -> dict:
    """generation_config.json: the config's special ids, plus the sampling settings and reply
    length the loaded checkpoint's own file had (`defaults`), so a fine-tuned copy keeps them."""
    out = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")}
    out = {k: v for k, v in out.items() if v is not None}
    eos = cfg.extra.get("eos_token_id") if isinstance(cfg.extra, dict) else None
    if isinstance(eos, list):
        out["eos_token_id"] = eos
    if defaults is not None:
        out.update(defaults.sampling)
        out.update({k: v for k, v in (("max_new_tokens", defaults.max_new_tokens),
                                      ("max_length", defaults.max_length)) if v is not None})
    return out


def save_pretrained(model: nn.Module, directory: str | os.PathLike, max_shard_bytes: int | None = None,
                    tokenizer: Any = None) -> None:
    """Write config.json, generation_config.json and safetensors weights, atomically.

    `model.config.model_type` names the Hugging Face architecture to write. Other files in
    an existing `directory` (tokenizer, README) are kept. With `tokenizer` (an lmkit or a
    transformers fast tokenizer), its tokenizer.json, tokenizer_config.json (with the chat
    template) and special_tokens_map.json are written in the same step, and the eos ids
    (end of document + end of turn) and pad id come from it (`hub/end_of_turn.py`), so the
    checkpoint stops where its replies end in every tool that loads it.
    """
    cfg = getattr(model, "config", None)
    if cfg is None or not getattr(cfg, "model_type", ""):
        raise CheckpointError(
            "save_pretrained needs model.config.model_type set to a Hugging Face architecture "
            f"({', '.join(supported_model_types())}) so the checkpoint can be read by other tools"
        )
    arch = arch_module(cfg.model_type)
    tokens = None
    if tokenizer is not None:
        from lmkit.hub.end_of_turn import checkpoint_tokens, with_special_ids

        tokens = checkpoint_tokens(tokenizer)
        cfg = with_special_ids(cfg, tokens)
    hf = arch.config_to_hf(cfg)
    state = model.state_dict()
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(floats) == 1:
        dt = str(floats.pop()).replace("torch.", "")
        hf.setdefault("dtype", dt)
        hf.setdefault("torch_dtype", dt)
    aliases = _aliases(model)
    state = {k: v for k, v in state.items() if k not in aliases}
    sd = arch.state_to_hf(state, cfg)
    replaces = WEIGHT_PATTERNS + CONFIG_FILES + (TOKENIZER_FILES if tokenizer is not None else ())
    with staged_directory(directory, replaces=replaces) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        gen = _generation_config(cfg, getattr(model, "generation_defaults", None))
        if gen:
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        write_weights(sd, tmp, max_shard_bytes)
        if tokens is not None:
            _write_tokenizer(tokenizer, tokens, tmp, Path(directory), cfg.max_seq_len)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _write_tokenizer(tokenizer: Any, tokens, tmp: Path, directory: Path, max_len: int | None) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json into `tmp`. Keys of an
    existing tokenizer_config.json that lmkit does not derive (and its own chat template,
    when the tokenizer matches no built-in one) are kept."""
    from lmkit.hub.end_of_turn import tokenizer_files
    from lmkit.tokenizers.base import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        from lmkit.tokenizers.hf_json import save_hf_json

        save_hf_json(tokenizer, tmp / "tokenizer.json")
    elif hasattr(getattr(tokenizer, "backend_tokenizer", None), "save"):
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    else:
        raise CheckpointError(f"save_pretrained cannot write a tokenizer.json for a {type(tokenizer).__name__}")
    for name, data in tokenizer_files(tokens, max_len).items():
        old = directory / name
        if old.is_file():
            try:
                previous = json.loads(old.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                previous = {}
            if isinstance(previous, dict):  # its added_tokens_decoder may name ids of an older vocabulary
                data = {**{k: v for k, v in previous.items() if k != "added_tokens_decoder"}, **data}
                if _own_template(previous.get("chat_template")):  # the checkpoint's template, not lmkit's guess
                    data["chat_template"] = previous["chat_template"]
        (tmp / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _own_template(template: Any) -> bool:
    """Whether a tokenizer_config.json chat_template is the checkpoint's own (Jinja text or named
    templates) rather than one of lmkit's built-in ones."""
    from lmkit.tokenizers.chat_template import TEMPLATES

    return bool(template) and template not in {t.to_jinja() for t in TEMPLATES.values()}
