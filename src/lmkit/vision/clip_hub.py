"""Load and save Hugging Face `transformers` `CLIPModel` checkpoints (config.json + safetensors).

The name table and config translation live here rather than in hub/ because hub/ sits above
vision/ in DESIGN.md's layering (hub cannot import the CLIP module); the file I/O is hub's own
(`safetensors_io`, `hf_config`, `name_map`).

HF name                                               lmkit name
text_model.embeddings.token_embedding                  text.embed_tokens
text_model.embeddings.position_embedding               text.embed_positions
{text,vision}_model.encoder.layers.{i}.self_attn.{q,k,v}_proj / out_proj
                                                       {text,vision}.layers.{i}.self_attn.{q,k,v,o}_proj
  ... layer_norm1 / layer_norm2 / mlp.fc1 / mlp.fc2    ... attn_norm / mlp_norm / mlp.up_proj / mlp.down_proj
text_model.final_layer_norm                            text.norm
vision_model.embeddings.class_embedding                vision.class_token
vision_model.embeddings.patch_embedding                vision.patch_embed
vision_model.embeddings.position_embedding             vision.embed_positions
vision_model.pre_layrnorm (sic) / post_layernorm       vision.pre_norm / vision.norm
visual_projection, text_projection, logit_scale        the same
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub.hf_config import read_json_object
from lmkit.hub.name_map import NameMap
from lmkit.hub.safetensors_io import WEIGHT_PATTERNS, read_state_dict, staged_directory, write_weights
from lmkit.vision.clip import CLIP, CLIPConfig, clip_vision_config
from lmkit.vision.clip_text import CLIPTextConfig

ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu"}
ACTIVATIONS_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh",
                     "relu": "relu", "silu": "silu"}

_LAYER = [("self_attn.q_proj", "self_attn.q_proj"), ("self_attn.k_proj", "self_attn.k_proj"),
          ("self_attn.v_proj", "self_attn.v_proj"), ("self_attn.o_proj", "self_attn.out_proj"),
          ("attn_norm", "layer_norm1"), ("mlp_norm", "layer_norm2"), ("mlp.up_proj", "mlp.fc1"),
          ("mlp.down_proj", "mlp.fc2")]


def _pairs() -> list[tuple[str, str]]:
    pairs = [
        ("text.embed_tokens.weight", "text_model.embeddings.token_embedding.weight"),
        ("text.embed_positions.weight", "text_model.embeddings.position_embedding.weight"),
        ("vision.class_token", "vision_model.embeddings.class_embedding"),
        ("vision.patch_embed.weight", "vision_model.embeddings.patch_embedding.weight"),
        ("vision.embed_positions.weight", "vision_model.embeddings.position_embedding.weight"),
        ("visual_projection.weight", "visual_projection.weight"),
        ("text_projection.weight", "text_projection.weight"),
        ("logit_scale", "logit_scale"),
    ]
    for tower, hf in (("text", "text_model"), ("vision", "vision_model")):
        for ours, theirs in _LAYER:
            for p in ("weight", "bias"):
                pairs.append((f"{tower}.layers.{{i}}.{ours}.{p}", f"{hf}.encoder.layers.{{i}}.{theirs}.{p}"))
    for ours, theirs in (("text.norm", "text_model.final_layer_norm"), ("vision.pre_norm", "vision_model.pre_layrnorm"),
                         ("vision.norm", "vision_model.post_layernorm")):
        pairs += [(f"{ours}.weight", f"{theirs}.weight"), (f"{ours}.bias", f"{theirs}.bias")]
    return pairs


CLIP_NAMES = NameMap(_pairs())
_DROP = (r".*position_ids",)  # buffers older transformers versions saved


def _activation(hf: dict, where: str) -> str:
    act = hf.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json (clip {where}): hidden_act={act!r} is not supported ({sorted(ACTIVATIONS)})")
    return ACTIVATIONS[act]


def config_from_hf(hf: dict) -> CLIPConfig:
    """A transformers CLIPConfig dict -> CLIPConfig (missing keys take transformers' defaults)."""
    if hf.get("model_type") != "clip":
        raise ConfigError(f"config.json: model_type={hf.get('model_type')!r}, expected 'clip' (a CLIPModel)")
    t, v = hf.get("text_config") or {}, hf.get("vision_config") or {}
    try:
        text = CLIPTextConfig(
            vocab_size=t.get("vocab_size", 49408), max_seq_len=t.get("max_position_embeddings", 77),
            d_model=t.get("hidden_size", 512), n_layers=t.get("num_hidden_layers", 12),
            n_heads=t.get("num_attention_heads", 8), d_ff=t.get("intermediate_size", 2048),
            activation=_activation(t, "text_config"), norm_eps=t.get("layer_norm_eps", 1e-5),
            eos_token_id=t.get("eos_token_id", 49407), pad_token_id=t.get("pad_token_id", 1),
            bos_token_id=t.get("bos_token_id", 49406),
        )
        vision = clip_vision_config(
            image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32),
            num_channels=v.get("num_channels", 3), d_model=v.get("hidden_size", 768),
            n_layers=v.get("num_hidden_layers", 12), n_heads=v.get("num_attention_heads", 12),
            d_ff=v.get("intermediate_size", 3072), activation=_activation(v, "vision_config"),
            norm_eps=v.get("layer_norm_eps", 1e-5),
        )
        return CLIPConfig(vision=vision, text=text, projection_dim=hf.get("projection_dim", 512),
                          logit_scale_init=hf.get("logit_scale_init_value", 2.6592))
    except ConfigError as exc:
        raise ConfigError(f"config.json (clip) contradicts itself: {exc}") from exc


