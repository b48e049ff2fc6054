"""doc_to_text / doc_to_target / doc_to_choice, interpreted as lm-eval interprets them.

A string that names a document field gives that field's value; any other string is a Jinja
template rendered with the document (StrictUndefined, trailing newline kept, a `regex_replace`
filter). A rendered target that is all digits becomes an int index when the task has choices;
a rendered target that looks like a Python list becomes a list (several gold answers). An int
is used as is; doc_to_choice may also be a YAML list or mapping (its values).
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from typing import Any

from lmkit.eval.harness.task_config import TaskConfig, TaskConfigError


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


@lru_cache(maxsize=None)
def _environment():
    from jinja2 import BaseLoader, Environment, StrictUndefined

    env = Environment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = _regex_replace
    return env


@lru_cache(maxsize=512)
def _compiled(template: str):
    return _environment().from_string(template)


def render(template: str, doc: dict, where: str = "") -> str:
    from jinja2 import TemplateError

    try:
        return _compiled(template).render(**doc)
    except TemplateError as exc:
        raise TaskConfigError(f"{where}: template {template!r} failed on a document: {exc}") from None


class PromptFields:
    """The three doc_to_* functions of one task (its document fields decide field vs template)."""

    def __init__(self, cfg: TaskConfig, features: list[str]) -> None:
        self.cfg = cfg
        self.features = set(features)

    def text(self, doc: dict, spec: Any = None) -> Any:
        spec = self.cfg.doc_to_text if spec is None else spec
        if isinstance(spec, int):
            return spec
        if not isinstance(spec, str):
            raise TaskConfigError(f"{self.cfg.source}: doc_to_text must be a field name, a template or an int")
        if spec in self.features:
            return doc[spec]
        out = render(spec, doc, self.cfg.source)
        if out.isdigit() and self.cfg.doc_to_choice is not None:
            return ast.literal_eval(out)
        return out

    def target(self, doc: dict, spec: Any = None) -> Any:
        spec = self.cfg.doc_to_target if spec is None else spec
        if isinstance(spec, (int, list)):
            return spec
        if not isinstance(spec, str):
            raise TaskConfigError(f"{self.cfg.source}: doc_to_target must be a field name, a template, "
                                  "an int or a list")
        if spec in self.features:
            return doc[spec]
        out = render(spec, doc, self.cfg.source)
        if out.isdigit() and self.cfg.doc_to_choice is not None:
            return ast.literal_eval(out)
        if len(out) >= 2 and out[0] == "[" and out[-1] == "]":
            try:
                return ast.literal_eval(out)
            except (SyntaxError, ValueError):
                return out
        return out

    def choices(self, doc: dict, spec: Any = None) -> list:
        spec = self.cfg.doc_to_choice if spec is None else spec
        if isinstance(spec, list):
            return spec
        if isinstance(spec, dict):
            return list(spec.values())
        if not isinstance(spec, str):
            raise TaskConfigError(f"{self.cfg.source}: doc_to_choice must be a field, a template, a list or a mapping")
        if spec in self.features:
            out = doc[spec]
        else:
            text = render(spec, doc, self.cfg.source)
            try:
                out = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                raise TaskConfigError(f"{self.cfg.source}: doc_to_choice rendered {text!r}, "
                                      "not a Python list") from None
        if not isinstance(out, list):
            raise TaskConfigError(f"{self.cfg.source}: doc_to_choice must give a list, got {type(out).__name__}")
        return out
