"""Load and save Hugging Face `transformers` `LlavaForConditionalGeneration` checkpoints.

A LLaVA folder is config.json (model_type "llava": vision_config, text_config, image_token_index,
vision_feature_layer, vision_feature_select_strategy, projector_hidden_act) plus safetensors
weights. The parts reuse the tables that already exist: the vision tower is a CLIP vision model
(vision/clip_hub.py's names and config translation), the language model any decoder family
hub/ reads (its arch module's config and names), the projector maps 1:1.

Checkpoint name                                     lmkit name
vision_tower.[vision_model.]X  (model.vision_tower.X)  vision.*      (CLIP_NAMES of vision_model.X)
multi_modal_projector.linear_{1,2}.*                 projector.linear_{1,2}.*
language_model.model.X, language_model.lm_head.*     language.*    (the text arch's names of model.X, lm_head)
  (transformers >= 5 in memory: model.language_model.X, lm_head.*)

Written in the layout transformers 5 itself writes (vision_tower.X, language_model.model.X,
language_model.lm_head.weight); every layout above is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub.hf_config import read_json_object
from lmkit.hub.pretrained import arch_module, load_state_dict_strict
from lmkit.hub.safetensors_io import WEIGHT_PATTERNS, read_state_dict, staged_directory, write_weights
from lmkit.vision.clip import CLIPConfig
from lmkit.vision.clip_hub import CLIP_NAMES
from lmkit.vision.clip_hub import config_from_hf as clip_config_from_hf
from lmkit.vision.clip_hub import config_to_hf as clip_config_to_hf
from lmkit.vision.vlm import VisionLanguageModel, VLMConfig

PROJECTOR_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                         "relu": "relu", "silu": "silu"}
PROJECTOR_ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
_LEGACY_PREFIXES = (("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
                    ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                    ("vision_tower.vision_model.", "vision_tower."))


def config_from_hf(hf: dict) -> VLMConfig:
    """A transformers LlavaConfig dict -> VLMConfig."""
    if hf.get("model_type") != "llava":
        raise ConfigError(f"config.json: model_type={hf.get('model_type')!r}, expected 'llava' "
                          "(a LlavaForConditionalGeneration)")
    v, t = hf.get("vision_config") or {}, hf.get("text_config") or {}
    if v.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ConfigError(f"config.json (llava): vision_config.model_type={v.get('model_type')!r}; lmkit reads "
                          "CLIP vision towers ('clip_vision_model')")
    layer = hf.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ConfigError(f"config.json (llava): vision_feature_layer={layer!r}; lmkit reads one layer (an integer), "
                          "not a list of layers")
    act = hf.get("projector_hidden_act", "gelu")
    if act not in PROJECTOR_ACTIVATIONS:
        raise ConfigError(f"config.json (llava): projector_hidden_act={act!r} is not supported "
                          f"({sorted(PROJECTOR_ACTIVATIONS)})")
    vision = clip_config_from_hf({"model_type": "clip", "vision_config": v}).vision
    text = arch_module(t.get("model_type")).config_from_hf(t)
    try:
        return VLMConfig(vision=vision, text=text, image_token_id=hf.get("image_token_index", 32000),
                         vision_feature_layer=layer, feature_select=hf.get("vision_feature_select_strategy", "default"),
                         projector_activation=PROJECTOR_ACTIVATIONS[act],
                         projector_bias=hf.get("multimodal_projector_bias", True))
    except ConfigError as exc:
        raise ConfigError(f"config.json (llava) contradicts itself: {exc}") from exc


def config_to_hf(cfg: VLMConfig) -> dict[str, Any]:
    """VLMConfig -> a config.json transformers' LlavaForConditionalGeneration.from_pretrained reads."""
    vision = clip_config_to_hf(CLIPConfig(vision=cfg.vision))["vision_config"]
    vision.pop("projection_dim", None)
    text = arch_module(cfg.text.model_type).config_to_hf(cfg.text)
    text.pop("architectures", None)
    return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "image_token_index": cfg.image_token_id, "image_seq_length": cfg.n_image_tokens,
            "vision_feature_layer": cfg.vision_feature_layer, "vision_feature_select_strategy": cfg.feature_select,
            "projector_hidden_act": PROJECTOR_ACTIVATIONS_TO_HF[cfg.projector_activation],
            "multimodal_projector_bias": cfg.projector_bias, "tie_word_embeddings": cfg.text.tie_embeddings,
            "vision_config": vision, "text_config": text}


