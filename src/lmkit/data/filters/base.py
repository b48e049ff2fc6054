"""What a cleaning filter is: text in, the (possibly changed) text out, or a reason to drop it.

Every filter of `lmkit.data.clean` has a `name` (the key of its drop counts in reports and
datasheets) and `apply(text)`, which returns either the text to keep (a filter that masks or
removes lines returns the changed text) or a `Dropped` naming why the document went.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from lmkit.errors import LmkitError


class FilterError(LmkitError, ValueError):
    """A filter was configured wrongly (an unknown name, a bad threshold)."""


@dataclass(frozen=True)
class Dropped:
    """The verdict of a filter that removes the document; `reason` is a short snake_case tag."""

    reason: str


FilterResult = Union[str, Dropped]


class DocumentFilter:
    """Base class of the cleaning filters (subclasses set `name` and implement `apply`)."""

    name = "filter"

    def apply(self, text: str) -> FilterResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def keep(self, text: str) -> bool:
        """True when `apply` keeps the document (the yes/no form the rule tests read)."""
        return not isinstance(self.apply(text), Dropped)

    def config(self) -> dict:
        """The settings that decide what this filter does (part of a shard's resume key)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
