"""What a checkpoint records about its special tokens, derived in one place from its tokenizer.

A model that is not told where a reply ends runs on to the token limit in every tool that
loads it (transformers.generate, vLLM, llama.cpp, lmkit's own decoders). So every checkpoint
lmkit writes with a tokenizer carries, as the Qwen2 / Llama-3 checkpoints do:

  config.json / generation_config.json  eos_token_id: the end-of-document id, or the list
                                        [end of document, end of turn] when the tokenizer
                                        has a chat template's end-of-turn token (ChatML's
                                        <|im_end|>); pad_token_id
  tokenizer_config.json                 chat_template (Jinja), eos/pad/bos tokens, the
                                        tokenizer class transformers should build
  special_tokens_map.json               the same special tokens, for older tools

`checkpoint_tokens(tokenizer)` finds them; `with_special_ids(config, ...)` puts the ids into a
ModelConfig; `tokenizer_files(...)` gives the JSON files. `hub.save_pretrained(...,
tokenizer=...)` and the GGUF export use these, so all writers agree.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from lmkit.models.config import ModelConfig
from lmkit.tokenizers.chat_template import TEMPLATES, ChatTemplate, missing_template_tokens

END_OF_TEXT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")
PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>")
BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>")


@dataclass(frozen=True)
class CheckpointTokens:
    """The special tokens of a checkpoint (token text -> id pairs; None when absent)."""

    end_of_text: tuple[str, int] | None
    end_of_turn: tuple[str, int] | None  # the template's, when it differs from end_of_text
    pad: tuple[str, int] | None
    bos: tuple[str, int] | None
    template: ChatTemplate | None

    @property
    def eos_ids(self) -> list[int]:
        """Every id that ends generation: end of document first, then end of turn."""
        return [t[1] for t in (self.end_of_text, self.end_of_turn) if t is not None]

    @property
    def eos_token_id(self) -> int | list[int] | None:
        """config.json's form: one id, or a list when a turn ends with its own token."""
        ids = self.eos_ids
        return None if not ids else ids[0] if len(ids) == 1 else ids


def _token_id(tokenizer: Any, text: str) -> int | None:
    if hasattr(tokenizer, "token_to_id"):
        return tokenizer.token_to_id(text)
    vocab = tokenizer.get_vocab()
    return vocab.get(text)


def find_token(tokenizer: Any, candidates: tuple[str, ...]) -> tuple[str, int] | None:
    """(text, id) of the first of `candidates` that is a token of `tokenizer`."""
    for text in candidates:
        idx = _token_id(tokenizer, text)
        if idx is not None:
            return text, int(idx)
    return None


def chat_template_of(tokenizer: Any) -> ChatTemplate | None:
    """The built-in chat template whose control tokens are all single tokens of `tokenizer`
    (ChatML first), or None."""
    for template in TEMPLATES.values():
        if not missing_template_tokens(template, tokenizer):
            return template
    return None


def checkpoint_tokens(tokenizer: Any, template: ChatTemplate | None = None) -> CheckpointTokens:
    """The special tokens to record for `tokenizer` (an lmkit or transformers tokenizer).
    `template` None: the built-in template the tokenizer has the tokens for."""
    template = template if template is not None else chat_template_of(tokenizer)
    end_of_text = find_token(tokenizer, END_OF_TEXT_CANDIDATES)
    end_of_turn = None
    if template is not None and not missing_template_tokens(template, tokenizer):
        end_of_turn = (template.end_of_turn, int(_token_id(tokenizer, template.end_of_turn)))
        if end_of_text is not None and end_of_text[1] == end_of_turn[1]:
            end_of_turn = None
    else:
        template = None
    bos = find_token(tokenizer, BOS_CANDIDATES) if template is None or template.bos else None
    return CheckpointTokens(end_of_text, end_of_turn, find_token(tokenizer, PAD_CANDIDATES), bos, template)


def with_special_ids(config: ModelConfig, tokens: CheckpointTokens) -> ModelConfig:
    """A copy of `config` whose eos (a list kept in ``extra``, as `hub` reads config.json)
    and pad ids are the tokenizer's. Ids beyond the model's vocabulary are left out;
    a config's own bos id is kept."""
    cfg = copy.deepcopy(config)
    eos = [i for i in tokens.eos_ids if i < cfg.vocab_size]
    extra = dict(cfg.extra)
    extra.pop("eos_token_id", None)
    if eos:
        cfg.eos_token_id = eos[0]
        if len(eos) > 1:
            extra["eos_token_id"] = eos
    cfg.extra = extra
    if tokens.pad is not None and tokens.pad[1] < cfg.vocab_size:
        cfg.pad_token_id = tokens.pad[1]
    if cfg.bos_token_id is None and tokens.bos is not None and tokens.bos[1] < cfg.vocab_size:
        cfg.bos_token_id = tokens.bos[1]
    return cfg


def tokenizer_files(tokens: CheckpointTokens, model_max_length: int | None = None) -> dict[str, dict]:
    """{file name: JSON object} for tokenizer_config.json and special_tokens_map.json."""
    special = {}
    if tokens.bos is not None:
        special["bos_token"] = tokens.bos[0]
    if tokens.end_of_text is not None or tokens.end_of_turn is not None:
        special["eos_token"] = (tokens.end_of_text or tokens.end_of_turn)[0]
    if tokens.pad is not None:
        special["pad_token"] = tokens.pad[0]
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                              "add_bos_token": False, "add_eos_token": False, **special}
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    if tokens.template is not None:
        config["chat_template"] = tokens.template.to_jinja()
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}
