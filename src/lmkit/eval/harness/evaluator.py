"""Run tasks on a model: documents -> prompts -> requests -> model answers -> filters ->
per-document metrics -> aggregated results (lm-eval's `simple_evaluate`, one process).

The model is anything with `loglikelihood`, `loglikelihood_rolling`, `generate_until` and
`eos_text` (`LocalLM`, `EndpointLM`). All requests of a task go to the model in one call, so
the model batches them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from lmkit.eval.harness.documents import load_splits, split_docs
from lmkit.eval.harness.fewshot import DEFAULT_FEWSHOT_SEED, FewshotSampler, build_context
from lmkit.eval.harness.filters import build_filters
from lmkit.eval.harness.generation_kwargs import GenerationRequest, generation_request
from lmkit.eval.harness.metrics import MetricSpec, sample_stderr
from lmkit.eval.harness.prompt_fields import PromptFields
from lmkit.eval.harness.scoring import score_generation, score_loglikelihood, score_multiple_choice, score_rolling
from lmkit.eval.harness.task_config import TaskConfig, TaskConfigError


class HarnessModel(Protocol):
    eos_text: str | None

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]: ...

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]: ...

    def generate_until(self, requests: list[GenerationRequest]) -> list[str]: ...


@dataclass
class TaskResult:
    """One task's outcome: aggregated metrics per filter, and the per-document records."""

    config: TaskConfig
    num_fewshot: int
    n_original: int
    metrics: dict[str, float | str]  # "acc,none" -> value, "acc_stderr,none" -> stderr
    higher_is_better: dict[str, bool]
    samples: list[dict] = field(default_factory=list)


def _limit(n: int, limit: float | int | None) -> int:
    if limit is None:
        return n
    if isinstance(limit, float) and limit < 1.0:
        return int(math.ceil(n * limit))
    return min(n, int(limit))


def _fewshot_pool(cfg: TaskConfig, splits: dict[str, list[dict]]) -> list[dict] | None:
    if cfg.fewshot_split is not None:
        return split_docs(cfg, splits, cfg.fewshot_split, "fewshot_split")
    for name in (cfg.training_split, cfg.validation_split, cfg.test_split):
        if name is not None:
            return split_docs(cfg, splits, name, "split")
    return None


@dataclass
class PreparedTask:
    """A task's documents turned into model requests; `finish(answers)` scores them."""

    cfg: TaskConfig
    request_type: str  # loglikelihood (also multiple_choice), loglikelihood_rolling, generate_until
    requests: list
    finish: Any  # Callable[[list], TaskResult]


