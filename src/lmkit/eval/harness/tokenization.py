"""Text -> token ids for scoring, as lm-eval's HFLM tokenizes.

* `encode` is what ``tokenizer.encode(text)`` of transformers gives: the checkpoint's own
  leading special tokens (tokenizer.json's TemplateProcessing post-processor, e.g. Llama's
  ``<s>``) are prepended unless the text already starts with the BOS text.
* `encode_pair(context, continuation)`: trailing whitespace of the context moves to the front
  of the continuation; the pair is encoded whole, and the continuation is what follows the
  first len(encode(context)) tokens (so a merge across the boundary is scored as the model
  sees it).
* The prefix token (for an empty context and the first rolling window) is BOS, else EOS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def _special_token_id(tokenizer, value) -> int | None:
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        return None
    return tokenizer.token_to_id(value)


def _leading_specials(directory: Path, tokenizer) -> list[int]:
    """Ids a transformers fast tokenizer puts before every text (post-processor `single` template)."""
    try:
        data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    post = data.get("post_processor") or {}
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    out: list[int] = []
    for proc in procs:
        if proc.get("type") != "TemplateProcessing":
            continue
        for piece in proc.get("single", []):
            if "SpecialToken" not in piece:
                break
            name = piece["SpecialToken"]["id"]
            ids = (proc.get("special_tokens", {}).get(name) or {}).get("ids") or [tokenizer.token_to_id(name)]
            out.extend(i for i in ids if i is not None)
    return out


class HarnessTokenizer:
    """An lmkit tokenizer plus the checkpoint's special-token conventions."""

    def __init__(self, tokenizer, bos_id: int | None = None, eos_id: int | None = None,
                 leading: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.leading = list(leading)
        self.prefix_token_id = bos_id if bos_id is not None else eos_id
        if self.prefix_token_id is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition the first token on")
        self._bos_text = tokenizer.decode([self.prefix_token_id])

    @classmethod
    def from_checkpoint(cls, directory: str | Path, tokenizer, model_config=None) -> "HarnessTokenizer":
        directory = Path(directory)
        specials: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            try:
                d = json.loads((directory / name).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            for key in ("bos_token", "eos_token"):
                if d.get(key) is not None:
                    specials.setdefault(key, d[key])
        bos = _special_token_id(tokenizer, specials.get("bos_token"))
        eos = _special_token_id(tokenizer, specials.get("eos_token"))
        if model_config is not None:
            bos = bos if bos is not None else getattr(model_config, "bos_token_id", None)
            cfg_eos = getattr(model_config, "eos_token_id", None)
            eos = eos if eos is not None else (cfg_eos[0] if isinstance(cfg_eos, (list, tuple)) else cfg_eos)
        return cls(tokenizer, bos, eos, _leading_specials(directory, tokenizer))

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        ids = self.tokenizer.encode(text)
        if add_special_tokens is False or (add_special_tokens is None and self._bos_text
                                          and text.startswith(self._bos_text)):
            return ids
        return self.leading + ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's `loglikelihood` tokenization, including the empty-context case."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        return self.encode_pair(context, continuation)
