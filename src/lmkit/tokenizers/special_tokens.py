"""Special tokens written in the text (``[CLS]``, ``<s>``, ``<unk>``), matched verbatim.

Shared by the Unigram, WordPiece, whitespace and character tokenizers, whose special tokens
are plain vocabulary entries (name -> id). A special token in the text is its id only when
``encode`` is told so (``allowed_special``: ``"all"``, ``"none"`` or a collection of names);
otherwise it is ordinary text, so user input cannot smuggle in a control token. The text
between special tokens is encoded part by part. (BPE has its own splitter: its added tokens
carry Hugging Face's lstrip / rstrip / single_word options.)
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

from lmkit.errors import TokenizerError


def special_splitter(
    specials: Mapping[str, int], allowed_special: str | Iterable[str], cache: dict
) -> re.Pattern | None:
    """A regex with one capturing group matching the allowed special tokens, longest first
    (compiled once per allowed set and kept in `cache`); ``None`` when none is allowed."""
    if allowed_special == "none" or not allowed_special:
        return None
    names = frozenset(specials) if allowed_special == "all" else frozenset(allowed_special)
    unknown = names - set(specials)
    if unknown:
        raise TokenizerError(f"not special tokens of this tokenizer: {sorted(unknown)}")
    if names not in cache:
        alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        cache[names] = re.compile(f"({alts})") if alts else None
    return cache[names]


def encode_with_specials(
    text: str,
    allowed_special: str | Iterable[str],
    specials: Mapping[str, int],
    cache: dict,
    encode_plain: Callable[[str], list[int]],
) -> list[int]:
    """Ids of `text`: allowed special tokens become their ids, the (non-empty) text between
    them goes through `encode_plain`."""
    if not isinstance(text, str):
        raise TokenizerError(f"encode expects str, got {type(text).__name__}")
    splitter = special_splitter(specials, allowed_special, cache)
    if splitter is None:
        return encode_plain(text)
    ids: list[int] = []
    for k, part in enumerate(splitter.split(text)):
        if k % 2:
            ids.append(specials[part])
        elif part:
            ids.extend(encode_plain(part))
    return ids


#: The special tokens every tokenizer lmkit trains reserves from the start (as Qwen2 and
#: other peer stacks do): end of document, ChatML's turn markers and a padding token, so
#: that a pretrained model can be chat-tuned without growing its vocabulary.
END_OF_TEXT = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
CHAT_SPECIAL_TOKENS: tuple[str, ...] = (END_OF_TEXT, "<|im_start|>", "<|im_end|>", PAD_TOKEN)
