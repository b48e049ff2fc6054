"""Moderation in the server: prompts checked before they reach the model, replies as they come.

* input: the text of the request's messages (or prompt) is checked first; a flagged request
  gets 400 with code ``content_filter`` (as Azure OpenAI answers) and is never run;
* output, whole: a flagged choice keeps no content and ends with finish_reason
  ``content_filter``;
* output, streamed: after every engine event the tail of the choice's text (the last
  `stream_window` characters, where a new match can appear) is checked *before* its chunk is
  sent; on a hit that chunk is dropped, the choice ends with a last chunk whose
  finish_reason is ``content_filter`` (what the official `openai` client reports), and its
  generation is cancelled, freeing the batch slot. Text sent before the hit stays sent:
  a phrase is caught once it is complete, not before.

Checks and hits are counted in /metrics (safety_metrics.py) and logged.
"""

from __future__ import annotations

import logging
from typing import Any

from lmkit.data.safety.moderation import ModerationConfig, ModerationResult, Moderator
from lmkit.serve.api_errors import APIError
from lmkit.serve.safety_metrics import SafetyCounters

log = logging.getLogger("lmkit.serve.moderation")
CONTENT_FILTER = "content_filter"


class ModerationGate:
    """A `Moderator` plus the counters; one per server (on `ServerState.moderation`)."""

    def __init__(self, config: ModerationConfig | dict | None, counters: SafetyCounters) -> None:
        if isinstance(config, dict):
            config = ModerationConfig(**config)
        self.config = config or ModerationConfig()
        self.moderator = Moderator(self.config)
        self.counters = counters

    def check(self, text: str, side: str) -> ModerationResult:
        result = self.moderator.check(text)
        self.counters.inc("lmkit_moderation_checks_total", side)
        for category in result.flagged_categories:
            self.counters.inc("lmkit_moderation_flagged_total", side, category)
        if result.flagged:
            log.warning("moderation flagged the %s: %s", side, ", ".join(result.flagged_categories))
        return result

    def check_input(self, texts: list[str]) -> None:
        """400 content_filter when the request's text is flagged (and input checks are on)."""
        if not self.config.check_input:
            return
        result = self.check("\n".join(t for t in texts if t), "input")
        if result.flagged:
            raise APIError(400, "the request was flagged by the content filter (categories: "
                           f"{', '.join(result.flagged_categories)})", param="messages", code=CONTENT_FILTER)

    def output_flagged(self, text: str) -> bool:
        return self.config.check_output and self.check(text, "output").flagged

    def stream_guard(self, n: int, path: str) -> "StreamGuard":
        return StreamGuard(self, n, path)


class StreamGuard:
    """Per streamed request: which choices were cut, and the check of each new piece of text."""

    def __init__(self, gate: ModerationGate, n: int, path: str) -> None:
        self.gate, self.path = gate, path
        self.cut = [False] * n
        self.checked = [0] * n  # characters of each choice's text already checked

    def screen(self, index: int, text_so_far: str) -> bool:
        """True when choice `index` must be cut now (its text so far ends in flagged content)."""
        if self.cut[index] or not self.gate.config.check_output or len(text_so_far) == self.checked[index]:
            return self.cut[index]
        self.checked[index] = len(text_so_far)
        if self.gate.output_flagged(text_so_far[-self.gate.config.stream_window:]):
            self.cut[index] = True
            self.gate.counters.inc("lmkit_content_filter_finishes_total", self.path)
        return self.cut[index]


def message_texts(messages: list[Any]) -> list[str]:
    """The text of chat messages (string content or the text parts of a content list)."""
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p.get("text", "") for p in content if isinstance(p, dict)]
    return out
