"""lmkit.infer — decoding: greedy, sampling (temperature, top-k, top-p, min-p), penalties
(repetition, presence, frequency, no-repeat n-gram, bad words), beam search, stop strings,
streaming, batching with left padding, logprobs, and speculative decoding.

Every strategy drives one decode core: `runner.py` (the model step: eager, fused or
compiled), `select.py` (processors, then the chosen tokens and their logprobs), `stop.py`
(`StopTracker`: EOS ids, stop strings, the token budget) and `output.py` (the result types).
With a tokenizer, output rows it cannot render (vocabulary padding) are never chosen
(`vocab_padding.py`). Structured output: `generate(..., constraint=...)` chooses each row's
tokens among those its `TokenConstraint` allows (`constraint.py`); JSON schemas, regexes and
grammars compile to such constraints in `structured_output.py` (llguidance, optional).

    from lmkit.infer import generate, generate_text, stream_text
    out = generate(model, [[1, 5, 7], [1, 9]], max_new_tokens=20)          # token ids in and out
    text = generate_text(model, tok, "Once upon a time", do_sample=True, top_p=0.9, seed=0)
    for delta in stream_text(model, tok, "Once upon a time"):
        print(delta, end="", flush=True)
"""

from lmkit.infer.beam_search import beam_search
from lmkit.infer.config import GenerationConfig
from lmkit.infer.generate import generate, generate_text, iter_steps, stream_text
from lmkit.infer.inputs import prepare_prompts, resolve_config
from lmkit.infer.output import GenerationOutput, Step
from lmkit.infer.runner import ModelRunner
from lmkit.infer.sampling import LogitsProcessor, LogitsProcessorList, build_logits_processors
from lmkit.infer.select import Selection, select_tokens
from lmkit.infer.speculative import SpeculativeOutput, speculative_generate
from lmkit.infer.stop import StopStringMatcher, StopTracker
from lmkit.infer.streaming import IncrementalDetokenizer, TextStream
from lmkit.infer.vocab_padding import mask_unrenderable, renderable_size

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "Step",
    "generate",
    "generate_text",
    "stream_text",
    "iter_steps",
    "beam_search",
    "speculative_generate",
    "SpeculativeOutput",
    "prepare_prompts",
    "resolve_config",
    "LogitsProcessor",
    "LogitsProcessorList",
    "build_logits_processors",
    "StopStringMatcher",
    "StopTracker",
    "select_tokens",
    "mask_unrenderable",
    "renderable_size",
    "Selection",
    "ModelRunner",
    "IncrementalDetokenizer",
    "TextStream",
]
