"""Post-processors: the special tokens a ``tokenizer.json`` wraps around an encoded text.

Llama 3 adds ``<|begin_of_text|>`` in front (``TemplateProcessing``), Llama 2 adds ``<s>``,
BERT ``[CLS] ... [SEP]``. lmkit's ``encode`` adds them only with ``add_special_tokens=True``
(chat templates usually write the BOS themselves). For one sequence the template reduces to
ids before and ids after it, which is all ``PostProcessor`` keeps besides the original
object (written back unchanged). Understood: ``TemplateProcessing``, ``BertProcessing``,
``RobertaProcessing``, ``ByteLevel`` (offsets only: no ids change) and a ``Sequence`` of
them; any other type loads, but asking it to add special tokens is an error.
"""

from __future__ import annotations

from typing import Sequence

from lmkit.errors import TokenizerError


class PostProcessor:
    """``apply(ids)`` -> the ids of one sequence with the template's special tokens around it."""

    def __init__(self, hf: dict | None) -> None:
        self.hf = hf
        self.prefix: list[int] = []
        self.suffix: list[int] = []
        self.unsupported: str | None = None
        if hf is not None:
            self._read(hf)

    def _read(self, obj: dict) -> None:
        kind = obj.get("type")
        if kind == "Sequence":
            for part in obj.get("processors") or []:
                self._read(part)
        elif kind == "ByteLevel":
            pass
        elif kind == "TemplateProcessing":
            specials = obj.get("special_tokens") or {}
            before, after, seen = [], [], False
            for item in obj.get("single") or []:
                if "Sequence" in item:
                    seen = True
                elif "SpecialToken" in item:
                    name = item["SpecialToken"]["id"]
                    if name not in specials:
                        raise TokenizerError(f"TemplateProcessing names special token {name!r} but does not list it")
                    (after if seen else before).extend(int(i) for i in specials[name]["ids"])
                else:
                    raise TokenizerError(f"TemplateProcessing piece {item!r} is not understood")
            self.prefix, self.suffix = before + self.prefix, self.suffix + after  # wraps what came before
        elif kind in ("BertProcessing", "RobertaProcessing"):
            self.prefix = [int(obj["cls"][1])] + self.prefix
            self.suffix = self.suffix + [int(obj["sep"][1])]
        else:
            self.unsupported = str(kind)

    def apply(self, ids: Sequence[int]) -> list[int]:
        if self.unsupported is not None:
            raise TokenizerError(
                f"post-processor {self.unsupported!r} is not supported: encode with add_special_tokens=False "
                "and add the special tokens yourself"
            )
        return self.prefix + list(ids) + self.suffix

    def to_hf(self) -> dict | None:
        return self.hf
