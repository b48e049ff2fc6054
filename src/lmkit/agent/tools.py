"""Tools an agent can call, built from typed Python functions.

The JSON schema a model sees comes from the function's signature (types, defaults) and its
docstring (the summary line, and one line per argument in an ``Args:`` section), so a tool is
written once, as an ordinary function:

    @tool
    def add(a: int, b: int) -> int:
        '''Add two integers.

        Args:
            a: the first number
            b: the second number
        '''
        return a + b

Calling a tool never raises into the agent loop: bad arguments, exceptions and time-outs come
back as an error string, which the loop feeds to the model so it can correct itself.
"""

from __future__ import annotations

import concurrent.futures
import enum
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from lmkit.errors import ConfigError

_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


class ToolError(Exception):
    """A tool call failed; the message is shown to the model."""


def _json_type(annotation: Any) -> dict[str, Any]:
    """JSON schema for a Python annotation (the subset models and OpenAI understand)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _json_type(non_none[0])
        return {"anyOf": [_json_type(a) for a in non_none]}
    if origin is typing.Literal:
        values = list(args)
        schema: dict[str, Any] = {"enum": values}
        kinds = {type(v) for v in values}
        if len(kinds) == 1:
            schema["type"] = _json_type(kinds.pop()).get("type")
        return schema
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set):
        item = args[0] if args and args[0] is not Ellipsis else None
        return {"type": "array", **({"items": _json_type(item)} if item is not None else {})}
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [m.value for m in annotation]}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in simple:
        return {"type": simple[annotation]}
    raise ConfigError(f"tool argument type {annotation!r} has no JSON schema; use str, int, float, bool, "
                      f"list[...], dict, Literal[...], an Enum or Optional of these")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {arg: description})."""
    if not doc:
        return "", {}
    doc = inspect.cleandoc(doc)
    lines = doc.splitlines()
    desc_lines: list[str] = []
    args: dict[str, str] = {}
    i = 0
    while i < len(lines) and not re.match(r"^(Args|Arguments|Parameters|Returns|Raises):\s*$", lines[i]):
        desc_lines.append(lines[i])
        i += 1
    current = None
    in_args = False
    for line in lines[i:]:
        header = re.match(r"^(Args|Arguments|Parameters|Returns|Raises):\s*$", line)
        if header:
            in_args = header.group(1) in ("Args", "Arguments", "Parameters")
            current = None
            continue
        if not in_args:
            continue
        m = re.match(r"^\s+(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
        if m:
            current = m.group(1).lstrip("*")
            args[current] = m.group(2).strip()
        elif current and line.strip():
            args[current] = (args[current] + " " + line.strip()).strip()
    return " ".join(" ".join(desc_lines).split()), args


_PY_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
             "array": list, "object": dict}


