"""Hugging Face checkpoints: config.json + safetensors in, the same out."""

from lmkit.hub.pretrained import load_pretrained, load_state_dict_strict, save_pretrained

__all__ = ["load_pretrained", "save_pretrained", "load_state_dict_strict"]
