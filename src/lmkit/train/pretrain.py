"""`lmkit pretrain`: one config file -> tokenized shards -> a model trained with the right
objective -> a Hugging Face checkpoint.

Objectives and the models they train:
  clm     causal LM on packed windows                  (decoder: GPT-2, Llama, ...)
  prefix  prefix LM: bidirectional prefix, loss on the rest (decoder with a prefix mask)
  mlm     BERT masked LM (15%, 80/10/10), optional NSP  (encoder)
  span    T5 span corruption with sentinel tokens       (encoder-decoder)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.presets import PRESETS
from lmkit.train.config import TrainConfig

OBJECTIVES = {"clm": "decoder", "prefix": "decoder", "mlm": "encoder", "span": "encoder_decoder"}
N_SENTINELS = 100


@dataclass
class PretrainConfig:
    data: str  # shard directory written by `lmkit data prepare`
    tokenizer: str  # the tokenizer file the shards were made with
    objective: str = "clm"
    model: str | dict[str, Any] = "llama-tiny"  # preset name, ModelConfig fields, or a path to a config JSON
    model_overrides: dict[str, Any] = field(default_factory=dict)
    seq_len: int = 256
    batch_size: int = 8
    nsp: bool = False  # mlm only: next-sentence pairs from consecutive parts of each document
    export_dir: str | None = None  # HF-format checkpoint at the end (default: <out_dir>/hf)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"PretrainConfig.objective={self.objective!r}: must be one of {sorted(OBJECTIVES)}")
        for name in ("seq_len", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 2:
                raise ConfigError(f"PretrainConfig.{name}={v!r}: must be an integer >= 2")
        self.train_config = TrainConfig.from_dict(
            {"shift_labels": self.objective in ("clm", "prefix"), **self.train}
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        if not isinstance(d, dict):
            raise ConfigError("pretrain config: expected a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"pretrain config: unknown keys {unknown}; known keys are {sorted(known)}")
        missing = [k for k in ("data", "tokenizer") if k not in d]
        if missing:
            raise ConfigError(f"pretrain config: missing required keys {missing}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PretrainConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                d = yaml.safe_load(text)
            else:
                d = json.loads(text)
        except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
            raise ConfigError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'} ({exc})") from exc
        base = path.parent
        cfg = cls.from_dict(d)
        for name in ("data", "tokenizer"):  # paths relative to the config file
            p = Path(getattr(cfg, name))
            if not p.is_absolute() and not p.exists() and (base / p).exists():
                setattr(cfg, name, str(base / p))
        return cfg


def resolve_model_config(spec: str | dict[str, Any], objective: str, vocab_size: int, seq_len: int,
                         overrides: dict[str, Any] | None = None) -> ModelConfig:
    """Preset name / dict / JSON path -> a ModelConfig that fits the tokenizer and objective."""
    overrides = dict(overrides or {})
    if isinstance(spec, dict):
        fields = {**spec, **overrides}
    elif spec in PRESETS:
        fields = {**PRESETS[spec], **overrides}
    elif Path(str(spec)).is_file():
        fields = {**json.loads(Path(spec).read_text(encoding="utf-8")), **overrides}
    else:
        raise ConfigError(f"model {spec!r} is neither a preset ({sorted(PRESETS)}) nor a config file")
    fields["vocab_size"] = vocab_size
    fields.setdefault("max_seq_len", max(seq_len, 512))
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        if fields.get(key) is not None and fields[key] >= vocab_size:
            fields[key] = None
    cfg = ModelConfig.from_dict(fields)
    want = OBJECTIVES[objective]
    if cfg.arch != want:
        raise ConfigError(f"objective {objective!r} trains a {want} model, but the model config is arch={cfg.arch!r}")
    if seq_len > cfg.max_seq_len and cfg.position in ("learned", "sinusoidal"):
        raise ConfigError(
            f"seq_len={seq_len} is longer than the model's {cfg.max_seq_len} positions "
            f"({cfg.position} position embeddings); lower seq_len or raise max_seq_len"
        )
    return cfg


def _special_id(tok, *names: str) -> int | None:
    for n in names:
        idx = tok.token_to_id(n)
        if idx is not None:
            return idx
    return None


def build_pretraining_data(cfg: PretrainConfig, tok, model_config: ModelConfig):
    """(train_loader, eval_loader, model_config) for the objective; may extend the vocabulary
    (T5 sentinels / pad) when the tokenizer lacks those tokens."""
    from lmkit.data.mlm import MLMCollator, build_nsp_examples
    from lmkit.data.packing import PackedDataset, PackedLoader
    from lmkit.data.prefix_lm import PrefixLMCollator
    from lmkit.data.shards import TokenShards
    from lmkit.data.span_corruption import SpanCorruptionCollator

    seed = cfg.train_config.seed
    splits = {s: TokenShards(cfg.data, s) for s in ("train", "val")}
    obj = cfg.objective
    loaders = []
    extra_vocab = 0
    collate = None
    for split, shards in splits.items():
        window = cfg.seq_len - 2 if obj == "mlm" else cfg.seq_len
        if obj == "mlm" and cfg.nsp:
            docs = []
            for d in shards.documents():
                d = d[:-1]  # drop the end-of-document id
                step = max(8, window // 4)
                docs.append([d[i:i + step] for i in range(0, len(d), step)])
            dataset: Any = build_nsp_examples(docs, cfg.seq_len, seed=seed)
        else:
            dataset = PackedDataset(shards, window)
        if obj == "clm":
            collate = None
        elif obj == "prefix":
            collate = PrefixLMCollator(pad_id=0, seed=seed)
        elif obj == "mlm":
            collate = MLMCollator.from_tokenizer(tok, max_length=cfg.seq_len, seed=seed)
        else:
            pad = _special_id(tok, "<pad>", "[PAD]")
            sentinels = [tok.token_to_id(f"<extra_id_{i}>") for i in range(N_SENTINELS)]
            if None in sentinels:  # new ids above the tokenizer's vocabulary
                base = tok.vocab_size
                sentinels = list(range(base + N_SENTINELS - 1, base - 1, -1))
                extra_vocab = N_SENTINELS
            if pad is None:
                pad = tok.vocab_size + extra_vocab
                extra_vocab += 1
            eos = _special_id(tok, "</s>", "<|endoftext|>", "[SEP]")
            if eos is None:
                raise ConfigError("span corruption needs an end-of-sequence token (</s> or <|endoftext|>) in the tokenizer")
            collate = SpanCorruptionCollator(eos_id=eos, pad_id=pad, sentinel_ids=sentinels, seed=seed)
        loaders.append(PackedLoader(dataset, cfg.batch_size, shuffle=split == "train", seed=seed,
                                    collate_fn=collate, drop_last=split == "train"))
    if extra_vocab:
        fields = model_config.to_dict()
        fields["vocab_size"] = model_config.vocab_size + extra_vocab
        if obj == "span":
            fields["pad_token_id"] = collate.pad_id
            fields["decoder_start_token_id"] = collate.pad_id
        model_config = ModelConfig.from_dict(fields)
    return loaders[0], loaders[1], model_config


def unigram_baseline_ppl(data_dir: str, vocab_size: int) -> float:
    """Perplexity on the validation tokens of an add-one unigram model of the training tokens:
    the score of a model that knows token frequencies but nothing of context."""
    from lmkit.data.shards import TokenShards

    counts = np.zeros(vocab_size, dtype=np.float64)
    for a in TokenShards(data_dir, "train")._arrays:
        counts += np.bincount(np.asarray(a, dtype=np.int64), minlength=vocab_size)[:vocab_size]
    logp = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    nll, n = 0.0, 0
    for a in TokenShards(data_dir, "val")._arrays:
        ids = np.asarray(a, dtype=np.int64)
        nll -= logp[ids].sum()
        n += ids.size
    return math.exp(nll / max(n, 1))


def run_pretrain(cfg: PretrainConfig, resume: bool | str = False) -> dict[str, Any]:
    """Train per `cfg`; returns a summary (final eval loss/perplexity, export directory)."""
    from lmkit.data.shards import load_tokenizer
    from lmkit.hub.pretrained import save_pretrained
    from lmkit.models.build import build_model
    from lmkit.train.trainer import Trainer, set_seed

    tok = load_tokenizer(cfg.tokenizer)
    mcfg = resolve_model_config(cfg.model, cfg.objective, tok.vocab_size, cfg.seq_len, cfg.model_overrides)
    train_loader, eval_loader, mcfg = build_pretraining_data(cfg, tok, mcfg)
    set_seed(cfg.train_config.seed)
    model = build_model(mcfg)
    trainer = Trainer(model, cfg.train_config, train_loader, eval_loader, resume=resume)
    trainer.train()
    result = trainer.evaluate()
    export = Path(cfg.export_dir or Path(cfg.train_config.out_dir) / "hf")
    if trainer.dist.is_main and mcfg.model_type:
        # with its tokenizer: tokenizer.json, tokenizer_config.json (chat template), eos / pad ids
        save_pretrained(trainer.raw_model, export, tokenizer=tok if hasattr(tok, "save_hf_json") else None)
        result["export_dir"] = str(export)
    result["parameters"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return result