def _check_value(name: str, value: Any, schema: dict[str, Any]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        raise ToolError(f"argument {name!r} must be one of {schema['enum']}, got {value!r}")
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                _check_value(name, value, option)
                return
            except ToolError as exc:
                errors.append(str(exc))
        raise ToolError(f"argument {name!r} matches none of the allowed types: {value!r}")
    kind = schema.get("type")
    if kind is None:
        return
    expected = _PY_TYPES[kind]
    if isinstance(value, bool) and kind in ("integer", "number"):
        raise ToolError(f"argument {name!r} must be {kind}, got a boolean")
    if not isinstance(value, expected):
        raise ToolError(f"argument {name!r} must be {kind}, got {type(value).__name__} {value!r}")
    if kind == "array" and "items" in schema:
        for j, item in enumerate(value):
            _check_value(f"{name}[{j}]", item, schema["items"])


@dataclass
class Tool:
    """A callable the model may use: name, description, JSON-schema parameters, function."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any]
    timeout: float | None = 30.0
    _enum_args: dict[str, type] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not _TOOL_NAME.match(self.name):
            raise ConfigError(f"tool name {self.name!r} must match {_TOOL_NAME.pattern} (OpenAI's rule)")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"tool timeout must be > 0 seconds, got {self.timeout}")

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                      timeout: float | None = 30.0) -> "Tool":
        desc, arg_docs = parse_docstring(fn.__doc__)
        try:
            hints = typing.get_type_hints(fn)
        except NameError as exc:  # a string annotation naming something out of scope
            raise ConfigError(f"tool {getattr(fn, '__name__', fn)}: cannot resolve its type hints ({exc}); "
                              f"define the types it uses at module level") from None
        props: dict[str, Any] = {}
        required: list[str] = []
        enum_args: dict[str, type] = {}
        for pname, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigError(f"tool {fn.__name__}: *args/**kwargs cannot be described to a model")
            annotation = hints.get(pname, param.annotation)
            schema = _json_type(annotation)
            if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
                enum_args[pname] = annotation
            if pname in arg_docs:
                schema["description"] = arg_docs[pname]
            if param.default is inspect.Parameter.empty:
                required.append(pname)
            elif param.default is not None and not isinstance(param.default, enum.Enum):
                schema["default"] = param.default
            props[pname] = schema
        parameters = {"type": "object", "properties": props, "required": required}
        return cls(name=name or fn.__name__, description=description or desc or fn.__name__,
                   parameters=parameters, function=fn, timeout=timeout, _enum_args=enum_args)

    def openai_schema(self) -> dict[str, Any]:
        """The entry for the `tools` list of an OpenAI chat request."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def validate(self, arguments: dict[str, Any] | str | None) -> dict[str, Any]:
        """Parse and check arguments against the schema; raise ToolError with a readable reason."""
        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise ToolError(f"arguments for {self.name} are not valid JSON: {exc.msg}") from None
        if not isinstance(arguments, dict):
            raise ToolError(f"arguments for {self.name} must be a JSON object, got {type(arguments).__name__}")
        props = self.parameters.get("properties", {})
        unknown = sorted(set(arguments) - set(props))
        if unknown:
            raise ToolError(f"{self.name} has no argument(s) {unknown}; it takes {sorted(props)}")
        missing = [p for p in self.parameters.get("required", []) if p not in arguments]
        if missing:
            raise ToolError(f"{self.name} is missing required argument(s) {missing}")
        for pname, value in arguments.items():
            _check_value(pname, value, props[pname])
        return {k: (self._enum_args[k](v) if k in self._enum_args else v) for k, v in arguments.items()}

    def __call__(self, arguments: dict[str, Any] | str | None = None) -> str:
        """Run the tool; every failure becomes a string starting with 'Error:' for the model."""
        try:
            kwargs = self.validate(arguments)
        except ToolError as exc:
            return f"Error: {exc}"
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        future = pool.submit(self.function, **kwargs)
        try:
            result = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            return f"Error: tool {self.name} timed out after {self.timeout} s"
        except Exception as exc:  # the model sees the failure and may retry differently
            return f"Error: tool {self.name} failed: {type(exc).__name__}: {exc}"
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
         timeout: float | None = 30.0):
    """Decorator: turn a typed, documented function into a `Tool`."""
    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, timeout=timeout)
    return wrap(fn) if fn is not None else wrap


class Toolbox:
    """A named set of tools; looks a call up by name and runs it."""

    def __init__(self, tools: list[Tool | Callable[..., Any]] = (), injection_detector: Any = None):
        """injection_detector: an `InjectionDetector` (lmkit.data.safety.prompt_injection); a result
        it flags is replaced by a notice before the model sees it."""
        self.injection_detector = injection_detector
        self.tools: dict[str, Tool] = {}
        for t in tools:
            t = t if isinstance(t, Tool) else Tool.from_function(t)
            if t.name in self.tools:
                raise ConfigError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t

    def __len__(self) -> int:
        return len(self.tools)

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def schemas(self) -> list[dict[str, Any]]:
        return [t.openai_schema() for t in self.tools.values()]

    def describe(self) -> str:
        """One line per tool, for text prompts (ReAct)."""
        return "\n".join(f"{t.name}: {t.description} Arguments (JSON): {json.dumps(t.parameters, ensure_ascii=False)}"
                         for t in self.tools.values())

    def call(self, name: str, arguments: dict[str, Any] | str | None) -> str:
        if name not in self.tools:
            return f"Error: there is no tool named {name!r}; available tools: {sorted(self.tools)}"
        result = self.tools[name](arguments)
        if self.injection_detector is not None:
            return self.injection_detector.neutralise(result, f"result of tool {name!r}")
        return result
