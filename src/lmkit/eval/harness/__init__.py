"""lmkit.eval.harness — tasks in lm-evaluation-harness's YAML format, scored as lm-eval scores
them, on a local (or quantized) checkpoint or an OpenAI-compatible endpoint; `lmkit eval run`."""

from lmkit.eval.harness.evaluator import TaskResult, evaluate_tasks, run_task
from lmkit.eval.harness.local_model import LocalLM
from lmkit.eval.harness.results import results_document, results_table
from lmkit.eval.harness.task_config import TaskConfig, TaskConfigError, load_task_config

__all__ = ["LocalLM", "TaskConfig", "TaskConfigError", "TaskResult", "evaluate_tasks", "load_task_config",
           "results_document",
           "results_table", "run_task"]
