"""Few-shot contexts as lm-eval builds them.

The sampler is lm-eval's default: one `random.Random(seed)` per task (seed 1234, lm-eval's
`fewshot_random_seed`), drawn from in document order, `rnd.sample(pool, n)`; when the few-shot
pool is the evaluated split it draws n + 1 and drops the document itself. `first_n` takes the
first n. The context is: description, then per shot ``text + target_delimiter + answer +
fewshot_delimiter``, then the document's text.
"""

from __future__ import annotations

import random
from typing import Any

from lmkit.eval.harness.prompt_fields import PromptFields, render
from lmkit.eval.harness.task_config import TaskConfig, TaskConfigError

DEFAULT_FEWSHOT_SEED = 1234


class FewshotSampler:
    """Draws the shots of each document from `pool` (lm-eval's ContextSampler / FirstNSampler)."""

    def __init__(self, pool: list[dict], seed: int | None = DEFAULT_FEWSHOT_SEED, first_n: bool = False) -> None:
        self.pool = list(pool)
        self.rnd = random.Random(seed)
        self.first_n = first_n

    def sample(self, n: int, eval_doc: dict | None = None) -> list[dict]:
        if n == 0:
            return []
        if not self.pool:
            raise TaskConfigError("num_fewshot > 0 but there are no documents to draw shots from")
        if self.first_n:
            pool = [x for x in self.pool if x != eval_doc] if eval_doc is not None else self.pool
            if n > len(pool):
                raise TaskConfigError(f"{n} shots requested, only {len(pool)} documents to draw them from")
            return pool[:n]
        k = n if eval_doc is None else n + 1
        if k > len(self.pool):
            raise TaskConfigError(f"{n} shots requested, only {len(self.pool)} documents to draw them from")
        drawn = self.rnd.sample(self.pool, k)
        res = drawn if eval_doc is None else [x for x in drawn if x != eval_doc][:n]
        if len(res) < n:
            res = self.rnd.sample([x for x in self.pool if x != eval_doc], n)
        return res


def _answer_text(choices: list | None, answer: Any) -> str:
    if choices and isinstance(answer, int):
        return str(choices[answer])
    if isinstance(answer, list):
        return str(answer[0])
    return str(answer)


def build_context(cfg: TaskConfig, fields: PromptFields, doc: dict, num_fewshot: int,
                  sampler: FewshotSampler | None, exclude_self: bool) -> str:
    """The prompt of `doc` with `num_fewshot` solved examples before it."""
    parts = [_description(cfg, fields, doc)]
    if num_fewshot > 0:
        if sampler is None:
            raise TaskConfigError(f"{cfg.source}: num_fewshot > 0 but the task has no documents to draw shots from")
        for shot in sampler.sample(num_fewshot, doc if exclude_self else None):
            q = fields.text(shot)
            choices = fields.choices(shot) if cfg.doc_to_choice is not None else None
            a = fields.target(shot)
            has_answer = a is not None and a != ""
            parts.append(str(q) + (cfg.target_delimiter if has_answer else ""))
            if has_answer:
                parts.append(_answer_text(choices, a) + cfg.fewshot_delimiter)
    q = fields.text(doc)
    if isinstance(q, int):
        raise TaskConfigError(f"{cfg.source}: doc_to_text gives an index (a multiple-input task such as "
                              "Winogrande); the harness does not support those")
    parts.append(str(q))
    return "".join(parts)


def _description(cfg: TaskConfig, fields: PromptFields, doc: dict) -> str:
    """lm-eval's `resolve_field`: a field's value, else the rendered template."""
    if not cfg.description:
        return ""
    if cfg.description in fields.features:
        return str(doc[cfg.description])
    return render(cfg.description, doc, cfg.source)
