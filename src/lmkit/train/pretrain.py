"""`lmkit pretrain`: one config file -> tokenized shards -> a model trained with the right
objective -> a Hugging Face checkpoint.

Objectives and the models they train:
  clm     causal LM on packed windows                  (decoder: GPT-2, Llama, ...)
  prefix  prefix LM: bidirectional prefix, loss on the rest (decoder with a prefix mask)
  mlm     BERT masked LM (15%, 80/10/10), optional NSP  (encoder)
  span    T5 span corruption with sentinel tokens       (encoder-decoder)

Continued pretraining: ``init_from`` (a Hugging Face checkpoint directory) starts from its
weights and architecture instead of `model`; ``continual`` adds replay, EWC / L2-SP and the
general-perplexity measurement of forgetting (train/continual.py).
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
    init_from: str | None = None  # continued pretraining: a Hugging Face checkpoint directory
    continual: dict[str, Any] = field(default_factory=dict)  # ContinualConfig fields (train/continual.py)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"PretrainConfig.objective={self.objective!r}: must be one of {sorted(OBJECTIVES)}")
        for name in ("seq_len", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 2:
                raise ConfigError(f"PretrainConfig.{name}={v!r}: must be an integer >= 2")
        train = {"shift_labels": self.objective in ("clm", "prefix"), **self.train}
        if self.init_from and "warmup_steps" not in self.train:  # re-warmup: the optimizer starts fresh
            train["warmup_steps"] = max(1, int(self.train.get("max_steps", 1000)) // 20)
        self.train_config = TrainConfig.from_dict(train)
        from lmkit.train.continual import ContinualConfig

        self.continual_config = ContinualConfig.from_dict(dict(self.continual))
        if self.continual and not self.init_from:
            raise ConfigError("PretrainConfig.continual needs init_from (the checkpoint to continue from)")
        if self.init_from and self.objective not in ("clm", "prefix"):
            raise ConfigError(f"init_from continues decoder pretraining (clm or prefix), not {self.objective!r}")
        if self.continual_config.new_rows_only_from is not None and self.train_config.weight_decay > 0:
            raise ConfigError("continual.new_rows_only_from needs train.weight_decay=0 (AdamW's decay would move "
                              "the frozen rows of the LM head)")

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
        for name in ("data", "tokenizer", "init_from"):  # paths relative to the config file
            if getattr(cfg, name) is None:
                continue
            p = Path(getattr(cfg, name))
            if not p.is_absolute() and not p.exists() and (base / p).exists():
                setattr(cfg, name, str(base / p))
        general = cfg.continual.get("general_data")
        if general and not Path(general).is_absolute() and not Path(general).exists() and (base / general).exists():
            cfg.continual["general_data"] = str(base / general)
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
    from lmkit.models.build import build_model
    from lmkit.train.trainer import Trainer, set_seed

    tok = load_tokenizer(cfg.tokenizer)
    if cfg.init_from:
        return run_continued_pretraining(cfg, tok, resume)
    mcfg = resolve_model_config(cfg.model, cfg.objective, tok.vocab_size, cfg.seq_len, cfg.model_overrides)
    train_loader, eval_loader, mcfg = build_pretraining_data(cfg, tok, mcfg)
    set_seed(cfg.train_config.seed)
    model = build_model(mcfg)
    trainer = Trainer(model, cfg.train_config, train_loader, eval_loader, resume=resume)
    trainer.train()
    return _finish(cfg, trainer, tok, trainer.evaluate())


def run_continued_pretraining(cfg: PretrainConfig, tok, resume: bool | str = False) -> dict[str, Any]:
    """Continue training the checkpoint `cfg.init_from` on `cfg.data`, with the remedies of
    `cfg.continual`; the result adds the general perplexity before and after."""
    from lmkit.hub.pretrained import load_pretrained
    from lmkit.train.continual import build_penalty, evaluate_on, replay_mixture
    from lmkit.train.trainer import Trainer, set_seed

    cc = cfg.continual_config
    model = load_pretrained(cfg.init_from, dtype="fp32")
    mcfg = model.config
    if mcfg.arch != "decoder":
        raise ConfigError(f"init_from {cfg.init_from}: continued {cfg.objective} pretraining needs a decoder model")
    if mcfg.vocab_size < tok.vocab_size:
        raise ConfigError(f"init_from {cfg.init_from} has {mcfg.vocab_size} embedding rows but the tokenizer "
                          f"{cfg.tokenizer} has {tok.vocab_size} tokens; expand the model's vocabulary first "
                          "(lmkit tokenizer expand)")
    train_loader, eval_loader, _ = build_pretraining_data(cfg, tok, mcfg)
    general_train = general_val = None
    if cc.general_data:
        general_train, general_val, _ = build_pretraining_data(dataclasses.replace(cfg, data=cc.general_data), tok, mcfg)
    set_seed(cfg.train_config.seed)
    train_data: Any = train_loader
    if cc.replay_ratio > 0:
        train_data = replay_mixture(train_loader, general_train, cc.replay_ratio, cfg.batch_size, cfg.train_config.seed)
    if cc.new_rows_only_from is not None:
        from lmkit.hub.expand_vocab import train_new_rows_only

        train_new_rows_only(model, cc.new_rows_only_from)
    model.train()
    penalty = build_penalty(cc, model, general_train)
    trainer = Trainer(model, cfg.train_config, train_data, eval_loader, resume=resume, penalty=penalty)
    before = evaluate_on(trainer, general_val) if general_val is not None else None
    domain_before = trainer.evaluate()
    trainer.train()
    result = trainer.evaluate()
    result["domain_ppl_before"] = domain_before["eval_ppl"]
    if general_val is not None:
        after = evaluate_on(trainer, general_val)
        result.update(general_ppl_before=before["eval_ppl"], general_ppl_after=after["eval_ppl"])
    return _finish(cfg, trainer, tok, result)


def _finish(cfg: PretrainConfig, trainer, tok, result: dict[str, Any]) -> dict[str, Any]:
    from lmkit.hub.pretrained import save_pretrained

    mcfg = trainer.raw_model.config
    export = Path(cfg.export_dir or Path(cfg.train_config.out_dir) / "hf")
    model = trainer.full_model()  # whole on rank 0 also after fsdp / tp / pp (collective)
    if trainer.dist.is_main and mcfg.model_type:
        model.requires_grad_(True)
        # with its tokenizer: tokenizer.json, tokenizer_config.json (chat template), eos / pad ids
        save_pretrained(model, export, tokenizer=tok if hasattr(tok, "save_hf_json") else None)
        result["export_dir"] = str(export)
    if model is not None:
        result["parameters"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return result
