"""Chat with images for the vision-language model: OpenAI content parts -> prompt ids and pixels.

A user message's content may be a list of OpenAI parts: {"type": "text", "text": ...} and
{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}. Each image becomes
n_image_tokens `<image>` ids at the start of its message's content (LLaVA's "<image>\\n" + text),
after the template's turn header; the text is encoded as plain text, as every lmkit chat
prompt (a user cannot forge a turn or an `<image>` token by typing it). Training renders its
examples through the same function, so the model sees at serving time exactly the layout it
was trained on. Images come only as data URLs: nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lmkit.errors import ConfigError, require

IMAGE_TOKEN = "<image>"


def split_content(content: Any) -> tuple[str, list[str]]:
    """OpenAI message content -> (its text, the URLs of its images, in order)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ConfigError(f"message content must be a string or a list of parts, got {type(content).__name__}")
    texts, urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise ConfigError("an image_url part needs image_url.url (a data URL such as data:image/png;base64,...)")
            urls.append(url)
        else:
            raise ConfigError(f"only text and image_url content parts are supported, got {part!r:.80}")
    return "".join(texts), urls


def has_images(messages: Sequence[dict]) -> bool:
    """Whether any message carries an image_url part."""
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") == "image_url"
                                                        for p in m["content"]) for m in messages)


def encode_vlm_chat(tokenizer, template, messages: Sequence[dict], image_token_id: int, n_image_tokens: int,
                    add_generation_prompt: bool = True) -> tuple[list[int], list[int], list[str]]:
    """Messages (content: text or OpenAI parts) -> (ids, mask: 1 on the assistant's targets, image URLs in
    the order their `<image>` runs appear). `template`: a built-in `ChatTemplate`; `tokenizer`: an lmkit
    tokenizer holding the template's control tokens."""
    from lmkit.tokenizers.chat_template import ChatTemplate, require_template_tokens, validate_messages

    if not isinstance(template, ChatTemplate):
        raise ConfigError(f"chat with images needs a built-in chat template (chatml, llama3), got {template!r:.60}")
    require_template_tokens(template, tokenizer)
    msgs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ConfigError(f"messages[{i}] must be an object with role and content")
        text, urls = split_content(m.get("content"))
        msgs.append({"role": "system" if m.get("role") == "developer" else m.get("role"), "content": text,
                     "urls": urls})
    validate_messages([{"role": m["role"], "content": m["content"]} for m in msgs], template.roles)
    if template.default_system is not None and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": template.default_system, "urls": []})

    ids: list[int] = []
    mask: list[int] = []

    def put(text: str, control: bool, trained: bool) -> None:
        if text:
            piece = tokenizer.encode(text, allowed_special="all" if control else "none")
            ids.extend(piece)
            mask.extend([int(trained)] * len(piece))

    put(template.bos, True, False)
    rest = template.turn_end[len(template.end_of_turn):]
    urls: list[str] = []
    for m in msgs:
        mine = m["role"] == "assistant"
        if mine and m["urls"]:
            raise ConfigError("images can only be in user or system messages, not in the assistant's")
        put(template.turn_start.replace("{role}", m["role"]), True, False)
        for url in m["urls"]:
            ids.extend([image_token_id] * n_image_tokens)
            mask.extend([0] * n_image_tokens)
            urls.append(url)
        put(m["content"].strip() if template.strip_content else m["content"], False, mine)
        put(template.end_of_turn, True, mine)
        put(rest, True, False)
    if add_generation_prompt:
        put(template.generation_prompt, True, False)
    return ids, mask, urls


def decode_data_url(url: str):
    """A data URL (data:image/png;base64,...) -> a Pillow RGB image. Any other URL is refused: the
    model never reaches the network."""
    Image = require("PIL.Image", "test")
    if not isinstance(url, str) or not url.startswith("data:"):
        shown = url[:60] if isinstance(url, str) else type(url).__name__
        raise ConfigError(f"image_url {shown!r}: only data URLs are accepted (data:image/png;base64,...); "
                          "this server does not fetch images from the network")
    head, sep, payload = url[5:].partition(",")
    if not sep or not head.endswith(";base64") or not head.startswith("image/"):
        raise ConfigError(f"image_url: expected data:image/<type>;base64,<data>, got {url[:40]!r}")
    try:
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")
    except (binascii.Error, ValueError, OSError) as exc:
        raise ConfigError(f"image_url: the data URL does not hold a readable image ({exc})") from None


def encode_data_url(image, fmt: str = "PNG") -> str:
    """A Pillow image -> a data URL (base64 PNG by default), what a client sends."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def images_to_pixels(images: Sequence[Any], image_size: int) -> torch.Tensor:
    """Pillow images -> [N, 3, image_size, image_size] in [-1, 1] (value / 127.5 - 1, as shapes.scene_pixels;
    resized with Lanczos when their size differs)."""
    Image = require("PIL.Image", "test")
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.LANCZOS)
        arrays.append(np.asarray(im, dtype=np.float32))
    if not arrays:
        return torch.empty(0, 3, image_size, image_size)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
