"""lmkit.infer — decoding: greedy, sampling (temperature, top-k, top-p, min-p), penalties
(repetition, presence, frequency, no-repeat n-gram, bad words), beam search, stop strings,
streaming, batching with left padding, logprobs, and speculative decoding.

    from lmkit.infer import generate, GenerationConfig
    out = generate(model, "Once upon a time", tokenizer=tok, max_new_tokens=40, do_sample=True, top_p=0.9, seed=0)
    print(out.text)
"""

from lmkit.infer.beam_search import beam_search
from lmkit.infer.config import GenerationConfig
from lmkit.infer.generate import (
    GenerationOutput,
    StreamDelta,
    generate,
    generate_text,
    prepare_prompts,
    resolve_config,
    stream_generate,
)
from lmkit.infer.sampling import LogitsProcessor, LogitsProcessorList, build_logits_processors
from lmkit.infer.speculative import SpeculativeOutput, speculative_generate
from lmkit.infer.stop import StopStringMatcher
from lmkit.infer.streaming import IncrementalDetokenizer, TextStream, stream_text

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "StreamDelta",
    "generate",
    "generate_text",
    "stream_generate",
    "stream_text",
    "beam_search",
    "speculative_generate",
    "SpeculativeOutput",
    "prepare_prompts",
    "resolve_config",
    "LogitsProcessor",
    "LogitsProcessorList",
    "build_logits_processors",
    "StopStringMatcher",
    "IncrementalDetokenizer",
    "TextStream",
]