def _canonical_name(name: str) -> str:
    for old, new in _LEGACY_PREFIXES:
        if name.startswith(old):
            name = new + name[len(old):]
    return name


def state_from_hf(sd: dict[str, torch.Tensor], cfg: VLMConfig) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (any of the layouts above) -> our state dict."""
    vision, text, out = {}, {}, {}
    for name, t in sd.items():
        name = _canonical_name(name)
        if name.startswith("vision_tower."):
            vision["vision_model." + name[len("vision_tower."):]] = t
        elif name.startswith("language_model."):
            text[name[len("language_model."):]] = t
        elif name.startswith("multi_modal_projector."):
            out["projector." + name[len("multi_modal_projector."):]] = t
        elif not name.endswith("position_ids"):
            out[name] = t  # unknown: a strict load names it
    for name, t in CLIP_NAMES.rename_to_ours(vision, drop=(r".*position_ids",)).items():
        out[name] = t  # vision.* already
    for name, t in arch_module(cfg.text.model_type).state_from_hf(text, cfg.text).items():
        out["language." + name] = t
    return out


def state_to_hf(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    vision = {k: v for k, v in state.items() if k.startswith("vision.")}
    text = {k[len("language."):]: v for k, v in state.items() if k.startswith("language.")}
    out = {"vision_tower." + k[len("vision_model."):]: v
           for k, v in CLIP_NAMES.rename_to_theirs(vision, "llava vision tower").items()}
    out.update({"multi_modal_projector." + k[len("projector."):]: v for k, v in state.items()
                if k.startswith("projector.")})
    cfg = model.config.text
    out.update({"language_model." + k: v for k, v in arch_module(cfg.model_type).state_to_hf(text, cfg).items()})
    return out


def load_vlm(directory: str | os.PathLike) -> VisionLanguageModel:
    """A LLaVA folder (config.json + model.safetensors or shards) -> our VisionLanguageModel, loaded strictly
    (in eval mode)."""
    directory = Path(directory)
    hf = read_json_object(directory / "config.json", f"{directory}: no config.json (not a Hugging Face checkpoint)")
    cfg = config_from_hf(hf)
    model = VisionLanguageModel(cfg)
    state = state_from_hf(read_state_dict(directory), cfg)
    try:
        load_state_dict_strict(model, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    return model.eval()


def save_vlm(model: VisionLanguageModel, directory: str | os.PathLike) -> None:
    """Write `model` as a transformers LlavaForConditionalGeneration folder (atomic: the folder's
    weights and config are replaced only when complete; other files in it are kept)."""
    if not model.config.text.model_type:
        raise CheckpointError("save_vlm needs the language model's config.model_type (e.g. 'llama') to write it")
    hf = config_to_hf(model.config)
    state = state_to_hf(model)
    with staged_directory(directory, replaces=(*WEIGHT_PATTERNS, "config.json")) as tmp:
        write_weights(state, tmp)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def is_llava_dir(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a LLaVA checkpoint (config.json with model_type "llava")."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") == "llava"
    except (OSError, ValueError, AttributeError):
        return False


TOKENIZER_FILE = "tokenizer.lmkit.json"  # lmkit's word-level tokenizer beside the LLaVA weights


def save_vlm_dir(model: VisionLanguageModel, tokenizer, directory: str | os.PathLike) -> None:
    """The LLaVA folder plus the lmkit tokenizer (`TOKENIZER_FILE`): what `lmkit vlm chat` and `lmkit serve` load."""
    save_vlm(model, directory)
    tokenizer.save(Path(directory) / TOKENIZER_FILE)


def load_vlm_dir(directory: str | os.PathLike):
    """(VisionLanguageModel, tokenizer) from a folder `save_vlm_dir` wrote."""
    from lmkit.tokenizers.loading import load_tokenizer

    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {TOKENIZER_FILE} (the tokenizer `lmkit vlm train` writes beside "
                              "the LLaVA weights)")
    return load_vlm(directory), load_tokenizer(path)