def config_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    """CLIPConfig -> a config.json transformers' CLIPModel.from_pretrained reads."""
    v, t = cfg.vision, cfg.text
    if (v.pre_norm, v.patch_bias, v.pooling) != (True, False, "cls"):
        raise ConfigError("this ViT is not CLIP-shaped (needs pre_norm=True, patch_bias=False, pooling='cls'); "
                          "transformers' CLIPModel cannot hold it")
    text = dict(vocab_size=t.vocab_size, max_position_embeddings=t.max_seq_len, hidden_size=t.d_model,
                num_hidden_layers=t.n_layers, num_attention_heads=t.n_heads, intermediate_size=t.d_ff,
                hidden_act=ACTIVATIONS_TO_HF[t.activation], layer_norm_eps=t.norm_eps,
                eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id,
                projection_dim=cfg.projection_dim, model_type="clip_text_model")
    vision = dict(image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels,
                  hidden_size=v.d_model, num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads,
                  intermediate_size=v.d_ff, hidden_act=ACTIVATIONS_TO_HF[v.activation], layer_norm_eps=v.norm_eps,
                  projection_dim=cfg.projection_dim, model_type="clip_vision_model")
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.projection_dim,
            "logit_scale_init_value": cfg.logit_scale_init, "text_config": text, "vision_config": vision}


def load_clip(directory: str | os.PathLike) -> CLIP:
    """A CLIPModel folder (config.json + model.safetensors or shards) -> our CLIP, weights loaded strictly."""
    directory = Path(directory)
    hf = read_json_object(directory / "config.json", f"{directory}: no config.json (not a Hugging Face checkpoint)")
    model = CLIP(config_from_hf(hf))
    state = CLIP_NAMES.rename_to_ours(read_state_dict(directory), drop=_DROP)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{directory}: CLIP weights do not match the config: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    return model


def save_clip(model: CLIP, directory: str | os.PathLike) -> None:
    """Write `model` as a transformers CLIPModel folder (atomic: the folder is replaced only when complete)."""
    hf = config_to_hf(model.config)
    state = CLIP_NAMES.rename_to_theirs({k: v.detach().contiguous() for k, v in model.state_dict().items()}, "clip")
    with staged_directory(directory, replaces=(*WEIGHT_PATTERNS, "config.json")) as tmp:
        write_weights(state, tmp)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
