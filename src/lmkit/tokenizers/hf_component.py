"""One part of a ``tokenizer.json`` (normalizer, decoder, ...) read into a chain of steps.

The object it was read from is kept and written back unchanged (``to_hf``), so a file
round-trips exactly; pickling stores only that object and re-reads it, because the
steps are closures.
"""

from __future__ import annotations

from typing import Callable


class HfComponent:
    """Subclasses turn one JSON object into ``self._steps`` in ``_read``."""

    def __init__(self, hf: dict | None) -> None:
        self.hf = hf
        self._steps: list[Callable] = []
        if hf is not None:
            self._read(hf)

    def _read(self, obj: dict) -> None:
        raise NotImplementedError

    def to_hf(self) -> dict | None:
        return self.hf

    def __getstate__(self) -> dict:
        return {"hf": self.hf}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["hf"])
