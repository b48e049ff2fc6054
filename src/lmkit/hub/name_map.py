"""Rename tables between lmkit parameter names and a checkpoint format's names.

Each architecture module lists pairs like
    ("layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight")
where `{i}`, `{j}` (any `{name}`) stand for integers (layer, expert). One table serves
both directions, so loading and saving cannot drift apart.
"""

from __future__ import annotations

import re


def _compile(pattern: str) -> tuple[re.Pattern, str]:
    parts = re.split(r"(\{[a-z]+\})", pattern)
    rx = "".join(f"(?P<{p[1:-1]}>\\d+)" if re.fullmatch(r"\{[a-z]+\}", p) else re.escape(p) for p in parts)
    return re.compile(rx + r"\Z"), pattern


class NameMap:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = list(pairs)
        self._ours = [(_compile(a)[0], b) for a, b in self.pairs]
        self._theirs = [(_compile(b)[0], a) for a, b in self.pairs]

    @staticmethod
    def _apply(table, name: str) -> str | None:
        for rx, target in table:
            m = rx.match(name)
            if m:
                return target.format(**m.groupdict())
        return None

    def to_theirs(self, name: str) -> str | None:
        """lmkit name -> checkpoint name (None when the table has no entry)."""
        return self._apply(self._ours, name)

    def to_ours(self, name: str) -> str | None:
        """checkpoint name -> lmkit name (None when the table has no entry)."""
        return self._apply(self._theirs, name)

    def rename_to_ours(self, state: dict, drop: tuple[str, ...] = ()) -> dict:
        """Rename every mapped key; unmapped keys stay as they are (so a strict load names them)."""
        out = {}
        for k, v in state.items():
            if any(re.fullmatch(d, k) for d in drop):
                continue
            out[self.to_ours(k) or k] = v
        return out

    def rename_to_theirs(self, state: dict, arch: str) -> dict:
        from lmkit.errors import CheckpointError

        out = {}
        for k, v in state.items():
            new = self.to_theirs(k)
            if new is None:
                raise CheckpointError(f"parameter {k!r} has no counterpart in the {arch} checkpoint format")
            out[new] = v
        return out
