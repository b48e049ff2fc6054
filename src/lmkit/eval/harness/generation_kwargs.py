"""A task's `generation_kwargs` in the form every model backend uses (lm-eval's
`normalize_gen_kwargs` + `handle_stop_sequences`): greedy only, `until` as a list with the
end-of-text string added, `max_gen_toks` (aliases max_new_tokens / max_tokens) default 256."""

from __future__ import annotations

from dataclasses import dataclass

from lmkit.eval.harness.task_config import DEFAULT_MAX_GEN_TOKS, TaskConfigError

_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class GenerationRequest:
    context: str
    until: tuple[str, ...]
    max_gen_toks: int


def generation_request(context: str, kwargs: dict, eos_text: str | None) -> GenerationRequest:
    kw = dict(kwargs or {})
    if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0.0:
        raise TaskConfigError("generation_kwargs ask for sampling; the harness decodes greedily (do_sample: false)")
    until = kw.get("until")
    until = [until] if isinstance(until, str) else list(until or [])
    if eos_text and eos_text not in until:
        until.append(eos_text)
    max_gen = next((kw[k] for k in _ALIASES if kw.get(k) is not None), DEFAULT_MAX_GEN_TOKS)
    if not isinstance(max_gen, int) or max_gen < 1:
        raise TaskConfigError(f"generation_kwargs.max_gen_toks must be a positive integer, got {max_gen!r}")
    return GenerationRequest(context, tuple(until), max_gen)


def cut_at_stops(text: str, until: tuple[str, ...]) -> str:
    """The text before the first occurrence of each stop string in turn (lm-eval's postprocessing)."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text
