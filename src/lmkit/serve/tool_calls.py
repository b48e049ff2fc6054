"""Tool (function) calling in the Hermes / Qwen-2.5 text format.

A chat model sees its tools as text and calls them with text; the server translates between
that text and OpenAI's structured `tools` / `message.tool_calls` fields.

Describing the tools (a block appended to the system prompt, as Qwen-2.5's chat template does):

    # Tools

    You may call one or more functions to assist with the user query.

    You are provided with function signatures within <tools></tools> XML tags:
    <tools>
    {"type": "function", "function": {"name": "get_weather", "parameters": {...}}}
    </tools>

    For each function call, return a json object with function name and arguments within
    <tool_call></tool_call> XML tags:
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>

The model answers with one or more blocks

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

which `parse_tool_calls` turns into OpenAI tool calls (id, type "function", function.name,
function.arguments as a JSON string). Going the other way, `normalize_messages` renders an
assistant message that carries `tool_calls` back into that text, and `role: "tool"` results
into `<tool_response>` blocks inside a user turn (consecutive tool results share one turn),
exactly as Qwen-2.5's template does; then any `ChatTemplate` renders the conversation.

`tool_choice`: "auto" (default) lets the model decide; "none" hides the tools; "required"
and {"type": "function", "function": {"name": ...}} start the reply with the opening of a
tool call (`tool_choice_prefix`), so even a model that would rather talk has to call one,
and `tool_call_grammar` constrains the rest of the reply to one complete call whose
arguments follow the tool's `parameters` schema (structured output).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Sequence

from lmkit.errors import ConfigError

TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
# the start of a call written the documented way, up to its arguments object: what streaming needs
_HEAD_RE = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\{)')


# ---- describing tools ------------------------------------------------------------------
def validate_tools(tools: Any) -> list[dict]:
    """OpenAI `tools` list -> the same list, checked (a ConfigError names the bad entry)."""
    if not isinstance(tools, (list, tuple)):
        raise ConfigError(f"tools must be a list of {{'type': 'function', 'function': {{...}}}}, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ConfigError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ConfigError(f"tools[{i}].function needs a non-empty 'name'")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise ConfigError(f"tools[{i}].function.parameters must be a JSON-schema object")
        out.append({"type": "function", "function": fn})
    return out


def render_tools_prompt(tools: Sequence[dict]) -> str:
    """The system-prompt block describing `tools` (OpenAI format), Qwen-2.5 / Hermes style."""
    tools = validate_tools(tools)
    lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return TOOLS_HEADER + lines + TOOLS_FOOTER


def tool_choice_prefix(tool_choice: Any, tools: Sequence[dict] | None) -> str:
    """Text the assistant's reply is forced to start with for `tool_choice` ("" when free)."""
    if not tools or tool_choice in (None, "auto", "none"):
        return ""
    if tool_choice == "required":
        return CALL_OPEN + "\n"
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        names = [t["function"]["name"] for t in validate_tools(tools)]
        if name not in names:
            raise ConfigError(f"tool_choice names function {name!r}, which is not in tools ({names})")
        return CALL_OPEN + "\n" + '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
    raise ConfigError(
        f"tool_choice must be 'auto', 'none', 'required' or {{'type': 'function', 'function': {{'name': ...}}}}, "
        f"got {tool_choice!r}"
    )


def tool_call_grammar(tool_choice: Any, tools: Sequence[dict] | None, json_options: dict | None = None) -> str | None:
    """A Lark grammar (llguidance dialect) for the rest of a forced tool call, or None when the
    call is not forced. It continues `tool_choice_prefix`: for "required" one of the tools'
    whole call objects, for a named function its arguments; then the closing tag.

    json_options: the JSON layout the arguments are generated in (llguidance's x-guidance).
    """
    prefix = tool_choice_prefix(tool_choice, tools)
    if not prefix:
        return None

    def args_rule(fn: dict) -> str:
        schema = dict(fn.get("parameters") or {"type": "object"})
        if json_options:
            schema["x-guidance"] = json_options
        return "%json " + json.dumps(schema, ensure_ascii=False)

    close = json.dumps("}\n" + CALL_CLOSE)
    fns = [t["function"] for t in validate_tools(tools)]
    if tool_choice == "required":
        rules = []
        for k, fn in enumerate(fns):
            head = json.dumps('{"name": ' + json.dumps(fn["name"], ensure_ascii=False) + ', "arguments": ',
                              ensure_ascii=False)
            rules.append(f"call_{k}: {head} args_{k} {close}\nargs_{k}: {args_rule(fn)}")
        return "start: " + " | ".join(f"call_{k}" for k in range(len(fns))) + "\n" + "\n".join(rules)
    fn = next(f for f in fns if f["name"] == tool_choice["function"]["name"])
    return f"start: args {close}\nargs: {args_rule(fn)}"


# ---- messages -> template input --------------------------------------------------------
def content_text(content: Any) -> str:
    """OpenAI message content (a string, None, or a list of {"type": "text", "text": ...} parts) -> text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:
                raise ConfigError(f"only text content parts are supported, got {part!r:.80}")
        return "".join(parts)
    raise ConfigError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def render_tool_call(call: dict) -> str:
    """One OpenAI tool call (or {"name", "arguments"}) as a <tool_call> block."""
    fn = call.get("function", call)
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"tool call without a function name: {call!r:.120}")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass  # keep the raw string: it is rendered as a JSON string
    return (CALL_OPEN + "\n" + '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
            + json.dumps(args, ensure_ascii=False) + "}\n" + CALL_CLOSE)


def _checked_messages(messages: Sequence[dict]):
    """(index, message) pairs; a ConfigError for an empty list or a message without a role."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConfigError("messages must be a non-empty list of {'role', 'content'} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ConfigError(f"messages[{i}] must be an object with a 'role'")
        yield i, m


