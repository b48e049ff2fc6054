"""The tokenizer stored in a GGUF file, as an lmkit tokenizer: `load_gguf_tokenizer("m.gguf")`.

GGUF keeps the vocabulary in metadata: `tokenizer.ggml.model` (the algorithm), `.pre` (llama.cpp's
name for the pre-tokenizer split regex), `.tokens` (one string per id), `.token_type` (1 normal,
2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte) and `.merges` ("a b", in rank order).

Read: model `gpt2` (byte-level BPE, GPT-2 / Llama 3 / Qwen2 style) -> `BPETokenizer`. Normal
tokens are byte-level strings as in tokenizer.json; control tokens become special added tokens,
user-defined ones non-special added tokens, unused ones (padding rows) are skipped. Pre-tokenizer
names: `gpt-2` -> lmkit's gpt2 pattern; `llama-bpe` / `llama3` / `dbrx` / `smaug-bpe` -> the cl100k
pattern with `ignore_merges` (a pre-token that is a whole token is taken as it is, as llama.cpp
does for these). Model `llama` (SentencePiece, Llama 1/2, Mistral): its score-driven merging and
byte fallback have no lmkit class yet, so it is refused with a clear error; the model weights
of such files still load (`hub/gguf_import.py`).
"""

from __future__ import annotations

import os

from lmkit.errors import TokenizerError
from lmkit.hub.gguf_import import read_gguf
from lmkit.tokenizers.bpe import AddedToken, BPETokenizer
from lmkit.tokenizers.bytes_level import token_str_to_bytes
from lmkit.tokenizers.pretokenize import PreTokenizer

# llama.cpp pre-tokenizer name -> (lmkit pattern, ignore_merges)
PRE_TOKENIZERS = {
    "gpt-2": ("gpt2", False),
    "llama-bpe": ("cl100k", True),
    "llama3": ("cl100k", True),
    "dbrx": ("cl100k", True),
    "smaug-bpe": ("cl100k", True),
}
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def tokenizer_from_gguf_metadata(meta: dict, source: str = "<gguf>") -> BPETokenizer:
    """An lmkit tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError(f"{source}: the GGUF file has no tokenizer (no tokenizer.ggml.model)")
    if model != "gpt2":
        raise TokenizerError(
            f"{source}: GGUF tokenizer model {model!r} is not supported (lmkit reads 'gpt2', byte-level BPE); "
            "load the tokenizer from the original checkpoint's tokenizer.json / tokenizer.model instead")
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(f"{source}: GGUF pre-tokenizer {pre!r} is not supported "
                             f"(lmkit reads {', '.join(sorted(PRE_TOKENIZERS))})")
    pattern, ignore_merges = PRE_TOKENIZERS[pre]
    strings = list(meta.get("tokenizer.ggml.tokens") or [])
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(strings))
    if len(types) != len(strings):
        raise TokenizerError(f"{source}: {len(strings)} tokens but {len(types)} token types")
    tokens: dict[int, bytes] = {}
    added: list[AddedToken] = []
    ids: dict[str, int] = {}
    for i, (text, kind) in enumerate(zip(strings, types)):
        if kind == NORMAL:
            try:
                tokens[i] = token_str_to_bytes(text)
            except KeyError:
                raise TokenizerError(f"{source}: token {i} {text!r} is not a byte-level BPE token") from None
            ids[text] = i
        elif kind in (CONTROL, UNKNOWN, USER_DEFINED):
            added.append(AddedToken(text, i, special=kind != USER_DEFINED))
        elif kind == BYTE:
            raise TokenizerError(f"{source}: byte-fallback token {text!r} in a byte-level BPE vocabulary")
    merges = []
    for k, m in enumerate(meta.get("tokenizer.ggml.merges") or []):
        a, _, b = m.partition(" ")
        if a not in ids or b not in ids:
            raise TokenizerError(f"{source}: merge #{k} {m!r} uses a token that is not in the vocabulary")
        merges.append((ids[a], ids[b]))
    return BPETokenizer(tokens, merges, pre_tokenizer=PreTokenizer.from_pattern(pattern), added_tokens=added,
                        ignore_merges=ignore_merges)


def load_gguf_tokenizer(path: str | os.PathLike) -> BPETokenizer:
    """The tokenizer of the GGUF file at `path`."""
    f = read_gguf(path)
    return tokenizer_from_gguf_metadata(f.metadata, str(f.path))
