"""Load and save `transformers` `BlipForConditionalGeneration` / `BlipForImageTextRetrieval` checkpoints.

Like vision/clip_hub.py, the name table lives beside the model (hub/ sits above vision/ in
DESIGN.md's layering) and the file I/O is hub's own. A captioning checkpoint holds the ViT and
the text decoder, a retrieval one the ViT, the text encoder, the ITC projections and the ITM
head; `load_blip` builds a BLIP with the parts a folder holds (or several folders: their ViTs
must agree), `save_blip` writes one of the two architectures.

HF name                                                      lmkit name
vision_model.embeddings.class_embedding [1, 1, d]             vision.class_token [d]
vision_model.embeddings.position_embedding [1, P + 1, d]      vision.embed_positions.weight [P + 1, d]
vision_model.embeddings.patch_embedding                       vision.patch_embed
vision_model.encoder.layers.{i}.self_attn.qkv (fused q;k;v)   vision.layers.{i}.self_attn.{q,k,v}_proj
  ... self_attn.projection / layer_norm1 / layer_norm2 / mlp.fc1 / mlp.fc2
                                                              ... self_attn.o_proj / attn_norm / mlp_norm / mlp.up_proj / mlp.down_proj
vision_model.post_layernorm                                   vision.norm
text_encoder.X / text_decoder.bert.X with X =                 text_encoder.Y / text_decoder.Y with Y =
  embeddings.word_embeddings / position_embeddings / LayerNorm  embed_tokens / embed_positions / embed_norm
  encoder.layer.{i}.attention.self.{query,key,value}          layers.{i}.self_attn.{q,k,v}_proj
  encoder.layer.{i}.attention.output.dense / .LayerNorm       layers.{i}.self_attn.o_proj / attn_norm
  encoder.layer.{i}.crossattention.*  (the same)              layers.{i}.cross_attn.* / cross_attn_norm
  encoder.layer.{i}.intermediate.dense / output.dense / output.LayerNorm
                                                              layers.{i}.mlp.up_proj / mlp.down_proj / mlp_norm
text_decoder.cls.predictions.transform.dense / .LayerNorm     text_decoder.lm_head.dense / .norm
text_decoder.cls.predictions.bias (decoder.weight is tied to the word embeddings, decoder.bias to bias)
                                                              text_decoder.lm_head.bias
vision_proj, text_proj, itm_head                              the same
(config.json) logit_scale_init_value                          logit_scale (HF's retrieval model has no ITC scale)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub.hf_config import read_json_object
from lmkit.hub.name_map import NameMap
from lmkit.hub.safetensors_io import WEIGHT_PATTERNS, read_state_dict, staged_directory, write_weights
from lmkit.vision.blip import BLIP, PARTS, BLIPConfig, blip_vision_config
from lmkit.vision.blip_text import BLIPTextConfig
from lmkit.vision.clip_hub import ACTIVATIONS, ACTIVATIONS_TO_HF

ARCHITECTURES = {"captioning": "BlipForConditionalGeneration", "retrieval": "BlipForImageTextRetrieval"}

_VISION_LAYER = [("self_attn.q_proj", "self_attn.qkv_q"), ("self_attn.k_proj", "self_attn.qkv_k"),
                 ("self_attn.v_proj", "self_attn.qkv_v"), ("self_attn.o_proj", "self_attn.projection"),
                 ("attn_norm", "layer_norm1"), ("mlp_norm", "layer_norm2"), ("mlp.up_proj", "mlp.fc1"),
                 ("mlp.down_proj", "mlp.fc2")]
_TEXT_LAYER = [("self_attn.q_proj", "attention.self.query"), ("self_attn.k_proj", "attention.self.key"),
               ("self_attn.v_proj", "attention.self.value"), ("self_attn.o_proj", "attention.output.dense"),
               ("attn_norm", "attention.output.LayerNorm"),
               ("cross_attn.q_proj", "crossattention.self.query"), ("cross_attn.k_proj", "crossattention.self.key"),
               ("cross_attn.v_proj", "crossattention.self.value"),
               ("cross_attn.o_proj", "crossattention.output.dense"),
               ("cross_attn_norm", "crossattention.output.LayerNorm"),
               ("mlp.up_proj", "intermediate.dense"), ("mlp.down_proj", "output.dense"), ("mlp_norm", "output.LayerNorm")]
_TEXT_TOP = [("embed_tokens.weight", "embeddings.word_embeddings.weight"),
             ("embed_positions.weight", "embeddings.position_embeddings.weight"),
             ("embed_norm.weight", "embeddings.LayerNorm.weight"), ("embed_norm.bias", "embeddings.LayerNorm.bias")]


def _wb(ours: str, theirs: str) -> list[tuple[str, str]]:
    return [(f"{ours}.weight", f"{theirs}.weight"), (f"{ours}.bias", f"{theirs}.bias")]


def _pairs() -> list[tuple[str, str]]:
    pairs = [("vision.class_token", "vision_model.embeddings.class_embedding"),
             ("vision.embed_positions.weight", "vision_model.embeddings.position_embedding"),
             *_wb("vision.patch_embed", "vision_model.embeddings.patch_embedding"),
             *_wb("vision.norm", "vision_model.post_layernorm")]
    for ours, theirs in _VISION_LAYER:
        pairs += _wb(f"vision.layers.{{i}}.{ours}", f"vision_model.encoder.layers.{{i}}.{theirs}")
    for ours, theirs in (("text_encoder", "text_encoder"), ("text_decoder", "text_decoder.bert")):
        pairs += [(f"{ours}.{a}", f"{theirs}.{b}") for a, b in _TEXT_TOP]
        for a, b in _TEXT_LAYER:
            pairs += _wb(f"{ours}.layers.{{i}}.{a}", f"{theirs}.encoder.layer.{{i}}.{b}")
    pairs += [*_wb("text_decoder.lm_head.dense", "text_decoder.cls.predictions.transform.dense"),
              *_wb("text_decoder.lm_head.norm", "text_decoder.cls.predictions.transform.LayerNorm"),
              ("text_decoder.lm_head.bias", "text_decoder.cls.predictions.bias")]
    for name in ("vision_proj", "text_proj", "itm_head"):
        pairs += _wb(name, name)
    return pairs


BLIP_NAMES = NameMap(_pairs())
# buffers, the tied LM decoder (= word embeddings, = cls.predictions.bias), poolers HF's BLIP never uses
_DROP = (r".*position_ids", r"text_decoder\.cls\.predictions\.decoder\.(weight|bias)", r"text_encoder\.pooler\..*")


def _split_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF's fused vision qkv [3d, ...] -> three tensors under the virtual names qkv_q / qkv_k / qkv_v."""
    out = {}
    for k, v in state.items():
        if ".self_attn.qkv." in k and k.startswith("vision_model."):
            for part, t in zip("qkv", v.chunk(3, dim=0)):
                out[k.replace(".qkv.", f".qkv_{part}.")] = t.contiguous()
        else:
            out[k] = v
    return out