def normalize_messages(messages: Sequence[dict], tools: Sequence[dict] | None = None,
                       default_system: str | None = "You are a helpful assistant.") -> list[dict]:
    """OpenAI chat messages -> plain {"role", "content": str} messages for a `ChatTemplate`.

    The tools block goes at the end of the system message (one is created with
    `default_system` if the conversation has none); assistant tool calls become
    <tool_call> blocks; tool results become <tool_response> blocks in a user turn.
    """
    out: list[dict] = []
    for i, m in _checked_messages(messages):
        role = m["role"]
        text = content_text(m.get("content"))
        if role == "developer":
            role = "system"
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(render_tool_call(c) for c in m["tool_calls"])
            text = (text + "\n" + calls) if text else calls
        if role in ("tool", "function"):
            block = "<tool_response>\n" + text + "\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
            continue
        if role not in ("system", "user", "assistant"):
            raise ConfigError(f"messages[{i}] has unknown role {role!r}; use system, user, assistant or tool")
        out.append({"role": role, "content": text})
    for m in out:
        m.pop("_tool", None)
    if tools:
        block = render_tools_prompt(tools)
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": ((default_system or "") + "\n\n" + block).lstrip("\n")})
    return out


def template_messages(messages: Sequence[dict]) -> list[dict]:
    """OpenAI chat messages -> the messages a checkpoint's Jinja template reads, as transformers
    users pass them: text content, "developer" as "system", tool calls kept as structured
    `tool_calls` whose JSON-string arguments become objects (templates apply `tojson` to them),
    tool results as "tool" messages. Keys with a None value are dropped."""
    out: list[dict] = []
    for _, m in _checked_messages(messages):
        msg = {k: v for k, v in m.items() if v is not None}
        msg["role"] = "system" if m["role"] == "developer" else "tool" if m["role"] == "function" else m["role"]
        msg["content"] = content_text(m.get("content"))
        if m.get("tool_calls"):
            msg["tool_calls"] = [_structured_call(c) for c in m["tool_calls"]]
        out.append(msg)
    return out


def _structured_call(call: dict) -> dict:
    if not isinstance(call, dict):
        raise ConfigError(f"a tool call must be an object, got {call!r:.80}")
    fn = dict(call.get("function", call))
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            fn["arguments"] = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass  # keep the raw string
    return {**call, "type": call.get("type", "function"), "function": fn}


# ---- model output -> tool calls -----------------------------------------------------------
def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """Split model output into (content, tool_calls).

    content is the text before the first <tool_call> block, stripped. Each block must hold a
    JSON object with a "name" (string) and "arguments" (object or JSON string); a last block
    cut off before </tool_call> (the model stopped right after the JSON) still counts. When
    any block is not valid JSON the whole text is returned as content with no calls, so
    nothing the model wrote is lost.
    """
    start = text.find(CALL_OPEN)
    if start < 0:
        return text, []
    calls = []
    for m in _CALL_RE.finditer(text, start):
        body = m.group(1).strip()
        if not body and m.end() == len(text):
            continue
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            return text, []
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return text, []
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            arguments = args
        else:
            raw = raw_arguments(body)  # the model's own text, as streamed (the same JSON value)
            arguments = raw if raw is not None and _same_json(raw, args) else json.dumps(args, ensure_ascii=False)
        calls.append({"id": new_call_id(), "type": "function",
                      "function": {"name": obj["name"], "arguments": arguments}})
    if not calls:
        return text, []
    return text[:start].strip(), calls


def _same_json(raw: str, value: Any) -> bool:
    try:
        return json.loads(raw) == value
    except json.JSONDecodeError:
        return False


def json_object_end(text: str, start: int) -> int | None:
    """Index just past the JSON object starting at text[start] ("{"), or None while it is unfinished."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def raw_arguments(body: str) -> str | None:
    """The arguments object of one call body `{"name": ..., "arguments": {...}}` as written, or None
    when the body is not in that shape."""
    m = _HEAD_RE.match(body)
    if not m:
        return None
    end = json_object_end(body, m.end())
    return body[m.end():end] if end is not None else None


def partial_tool_calls(text: str) -> list[tuple[str, str, bool]]:
    """The calls begun in `text` so far, for streaming: (name, arguments text so far, arguments complete).

    Only calls written the documented way (name first, then an arguments object) are seen,
    in order, up to the first one that is not (yet) in that shape.
    """
    calls: list[tuple[str, str, bool]] = []
    pos = text.find(CALL_OPEN)
    while pos >= 0:
        m = _HEAD_RE.match(text, pos + len(CALL_OPEN))
        if not m:
            break
        try:
            name = json.loads('"' + m.group(1) + '"')
        except json.JSONDecodeError:
            break
        end = json_object_end(text, m.end())
        calls.append((name, text[m.end():end if end is not None else len(text)], end is not None))
        if end is None:
            break
        pos = text.find(CALL_OPEN, end)
    return calls


def partial_open_len(text: str) -> int:
    """Characters at the end of `text` that may be the start of "<tool_call>" (hold them back when streaming)."""
    for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(CALL_OPEN[:k]):
            return k
    return 0
