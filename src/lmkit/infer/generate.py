"""`generate`: autoregressive decoding with a preallocated KV cache, batched with left padding.

The public entry points: `generate` (token ids in and out), `iter_steps` (the same loop as an
iterator, for streaming), and the text-level front ends `generate_text` and `stream_text`
(tokenize, generate, detokenize without splitting characters). The pieces they drive:

    inputs.py    prompts, resolved config, left padding        output.py   GenerationOutput, Step
    decode.py    the greedy/sampling loop                      runner.py   the model step
    select.py    processors -> the chosen tokens, logprobs     stop.py     EOS, stop strings, budget
    beam_search.py, speculative.py: the other decoding strategies
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from lmkit.errors import ConfigError
from lmkit.infer.beam_search import beam_search
from lmkit.infer.config import GenerationConfig
from lmkit.infer.constraint import ConstraintArg
from lmkit.infer.decode import Decoder
from lmkit.infer.inputs import check_fits, encode_prompt, prepare_prompts, resolve_config
from lmkit.infer.output import GenerationOutput, Step
from lmkit.infer.select import make_generator
from lmkit.infer.stop import token_bytes_fn
from lmkit.infer.streaming import decode_output, stream_tokens_to_text
from lmkit.infer.vocab_padding import renderable_size

# names that lived here before the split, still importable from this module
__all__ = ["generate", "iter_steps", "generate_text", "stream_text", "GenerationOutput", "Step",
           "prepare_prompts", "resolve_config", "check_fits", "encode_prompt", "make_generator",
           "token_bytes_fn", "decode_output"]


# ---- public API ------------------------------------------------------------------------
def generate(
    model,
    input_ids: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor,
    config: GenerationConfig | None = None,
    *,
    tokenizer=None,
    attention_mask: torch.Tensor | None = None,
    constraint: ConstraintArg = None,
    **overrides: Any,
) -> GenerationOutput:
    """Generate continuations of each prompt; keyword overrides change single config fields.

    input_ids: prompts as lists of token ids (any lengths) or a [B, T] tensor (with an
    optional 1/0 attention_mask marking padding). tokenizer: needed for stop strings; when
    given, `GenerationOutput.texts` holds the decoded continuations, and ids it cannot render
    (embedding rows beyond its vocabulary) are never generated. constraint: structured output
    (infer/structured_output.py): a compiled grammar for every row, or a list with one
    `TokenConstraint` / grammar / None per row.
    """
    cfg = resolve_config(model, config, **overrides)
    prompts = prepare_prompts(input_ids, attention_mask)
    check_fits(model, prompts, cfg)
    if cfg.num_beams > 1:
        if constraint is not None:
            raise ConfigError("constrained decoding runs greedy or sampling, not beam search (num_beams must be 1)")
        out = beam_search(model, prompts, cfg, renderable_size(tokenizer))
        if tokenizer is not None:
            out.texts = [decode_output(tokenizer, s, None, cfg.eos_token_ids) for s in out.sequences]
        return out
    dec = Decoder(model, prompts, cfg, tokenizer, constraint)
    for _ in dec.steps():
        pass
    out = dec.output()
    if tokenizer is not None:
        out.texts = [decode_output(tokenizer, s, cfg.stop, cfg.eos_token_ids) for s in out.sequences]
    return out


def iter_steps(model, input_ids, config: GenerationConfig | None = None, *, tokenizer=None,
               attention_mask: torch.Tensor | None = None, constraint: ConstraintArg = None,
               **overrides: Any) -> Iterator[Step]:
    """The decoding loop as an iterator of `Step`s (for streaming); greedy/sampling only."""
    cfg = resolve_config(model, config, **overrides)
    if cfg.num_beams > 1:
        raise ConfigError("streaming is not available with beam search (the best beam is only known at the end)")
    prompts = prepare_prompts(input_ids, attention_mask)
    check_fits(model, prompts, cfg)
    return Decoder(model, prompts, cfg, tokenizer, constraint).steps()


def generate_text(model, tokenizer, prompt: str | list[str], config: GenerationConfig | None = None,
                  **overrides: Any) -> str | list[str]:
    """Text in, text out: the continuation of `prompt` (or of each prompt in a list)."""
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    out = generate(model, [encode_prompt(tokenizer, p) for p in prompts], config, tokenizer=tokenizer, **overrides)
    return out.texts[0] if single else out.texts


def stream_text(model, tokenizer, prompt: str, config: GenerationConfig | None = None, *,
                constraint: ConstraintArg = None, **overrides: Any) -> Iterator[str]:
    """Yield text deltas of the continuation of `prompt` as they are generated.

    Deltas never split a UTF-8 character and never show text that may turn out to be part
    of a stop string; joined, they equal `generate_text(...)` with the same arguments.
    """
    cfg = resolve_config(model, config, **overrides)

    def tokens() -> Iterator[int]:
        for step in iter_steps(model, [encode_prompt(tokenizer, prompt)], cfg, tokenizer=tokenizer,
                               constraint=constraint):
            if step.done_before[0]:
                return
            yield step.tokens[0]

    yield from stream_tokens_to_text(tokenizer, tokens(), cfg.stop, skip_ids=cfg.eos_token_ids)