def _fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if ".self_attn.qkv_q." in k:
            out[k.replace(".qkv_q.", ".qkv.")] = torch.cat(
                [v, state[k.replace("qkv_q", "qkv_k")], state[k.replace("qkv_q", "qkv_v")]], dim=0)
        elif ".self_attn.qkv_k." not in k and ".self_attn.qkv_v." not in k:
            out[k] = v
    return out


def _activation(hf: dict, where: str, default: str = "gelu") -> str:
    act = hf.get("hidden_act", default)
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json (blip {where}): hidden_act={act!r} is not supported ({sorted(ACTIVATIONS)})")
    return ACTIVATIONS[act]


def config_from_hf(hf: dict, parts: list[str]) -> BLIPConfig:
    """A transformers BlipConfig dict -> BLIPConfig (missing keys take transformers' defaults)."""
    if hf.get("model_type") != "blip":
        raise ConfigError(f"config.json: model_type={hf.get('model_type')!r}, expected 'blip'")
    t, v = hf.get("text_config") or {}, hf.get("vision_config") or {}
    try:
        vision = blip_vision_config(
            image_size=v.get("image_size", 384), patch_size=v.get("patch_size", 16), num_channels=3,
            d_model=v.get("hidden_size", 768), n_layers=v.get("num_hidden_layers", 12),
            n_heads=v.get("num_attention_heads", 12), d_ff=v.get("intermediate_size", 3072),
            activation=_activation(v, "vision_config"), norm_eps=v.get("layer_norm_eps", 1e-5),
        )
        eos = t.get("eos_token_id", 2)
        text = BLIPTextConfig(
            vocab_size=t.get("vocab_size", 30524), max_seq_len=t.get("max_position_embeddings", 512),
            d_model=t.get("hidden_size", 768), n_layers=t.get("num_hidden_layers", 12),
            n_heads=t.get("num_attention_heads", 8), d_ff=t.get("intermediate_size", 3072),
            encoder_width=vision.d_model, activation=_activation(t, "text_config"),
            norm_eps=t.get("layer_norm_eps", 1e-12), pad_token_id=t.get("pad_token_id", 0),
            bos_token_id=t.get("bos_token_id", 30522), sep_token_id=t.get("sep_token_id", 102),
            eos_token_id=eos[0] if isinstance(eos, list) else eos, label_smoothing=t.get("label_smoothing", 0.0),
        )
        return BLIPConfig(vision=vision, text=text, embed_dim=hf.get("image_text_hidden_size", 256),
                          logit_scale_init=hf.get("logit_scale_init_value", 2.6592), parts=parts)
    except ConfigError as exc:
        raise ConfigError(f"config.json (blip) contradicts itself: {exc}") from exc


