"""Which chat template a checkpoint directory asks for, read as transformers reads it.

A checkpoint's template lives in (later ones win, as in transformers):
  tokenizer_config.json  "chat_template": a Jinja string, or a list of {"name", "template"}
                         for several named templates ("default", "tool_use", "rag" ...)
  chat_template.jinja    the default template, as a file of its own
  additional_chat_templates/NAME.jinja   more named templates

`checkpoint_template(directory, tokenizer, name)` is the one policy every command uses
(generate, chat, serve, sft, dpo and the other alignment commands, RAG, agents):
  - "chatml" / "llama3": lmkit's built-in template (for models that have none);
  - None or "auto": the checkpoint's default template (and its "tool_use" one for requests with
    tools, as transformers picks), else the built-in template whose control tokens the tokenizer
    has (ChatML first), else ChatML;
  - any other name: that named template of the checkpoint.
A checkpoint template whose text is exactly a built-in's Jinja (what lmkit itself writes) is
that built-in, so lmkit's own checkpoints behave as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmkit.errors import TokenizerError
from lmkit.tokenizers.chat_template import CHATML, TEMPLATES, ChatTemplate
from lmkit.tokenizers.jinja_template import SPECIAL_TOKEN_KEYS, JinjaChatTemplate

AUTO = "auto"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def read_chat_templates(directory: str | os.PathLike) -> dict[str, str]:
    """{name: Jinja text} of a checkpoint directory; its main template is named "default"."""
    d = Path(directory)
    out: dict[str, str] = {}
    entry = _read_json(d / "tokenizer_config.json").get("chat_template")
    if isinstance(entry, str):
        out["default"] = entry
    elif isinstance(entry, list):
        for item in entry:
            if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("template"), str):
                out[item["name"]] = item["template"]
    if (d / "chat_template.jinja").is_file():
        out["default"] = (d / "chat_template.jinja").read_text(encoding="utf-8")
    extra = d / "additional_chat_templates"
    if extra.is_dir():
        for f in sorted(extra.glob("*.jinja")):
            out[f.stem] = f.read_text(encoding="utf-8")
    return out


def special_tokens_of(directory: str | os.PathLike) -> dict[str, Any]:
    """bos_token, eos_token ... of tokenizer_config.json (special_tokens_map.json fills gaps)."""
    d = Path(directory)
    config = _read_json(d / "tokenizer_config.json")
    legacy = _read_json(d / "special_tokens_map.json")
    return {k: config[k] if config.get(k) is not None else legacy.get(k) for k in SPECIAL_TOKEN_KEYS
            if config.get(k) is not None or legacy.get(k) is not None}


def _builtin_for(tokenizer: Any) -> ChatTemplate:
    if tokenizer is None:
        return CHATML
    from lmkit.hub.end_of_turn import chat_template_of

    return chat_template_of(tokenizer) or CHATML


def checkpoint_template(directory: str | os.PathLike | None, tokenizer: Any = None,
                        name: str | None = None) -> ChatTemplate | JinjaChatTemplate:
    """The chat template to use for the checkpoint in `directory` (see the module docstring)."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    templates = read_chat_templates(directory) if directory is not None else {}
    if name is None or name == AUTO:
        if not templates:
            return _builtin_for(tokenizer)
        if "default" not in templates:
            raise TokenizerError(
                f"{directory}: the checkpoint has several chat templates and none named 'default'; choose one of "
                f"{sorted(templates)} (or a built-in: {sorted(TEMPLATES)})")
        chosen = "default"
    elif name in templates:
        chosen = name
    else:
        where = (f"; {directory} has {sorted(templates)}" if templates
                 else f"; {directory} has none" if directory else "")
        raise TokenizerError(f"unknown chat template {name!r}: built-in ones are {sorted(TEMPLATES)}{where}")
    source = templates[chosen]
    for builtin in TEMPLATES.values():
        if source == builtin.to_jinja():
            return builtin
    label = "checkpoint" if chosen == "default" else f"checkpoint:{chosen}"
    specials = special_tokens_of(directory)
    tool_use = None
    if chosen == "default" and "tool_use" in templates:  # transformers renders requests with tools with it
        tool_use = JinjaChatTemplate(templates["tool_use"], "checkpoint:tool_use", specials)
    return JinjaChatTemplate(source, label, specials, tool_use=tool_use)
