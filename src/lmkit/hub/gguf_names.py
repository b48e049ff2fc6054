"""llama.cpp's tensor names for the Llama architecture, and the Q/K row permutation its
converter applies (see `hub/gguf.py` for the table and why the rows move).

Shared by the GGUF writer (`hub/gguf.py`) and reader (`hub/gguf_import.py`)."""

from __future__ import annotations

import torch

NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "attn_norm": "attn_norm", "mlp_norm": "ffn_norm",
}
_OURS = {v: k for k, v in NAMES.items()}


def permute(w: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """convert_hf_to_gguf.py's LlamaModel.permute: rotate-half rows -> interleaved-pair rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """The inverse of `permute`: llama.cpp's interleaved-pair rows -> rotate-half rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(name: str) -> str:
    """lmkit parameter name -> llama.cpp tensor name (KeyError for names GGUF has no place for)."""
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    if parts[0] == "layers":
        i, rest, suffix = parts[1], ".".join(parts[2:-1]), parts[-1]
        if rest in NAMES:
            return f"blk.{i}.{NAMES[rest]}.{suffix}"
    raise KeyError(name)




def lmkit_name(name: str) -> str:
    """llama.cpp tensor name -> lmkit parameter name (the inverse of `gguf_name`; KeyError if none)."""
    fixed = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _OURS:
        return f"layers.{parts[1]}.{_OURS[parts[2]]}.{parts[3]}"
    raise KeyError(name)
