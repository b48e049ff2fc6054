"""Response filters (lm-eval's `filter_list`): each named pipeline turns a document's responses
into the value its metrics score, e.g. ``regex`` (extract an answer) then ``take_first``.

Filters: regex (regex_pattern, group_select, fallback "[invalid]"), take_first, take_first_k
(k), remove_whitespace, lowercase, uppercase, map (mapping_dict, default_value), majority_vote.
Without a filter_list the single pipeline "none" = take_first is used.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

from lmkit.eval.harness.task_config import TaskConfigError

Responses = list  # one document's responses (a list of strings; after take_first, one string)


def _regex(regex_pattern: str = r"#### (\-?[0-9\.\,]+)", group_select: int = 0,
           fallback: str = "[invalid]") -> Callable[[Responses], Responses]:
    compiled = re.compile(regex_pattern)

    def one(resp: Any) -> str:
        if not isinstance(resp, str):
            resp = ""
        found = compiled.findall(resp)
        if not found:
            return fallback
        match = found[group_select]
        if isinstance(match, tuple):
            match = next((m for m in match if m), fallback)
        return match.strip()

    return lambda resps: [one(r) for r in resps]


def _map(mapping_dict: dict | None = None, default_value: Any = None) -> Callable[[Responses], Responses]:
    mapping = dict(mapping_dict or {})
    return lambda resps: [mapping.get(r, default_value) for r in resps]


FILTERS: dict[str, Callable[..., Callable[[Responses], Any]]] = {
    "regex": _regex,
    "take_first": lambda: (lambda resps: resps[0]),
    "take_first_k": lambda k: (lambda resps: resps[:k]),
    "remove_whitespace": lambda: (lambda resps: [r.strip() for r in resps]),
    "lowercase": lambda: (lambda resps: [r.lower() for r in resps]),
    "uppercase": lambda: (lambda resps: [r.upper() for r in resps]),
    "map": _map,
    "majority_vote": lambda: (lambda resps: [Counter(resps).most_common(1)[0][0]]),
}


class FilterPipeline:
    """A named sequence of filters applied to each document's responses."""

    def __init__(self, name: str, steps: list[Callable[[Responses], Any]]) -> None:
        self.name = name
        self.steps = steps

    def __call__(self, responses: Responses) -> Any:
        out: Any = responses
        for step in self.steps:
            out = step(out)
        return out


def build_filters(filter_list: list | None, where: str = "") -> list[FilterPipeline]:
    if not filter_list:
        return [FilterPipeline("none", [FILTERS["take_first"]()])]
    pipes = []
    for spec in filter_list:
        steps = []
        for fn in spec["filter"]:
            if not isinstance(fn, dict) or "function" not in fn:
                raise TaskConfigError(f"{where}: filter {spec['name']!r}: each step needs a `function`")
            name = fn["function"]
            if name not in FILTERS:
                raise TaskConfigError(f"{where}: filter function {name!r} is not supported; known: {sorted(FILTERS)}")
            kwargs = {k: v for k, v in fn.items() if k != "function"}
            try:
                steps.append(FILTERS[name](**kwargs))
            except TypeError as exc:
                raise TaskConfigError(f"{where}: filter {name!r}: {exc}") from None
        pipes.append(FilterPipeline(str(spec["name"]), steps))
    return pipes