def config_to_hf(cfg: BLIPConfig, part: str, logit_scale: float | None = None) -> dict[str, Any]:
    """BLIPConfig -> a config.json transformers' Blip*.from_pretrained reads (`part`: which architecture)."""
    v, t = cfg.vision, cfg.text
    if (v.pre_norm, v.patch_bias, v.pooling, v.num_channels) != (False, True, "cls", 3):
        raise ConfigError("this ViT is not BLIP-shaped (needs pre_norm=False, patch_bias=True, pooling='cls', "
                          "3 channels); transformers' BLIP cannot hold it")
    text = dict(vocab_size=t.vocab_size, max_position_embeddings=t.max_seq_len, hidden_size=t.d_model,
                encoder_hidden_size=v.d_model, num_hidden_layers=t.n_layers, num_attention_heads=t.n_heads,
                intermediate_size=t.d_ff, hidden_act=ACTIVATIONS_TO_HF[t.activation], layer_norm_eps=t.norm_eps,
                pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id, sep_token_id=t.sep_token_id,
                eos_token_id=t.eos_token_id, label_smoothing=t.label_smoothing, is_decoder=True,
                tie_word_embeddings=True, model_type="blip_text_model")
    vision = dict(image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.d_model,
                  num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads, intermediate_size=v.d_ff,
                  hidden_act=ACTIVATIONS_TO_HF[v.activation], layer_norm_eps=v.norm_eps,
                  model_type="blip_vision_model")
    scale = cfg.logit_scale_init if logit_scale is None else logit_scale
    return {"architectures": [ARCHITECTURES[part]], "model_type": "blip", "image_text_hidden_size": cfg.embed_dim,
            "logit_scale_init_value": scale, "text_config": text, "vision_config": vision}


def _parts_of(state: dict[str, torch.Tensor], directory: Path) -> list[str]:
    parts = []
    if any(k.startswith("itm_head.") for k in state):
        parts.append("retrieval")
    if any(k.startswith("text_decoder.") for k in state):
        parts.append("captioning")
    if not parts or (any(k.startswith("text_encoder.") for k in state) and "retrieval" not in parts):
        raise CheckpointError(f"{directory}: not a BlipForConditionalGeneration or BlipForImageTextRetrieval "
                              "checkpoint (BlipForQuestionAnswering and BlipModel are not supported)")
    return parts


def _read(directory: Path) -> tuple[BLIPConfig, dict[str, torch.Tensor]]:
    hf = read_json_object(directory / "config.json", f"{directory}: no config.json (not a Hugging Face checkpoint)")
    raw = _split_qkv(read_state_dict(directory))
    state = BLIP_NAMES.rename_to_ours(raw, drop=_DROP)
    for name in ("vision.class_token", "vision.embed_positions.weight"):
        if name in state:  # HF keeps the leading batch dimensions of these parameters
            state[name] = state[name].reshape(-1) if name == "vision.class_token" else state[name].flatten(0, -2)
    cfg = config_from_hf(hf, _parts_of(raw, directory))
    if "retrieval" in cfg.parts:
        state["logit_scale"] = torch.tensor(float(cfg.logit_scale_init))
    return cfg, state


def load_blip(*directories: str | os.PathLike) -> BLIP:
    """One or more BLIP folders (a captioning and a retrieval checkpoint of the same ViT) -> one BLIP,
    weights loaded strictly."""
    if not directories:
        raise ValueError("load_blip needs at least one checkpoint folder")
    read = [_read(Path(d)) for d in directories]
    cfg, state = read[0]
    for (other, more), d in zip(read[1:], directories[1:]):
        if other.vision != cfg.vision or other.text != cfg.text:
            raise CheckpointError(f"{d}: its config differs from {directories[0]}'s; the folders are not one BLIP")
        for k, v in more.items():
            if k in state and not torch.equal(state[k], v):
                raise CheckpointError(f"{d}: {k} differs from {directories[0]}'s; the folders are not one BLIP")
            state.setdefault(k, v)
        cfg.parts = [p for p in PARTS if p in cfg.parts or p in other.parts]
    model = BLIP(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "text_decoder.lm_head.decoder.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise CheckpointError(f"{', '.join(map(str, directories))}: BLIP weights do not match the config: "
                              f"missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model


def save_blip(model: BLIP, directory: str | os.PathLike, part: str) -> None:
    """Write one part of `model` as a transformers folder: part "captioning" -> BlipForConditionalGeneration,
    "retrieval" -> BlipForImageTextRetrieval (atomic: the folder is replaced only when complete)."""
    if part not in PARTS:
        raise ValueError(f"part={part!r}: choose one of {PARTS}")
    model._needs(part)
    if part == "captioning":  # the decoder's tied LM weight is the word embedding, written once
        skip = ("text_encoder.", "vision_proj.", "text_proj.", "itm_head.", "logit_scale",
                "text_decoder.lm_head.decoder.")
    else:  # HF's retrieval model has no ITC scale parameter: it goes into config.json
        skip = ("text_decoder.", "logit_scale")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}
    state["vision.class_token"] = state["vision.class_token"].reshape(1, 1, -1)
    state["vision.embed_positions.weight"] = state["vision.embed_positions.weight"][None]
    state = _fuse_qkv(BLIP_NAMES.rename_to_theirs(state, "blip"))
    scale = float(model.logit_scale.detach()) if part == "retrieval" else None
    hf = config_to_hf(model.config, part, scale)
    with staged_directory(directory, replaces=(*WEIGHT_PATTERNS, "config.json")) as tmp:
        write_weights(state, tmp)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
