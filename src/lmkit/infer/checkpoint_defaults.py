"""The decoding settings of one request: what the caller asked for, else what the checkpoint's
generation_config.json says (`hub.generation_defaults`), else the command's own default.

`load_pretrained` keeps the file's settings on the model (`model.generation_defaults`); `lmkit
generate`, `lmkit chat` and `lmkit serve` pass their flags / request fields here, with None for
each one the user did not give.
"""

from __future__ import annotations

from typing import Any


def generation_defaults_of(model: Any):
    """The model's `GenerationDefaults` (None for a model that was not loaded from a checkpoint)."""
    return getattr(model, "generation_defaults", None)


def sampling_settings(model: Any, *, temperature: float | None = None, top_p: float | None = None,
                      top_k: int | None = None, repetition_penalty: float | None = None,
                      fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    """GenerationConfig keywords (do_sample, temperature, top_p, top_k, repetition_penalty).

    temperature 0 (given or the default) is greedy decoding. Without an explicit temperature
    the checkpoint decides greedy vs sampling when its generation_config.json has sampling keys
    (do_sample false: greedy, as in transformers), else `fallback` (e.g. {"temperature": 0.7,
    "top_p": 0.95}) does.
    """
    defaults = generation_defaults_of(model)
    ckpt = dict(defaults.sampling) if defaults is not None else {}
    base = dict(fallback or {})
    if ckpt:
        base = {"temperature": ckpt.get("temperature", 1.0) if ckpt["do_sample"] else 0.0,
                **{k: ckpt[k] for k in ("top_p", "top_k", "repetition_penalty") if k in ckpt}}
    explicit = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty}
    chosen = {**base, **{k: v for k, v in explicit.items() if v is not None}}
    temp = float(chosen.get("temperature", 1.0))
    return {"do_sample": temp > 0, "temperature": temp if temp > 0 else 1.0,
            "top_p": float(chosen.get("top_p", 1.0)), "top_k": int(chosen["top_k"]) if chosen.get("top_k") else None,
            "repetition_penalty": float(chosen.get("repetition_penalty", 1.0))}


def max_new_tokens_default(model: Any, prompt_len: int, fallback: int) -> int:
    """The reply length when the caller gave none: the checkpoint's max_new_tokens, else what its
    max_length (prompt + reply) leaves after the prompt, else `fallback`."""
    defaults = generation_defaults_of(model)
    if defaults is not None and defaults.max_new_tokens:
        return defaults.max_new_tokens
    if defaults is not None and defaults.max_length:
        return max(1, defaults.max_length - prompt_len)
    return fallback
