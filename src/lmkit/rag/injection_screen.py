"""Screening retrieved passages for prompt injection before they reach the model.

A retrieved document is data written by someone else; one that carries instructions for the
assistant ("ignore your previous instructions and ...") is dropped from the context and
reported (lmkit.data.safety.prompt_injection for the detector, docs/safety.md for its
measured recall and false-positive rate).
"""

from __future__ import annotations

import logging
from typing import Sequence

from lmkit.data.safety.prompt_injection import InjectionDetector, InjectionResult
from lmkit.rag.store import Hit

log = logging.getLogger("lmkit.rag.injection")


def screen_hits(hits: Sequence[Hit], detector: InjectionDetector | None = None
                ) -> tuple[list[Hit], list[tuple[Hit, InjectionResult]]]:
    """(the clean hits in their order, the flagged ones with their verdicts)."""
    detector = detector or InjectionDetector()
    kept, flagged = [], []
    for h in hits:
        verdict = detector.check(h.text)
        if verdict.flagged:
            flagged.append((h, verdict))
            log.warning("dropped retrieved passage %s: possible prompt injection (%s)",
                        h.metadata.get("source", h.id), ", ".join(verdict.rules) or f"score {verdict.score:.2f}")
        else:
            kept.append(h)
    return kept, flagged
