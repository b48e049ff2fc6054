"""A task described in lm-evaluation-harness's YAML format, read and checked up front.

Only the fields lmkit understands are accepted (a misspelt or unsupported field is an error,
not silently ignored); the defaults are lm-eval's: `target_delimiter` " ", `fewshot_delimiter`
"\\n\\n", metrics by output type (multiple_choice: acc, acc_norm; loglikelihood: perplexity,
acc; loglikelihood_rolling: word_perplexity, byte_perplexity, bits_per_byte; generate_until:
exact_match), and `generation_kwargs.until` defaults to the fewshot delimiter.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmkit.errors import ConfigError

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")
DEFAULT_METRICS = {
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "multiple_choice": ["acc", "acc_norm"],
    "generate_until": ["exact_match"],
}
DEFAULT_MAX_GEN_TOKS = 256
# fields lm-eval has that change nothing here (bookkeeping, or only used by its own hub loading)
_IGNORED = {"group", "tag", "dataset_name", "should_decontaminate",
            "doc_to_decontamination_query", "repeats", "unsafe_code", "task_alias", "group_alias"}


class TaskConfigError(ConfigError):
    """A task YAML is malformed or asks for something the harness does not support."""


@dataclass
class TaskConfig:
    """The fields of an lm-eval task YAML that the harness runs (see docs/evaluation.md)."""

    task: str
    output_type: str = "generate_until"
    dataset_path: str = "json"
    dataset_kwargs: dict = field(default_factory=dict)
    test_split: str | None = None
    validation_split: str | None = None
    training_split: str | None = None
    fewshot_split: str | None = None
    fewshot_config: dict = field(default_factory=dict)
    doc_to_text: Any = None
    doc_to_target: Any = None
    doc_to_choice: Any = None
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int | None = None
    generation_kwargs: dict | None = None
    filter_list: list | None = None
    metric_list: list | None = None
    metadata: dict | None = None
    source: str = ""  # the YAML file this came from: relative data files are found next to it

    def __post_init__(self) -> None:
        where = self.source or self.task
        if not isinstance(self.task, str) or not self.task:
            raise TaskConfigError(f"{where}: `task` must be a non-empty name")
        if self.output_type not in OUTPUT_TYPES:
            raise TaskConfigError(f"{where}: output_type {self.output_type!r} is not one of {list(OUTPUT_TYPES)}")
        if self.test_split is None and self.validation_split is None:
            raise TaskConfigError(f"{where}: set test_split or validation_split (the documents to score)")
        for name in ("target_delimiter", "fewshot_delimiter", "description"):
            if not isinstance(getattr(self, name), str):
                raise TaskConfigError(f"{where}: {name} must be a string")
        if self.num_fewshot is not None and (not isinstance(self.num_fewshot, int) or self.num_fewshot < 0):
            raise TaskConfigError(f"{where}: num_fewshot must be a non-negative integer")
        if self.output_type == "multiple_choice" and self.doc_to_choice is None:
            raise TaskConfigError(f"{where}: output_type multiple_choice needs doc_to_choice")
        if self.output_type != "loglikelihood_rolling" and self.doc_to_text is None:
            raise TaskConfigError(f"{where}: doc_to_text is missing")
        if self.doc_to_target is None:
            raise TaskConfigError(f"{where}: doc_to_target is missing")
        if self.generation_kwargs is not None:
            if self.output_type != "generate_until":
                raise TaskConfigError(f"{where}: generation_kwargs given but output_type is {self.output_type}")
            if not isinstance(self.generation_kwargs, dict):
                raise TaskConfigError(f"{where}: generation_kwargs must be a mapping")
            if self.generation_kwargs.get("do_sample"):
                raise TaskConfigError(f"{where}: do_sample: true is not supported (the harness decodes greedily)")
            self.generation_kwargs.setdefault("until", [self.fewshot_delimiter])
        elif self.output_type == "generate_until":
            self.generation_kwargs = {"until": [self.fewshot_delimiter], "do_sample": False,
                                      "temperature": 0.0, "max_gen_toks": DEFAULT_MAX_GEN_TOKS}
        if self.metric_list is None:
            self.metric_list = [{"metric": m} for m in DEFAULT_METRICS[self.output_type]]
        if not isinstance(self.metric_list, list) or not all(isinstance(m, dict) and "metric" in m
                                                             for m in self.metric_list):
            raise TaskConfigError(f"{where}: metric_list must be a list of mappings, each with a `metric` key")
        if self.filter_list is not None:
            ok = isinstance(self.filter_list, list) and all(
                isinstance(f, dict) and "name" in f and isinstance(f.get("filter"), list) for f in self.filter_list)
            if not ok:
                raise TaskConfigError(f"{where}: filter_list must be a list of {{name, filter: [...]}} mappings")
        if not isinstance(self.fewshot_config, dict):
            raise TaskConfigError(f"{where}: fewshot_config must be a mapping")
        if set(self.fewshot_config) - {"sampler"}:
            raise TaskConfigError(f"{where}: fewshot_config supports only `sampler`, got {sorted(self.fewshot_config)}")
        if self.fewshot_config.get("sampler", "default") not in ("default", "first_n"):
            raise TaskConfigError(f"{where}: fewshot_config.sampler must be 'default' or 'first_n'")

    @property
    def eval_split(self) -> str:
        return self.test_split or self.validation_split  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """The config as lm-eval writes it under `configs` in results.json."""
        d = asdict(self)
        d.pop("source")
        return {k: v for k, v in d.items() if v not in (None, {}, [])}


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    import yaml

    if path in seen:
        raise TaskConfigError(f"{path}: `include` loops back to itself")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TaskConfigError(f"cannot read task file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if "!function" in text:
            raise TaskConfigError(f"{path}: Python hooks (`!function ...`) are not supported; the harness runs "
                                  "declarative tasks only") from None
        raise TaskConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise TaskConfigError(f"{path}: a task file must be a YAML mapping, got {type(data).__name__}")
    inc = data.pop("include", None)
    if inc is not None:  # lm-eval: the included file's keys, overridden by this file's
        base = _read_yaml((path.parent / str(inc)).resolve(), seen + (path,))
        base.pop("source", None)
        data = {**base, **data}
    return data


def load_task_config(path: str | os.PathLike) -> TaskConfig:
    """Read one task YAML; every problem is a `TaskConfigError` naming the file and the field."""
    path = Path(path).resolve()
    data = _read_yaml(path)
    for key in list(data):
        if key in _IGNORED:
            data.pop(key)
    known = set(TaskConfig.__dataclass_fields__) - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TaskConfigError(f"{path}: unsupported field(s) {unknown}; the harness understands {sorted(known)}")
    if "task" not in data:
        raise TaskConfigError(f"{path}: `task` (the task's name) is missing")
    for key in ("dataset_kwargs", "fewshot_config"):
        if data.get(key) is None:
            data.pop(key, None)
    try:
        return TaskConfig(**data, source=str(path))
    except TypeError as exc:
        raise TaskConfigError(f"{path}: {exc}") from None