def prepare_task(cfg: TaskConfig, eos_text: str | None, num_fewshot: int | None = None,
                 limit: float | int | None = None, seed: int | None = DEFAULT_FEWSHOT_SEED) -> PreparedTask:
    """Documents -> prompts -> requests, and the scoring of the answers."""
    metrics = [MetricSpec(m, cfg.output_type, cfg.source) for m in cfg.metric_list or []]
    pipes = build_filters(cfg.filter_list, cfg.source)
    splits = load_splits(cfg)
    all_docs = split_docs(cfg, splits, cfg.eval_split, "test_split" if cfg.test_split else "validation_split")
    if not all_docs:
        raise TaskConfigError(f"{cfg.source}: the split {cfg.eval_split!r} holds no documents")
    docs = all_docs[:_limit(len(all_docs), limit)]
    fields = PromptFields(cfg, list(all_docs[0]))
    shots = cfg.num_fewshot if num_fewshot is None else num_fewshot
    shots = shots or 0
    pool = _fewshot_pool(cfg, splits)
    sampler = FewshotSampler(pool, seed, cfg.fewshot_config.get("sampler") == "first_n") if pool else None
    exclude_self = cfg.fewshot_split == cfg.test_split

    kind = cfg.output_type
    contexts = ["" if kind == "loglikelihood_rolling" else build_context(cfg, fields, d, shots, sampler, exclude_self)
                for d in docs]
    targets = [fields.target(d) for d in docs]
    samples = [{"doc_id": i, "doc": d, "target": t, "arguments": []} for i, (d, t) in enumerate(zip(docs, targets))]
    choices = [fields.choices(d) for d in docs] if cfg.doc_to_choice is not None else None

    if kind == "multiple_choice":
        reqs: list = [(ctx, f"{cfg.target_delimiter}{c}") for ctx, cs in zip(contexts, choices) for c in cs]
    elif kind == "loglikelihood":
        reqs = [(ctx, str(t)) for ctx, t in zip(contexts, targets)]
    elif kind == "loglikelihood_rolling":
        reqs = [str(t) for t in targets]
    else:
        reqs = [generation_request(ctx, cfg.generation_kwargs or {}, eos_text) for ctx in contexts]

    def finish(answers: list) -> TaskResult:
        per_doc: list[dict[str, dict[str, Any]]] = []  # filter name -> metric -> value
        if kind == "multiple_choice":
            pos = 0
            for s, cs, gold in zip(samples, choices, targets):
                res = answers[pos:pos + len(cs)]
                s["arguments"] = reqs[pos:pos + len(cs)]
                pos += len(cs)
                s["resps"] = [list(r) for r in res]
                per_doc.append({p.name: score_multiple_choice(metrics, cs, gold, res) for p in pipes})
        elif kind == "loglikelihood":
            for s, req, res in zip(samples, reqs, answers):
                s["arguments"], s["resps"] = [req], [list(res)]
                per_doc.append({p.name: score_loglikelihood(metrics, res) for p in pipes})
        elif kind == "loglikelihood_rolling":
            for s, text, ll in zip(samples, reqs, answers):
                s["arguments"], s["resps"] = [[text]], [ll]
                per_doc.append({p.name: score_rolling(metrics, text, ll) for p in pipes})
        else:
            for n, (s, gold, req, text) in enumerate(zip(samples, targets, reqs, answers)):
                s["arguments"] = [[req.context, {"until": list(req.until), "max_gen_toks": req.max_gen_toks}]]
                s["resps"], s["filtered_resps"] = [text], {}
                scores = {}
                for p in pipes:
                    filtered = p([text])
                    if isinstance(filtered, list):  # a pipeline without take_first: score its first value
                        filtered = filtered[0] if filtered else ""
                    s["filtered_resps"][p.name] = filtered
                    scores[p.name] = score_generation(metrics, gold, choices[n] if choices is not None else None,
                                                      filtered)
                per_doc.append(scores)
        out: dict[str, float | str] = {}
        for p in pipes:
            for m in metrics:
                items = [row[p.name][m.name] for row in per_doc]
                out[f"{m.name},{p.name}"] = m.aggregate(items)
                out[f"{m.name}_stderr,{p.name}"] = sample_stderr(items) if m.aggregation == "mean" else "N/A"
        for s, row in zip(samples, per_doc):
            for pname, vals in row.items():
                for k, v in vals.items():
                    key = k if len(pipes) == 1 and pname == "none" else f"{k},{pname}"
                    s[key] = list(v) if isinstance(v, tuple) else v
        return TaskResult(cfg, shots, len(all_docs), out, {m.name: m.higher_is_better for m in metrics}, samples)

    rtype = "loglikelihood" if kind == "multiple_choice" else kind
    return PreparedTask(cfg, rtype, reqs, finish)


def evaluate_tasks(model: HarnessModel, configs: list[TaskConfig], num_fewshot: int | None = None,
                   limit: float | int | None = None, seed: int | None = DEFAULT_FEWSHOT_SEED) -> list[TaskResult]:
    """Evaluate `model` on several tasks. As in lm-eval, the requests of one type from every task
    go to the model together (so batches, and float32 rounding, are the same as lm-eval's)."""
    prepared = [prepare_task(cfg, model.eos_text, num_fewshot, limit, seed) for cfg in configs]
    calls = {"loglikelihood": model.loglikelihood, "loglikelihood_rolling": model.loglikelihood_rolling,
             "generate_until": model.generate_until}
    answers: dict[int, list] = {}
    for rtype, call in calls.items():
        mine = [i for i, p in enumerate(prepared) if p.request_type == rtype]
        if not mine:
            continue
        got = call([r for i in mine for r in prepared[i].requests])
        pos = 0
        for i in mine:
            answers[i] = got[pos:pos + len(prepared[i].requests)]
            pos += len(prepared[i].requests)
    return [p.finish(answers[i]) for i, p in enumerate(prepared)]


def run_task(model: HarnessModel, cfg: TaskConfig, num_fewshot: int | None = None,
             limit: float | int | None = None, seed: int | None = DEFAULT_FEWSHOT_SEED) -> TaskResult:
    """Evaluate `model` on one task."""
    return evaluate_tasks(model, [cfg], num_fewshot, limit, seed)[0]
