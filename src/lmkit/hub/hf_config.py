"""The config.json and state-dict plumbing every architecture module (arch_*.py) shares.

Reading: a JSON object from a file, required keys, the eos id (a list of ids is kept in ``extra`` and the first one is
used), and one message when transformers' fields contradict each other. Writing: the list
of settings a checkpoint format cannot express, the eos id, and leaving out a tied LM head.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lmkit.errors import CheckpointError, ConfigError
from lmkit.models.config import ModelConfig, foreign_special_ids

# keys transformers writes into any config.json that say nothing about the computation; other
# keys an architecture module does not read are kept (and written back) with a warning
GENERIC_KEYS = frozenset({
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "output_attentions", "output_hidden_states", "problem_type", "return_dict",
    "transformers_version", "model_type", "use_cache", "tokenizer_class", "prefix", "task_specific_params",
    "finetuning_task", "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder", "is_decoder",
    "pruned_heads", "torchscript", "use_bfloat16", "tf_legacy_loss", "sep_token_id", "classifier_dropout",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "eos_token_id",
    "summary_activation", "summary_first_dropout", "summary_proj_to_labels", "summary_type", "summary_use_proj",
})


def read_json_object(path: Path, missing: str) -> dict:
    """The JSON object in `path` (a checkpoint's config.json, an adapter_config.json, ...);
    a CheckpointError saying `missing` when there is no such file, or naming the file when it
    is not a JSON object."""
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return data


def required(hf: dict, key: str, model_type: str | None) -> Any:
    """``hf[key]``; a missing or null key is a ConfigError naming `model_type`'s config.json."""
    if key not in hf or hf[key] is None:
        raise ConfigError(f"config.json ({model_type}): required key {key!r} is missing")
    return hf[key]


def eos_and_extra(hf: dict, consumed: set[str], default: Any = None) -> tuple[Any, dict]:
    """(eos id, the keys of `hf` not in `consumed`). A list of eos ids is kept whole in the
    extra keys (so it is written back as it was) and its first id is the model's eos."""
    eos = hf.get("eos_token_id", default)
    extra = {k: v for k, v in hf.items() if k not in consumed}
    unread = sorted(set(extra) - GENERIC_KEYS)
    if unread:
        warnings.warn(f"config.json ({hf.get('model_type')}): lmkit does not read {unread}; "
                      "they are kept and written back on save", stacklevel=3)
    if isinstance(eos, list):
        extra["eos_token_id"] = eos
        eos = eos[0] if eos else None
    return eos, extra


def eos_to_hf(hf: dict, cfg: ModelConfig) -> None:
    """Write the eos id, unless the config's extra keys already carry a list of them."""
    if not isinstance(cfg.extra.get("eos_token_id"), list):
        hf["eos_token_id"] = cfg.eos_token_id


@contextmanager
def config_contradictions(model_type: str | None) -> Iterator[None]:
    """Inside: building a ModelConfig from config.json; its validation errors name the file, and
    special token ids outside the vocabulary are dropped with a warning (models/config.py)."""
    try:
        with foreign_special_ids():
            yield
    except ConfigError as exc:
        raise ConfigError(f"config.json ({model_type}) contradicts itself: {exc}") from exc


def mismatches(cfg: ModelConfig, expect: dict[str, Any]) -> list[str]:
    """``"field=value (needs wanted)"`` for every field of `cfg` that differs from `expect`."""
    return [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in expect.items() if getattr(cfg, k) != v]


def check_writable(problems: list[str], model_type: str) -> None:
    if problems:
        raise ConfigError(f"this model cannot be written as a {model_type} checkpoint: " + "; ".join(problems))


def without_tied_head(sd: dict, cfg: ModelConfig, head: str = "lm_head.weight") -> dict:
    """`sd` without the LM head weight when it is tied to the embedding (not saved twice)."""
    if not cfg.tie_embeddings:
        return sd
    return {k: v for k, v in sd.items() if k != head}


def drop_tied_head(out: dict, cfg: ModelConfig, head: str = "lm_head.weight") -> dict:
    """A loaded state: a tied head's own copy is dropped (the model reuses the embedding)."""
    if cfg.tie_embeddings and "embed_tokens.weight" in out:
        out.pop(head, None)
    return out
