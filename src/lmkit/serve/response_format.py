"""A request's structured-output fields -> the compiled grammar its choices decode under.

OpenAI's `response_format`:

    {"type": "text"}                                   free text (the default)
    {"type": "json_object"}                            any JSON object
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}

and vLLM's extra body fields (the openai client sends them with `extra_body={...}`):
`guided_json` (a schema), `guided_regex`, `guided_grammar` (Lark, or llama.cpp's GBNF) and
`guided_choice` (a list of strings). At most one may be given. For chat, `tool_choice`
"required" or a named function constrains the reply to one tool call whose arguments follow
the tool's `parameters` schema (tool_calls.tool_call_grammar); it takes precedence. Without
llguidance a forced tool call is only started by the prompt (`tool_choice_prefix`), as before.

Compiling is lmkit.infer.structured_output's (llguidance, the `structured` extra). A schema
or grammar that does not compile, or a server without llguidance, is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from lmkit.errors import ConfigError, MissingDependencyError
from lmkit.infer import structured_output
from lmkit.serve.api_errors import APIError

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_grammar", "guided_choice")


def _field(req, name: str) -> Any:
    value = getattr(req, name, None)
    if value is None and req.model_extra:
        value = req.model_extra.get(name)
    return value


def requested_format(req) -> tuple[str, str, Any] | None:
    """(kind, field name, value) of the structured output `req` asks for; None for free text."""
    asked = []
    rf = _field(req, "response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise APIError(400, "response_format must be {'type': 'text'}, {'type': 'json_object'} or "
                                "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}",
                           param="response_format")
        if rf["type"] == "json_object":
            asked.append(("json_object", "response_format", None))
        elif rf["type"] == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
                raise APIError(400, "response_format.json_schema must be {'name': ..., 'schema': {...}}",
                               param="response_format")
            asked.append(("json_schema", "response_format", js.get("schema", {})))
    for name in GUIDED_FIELDS:
        value = _field(req, name)
        if value is not None:
            asked.append((name.removeprefix("guided_"), name, value))
    if len(asked) > 1:
        raise APIError(400, f"give one structured-output option, not {len(asked)} ("
                            + ", ".join(a[1] for a in asked) + ")", param=asked[1][1])
    return asked[0] if asked else None


def compile_request(tokenizer, kind: str, value: Any, param: str):
    """The compiled grammar for one structured-output request (400 when it cannot be compiled)."""
    so = structured_output
    if tokenizer is None:
        raise APIError(400, "structured output needs the model's tokenizer; this server has none", param=param)
    try:
        if kind == "json_object":
            return so.compile_json_object(tokenizer)
        if kind in ("json_schema", "json"):
            if isinstance(value, str):
                import json

                try:
                    value = json.loads(value)
                except ValueError:
                    raise APIError(400, f"{param} must be a JSON schema object", param=param) from None
            return so.compile_json_schema(tokenizer, value)
        if kind == "regex":
            return so.compile_regex(tokenizer, value)
        if kind == "grammar":
            return so.compile_grammar(tokenizer, value)
        if kind == "choice":
            if not isinstance(value, list):
                raise APIError(400, "guided_choice must be a list of strings", param=param)
            return so.compile_choice(tokenizer, value)
        if kind == "tool_call":
            return so.compile_grammar(tokenizer, value)
    except MissingDependencyError as exc:
        raise APIError(400, f"structured output is not available on this server: {exc}", param=param,
                       code="structured_output_unavailable") from None
    except ConfigError as exc:
        raise APIError(400, str(exc), param=param) from None
    raise APIError(400, f"unknown structured-output kind {kind!r}", param=param)


def request_constraint(req, tokenizer, tool_grammar: str | None = None):
    """The compiled grammar every choice of `req` decodes under, or None for free text.

    tool_grammar: the forced tool call's grammar (chat with tool_choice required / named).
    """
    asked = requested_format(req)
    if tool_grammar is not None and tokenizer is not None and structured_output.available():
        return compile_request(tokenizer, "tool_call", tool_grammar, "tool_choice")
    if asked is None:
        return None
    kind, param, value = asked
    return compile_request(tokenizer, kind, value, param)
