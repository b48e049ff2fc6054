"""Export Llama-family models (llama, qwen2, mistral) and their byte-level BPE tokenizer to GGUF,
the single-file format of llama.cpp / Ollama, in F32, F16, Q8_0, Q4_0 or Q4_K_M.

GGUF = header + typed key/value metadata + tensor infos + aligned tensor data. Written with
the `gguf` package (extra `gguf`), imported lazily. Names follow llama.cpp:

  lmkit                                   GGUF
  embed_tokens.weight                     token_embd.weight
  layers.N.attn_norm.weight               blk.N.attn_norm.weight
  layers.N.self_attn.{q,k,v,o}_proj.*     blk.N.attn_{q,k,v,output}.*   (q, k permuted, see below)
  layers.N.mlp_norm.weight                blk.N.ffn_norm.weight
  layers.N.mlp.{gate,up,down}_proj.weight blk.N.ffn_{gate,up,down}.weight
  norm.weight                             output_norm.weight
  lm_head.weight                          output.weight   (omitted when tied: llama.cpp then
                                                           uses token_embd, as convert_hf_to_gguf does)
Metadata: general.architecture = "llama", general.name, general.file_type, llama.context_length,
llama.embedding_length, llama.block_count, llama.feed_forward_length, llama.attention.head_count,
llama.attention.head_count_kv, llama.rope.freq_base, llama.rope.dimension_count,
llama.attention.layer_norm_rms_epsilon, llama.vocab_size (+ rope scaling when set), and the
tokenizer: tokenizer.ggml.model = "gpt2" (byte-level BPE), .pre ("gpt-2" or "llama-bpe"), .tokens (byte-level unicode
strings as in tokenizer.json), .token_type (1 normal, 3 control = special, 4 user-defined =
added, 5 unused = padding rows beyond the tokenizer), .scores, .merges ("a b"), bos/eos/eot/pad ids and
tokenizer.chat_template.

Rotary layout. lmkit (like Hugging Face) rotates the two *halves* of each head
(rotate_half); llama.cpp's LLAMA graph rotates *adjacent pairs* (GPT-J/"normal" mode), as
Meta's original checkpoints did. convert_hf_to_gguf.py therefore permutes the rows of Wq
and Wk within each head: `permute` below is its function, applied with n_head for Q and
n_head_kv for K. `unpermute` is its inverse (used by the tests).

Tensor types (`tensor_type`, the choices `llama-quantize` makes for the same file type, so a
file equals what llama.cpp's own quantizer writes from the F32 export):
  f32 / f16   every 2-D weight in that type
  q8_0        Q8_0 (8.5 bits per weight)
  q4_0        Q4_0 (4.5 bits), the output matrix (or the tied embedding) Q6_K
  q4_k_m      Q4_K (4.5 bits) for most weights; Q6_K (6.56 bits) for the output matrix (or the
              tied embedding) and for attn_v and ffn_down in the layers llama.cpp's
              use_more_bits picks (the first and last eighth and every third in between)
1-D tensors (norms, biases) are always F32, as llama.cpp stores them. A matrix whose rows do
not split into whole blocks falls back as llama.cpp's does: Q4_K -> Q5_0, Q6_K -> Q8_0, and a
32-block type -> F16. The block formats themselves are in `hub/gguf_quants.py`.
The file is written to a temporary path and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmkit.atomic import atomic_path
from lmkit.errors import CheckpointError, require
from lmkit.hub.gguf_names import gguf_name, permute, unpermute  # noqa: F401  (unpermute: for readers)
from lmkit.hub.gguf_quants import BY_NAME, quantize

FILE_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")
# general.file_type (llama.cpp's llama_ftype) of each
FILE_TYPE_IDS = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}
_BASE_TYPE = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K"}
_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
LLAMA_TYPES = ("llama", "qwen2", "mistral")
def _check_model(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or cfg.arch != "decoder":
        raise CheckpointError("GGUF export needs an lmkit DecoderLM")
    problems = []
    if cfg.position != "rope":
        problems.append(f"position={cfg.position!r} (llama needs rope)")
    if cfg.norm != "rmsnorm" or cfg.norm_position != "pre":
        problems.append(f"norm={cfg.norm!r}/{cfg.norm_position} (llama needs pre-norm rmsnorm)")
    if not cfg.gated_ffn or cfg.activation != "silu":
        problems.append("the FFN must be SwiGLU (gated, silu)")
    if cfg.n_experts:
        problems.append("MoE experts (mixtral) are not exported")
    if cfg.ffn_bias or cfg.o_bias or cfg.lm_head_bias:
        problems.append("biases on the MLP / output projections")
    if cfg.rope_scaling not in (None, "linear"):
        problems.append(f"rope_scaling={cfg.rope_scaling!r}")
    if cfg.partial_rotary_factor != 1.0:
        problems.append(f"partial rotary (partial_rotary_factor={cfg.partial_rotary_factor})")
    if cfg.parallel_residual:
        problems.append("parallel residual")
    if cfg.sliding_window is not None:
        problems.append("sliding-window attention")
    problems += cfg.gemma_settings()
    if problems:
        raise CheckpointError(
            f"cannot export this model (model_type={cfg.model_type or 'lmkit'}) as GGUF llama: "
            + "; ".join(problems) + ". Supported: Llama-family decoders (llama, qwen2, mistral without window)."
        )
    from lmkit.quant.linear import QuantLinearBase

    if any(isinstance(m, QuantLinearBase) for m in model.modules()):
        raise CheckpointError("GGUF export needs the floating-point model, not an lmkit-quantized one "
                              "(GGUF quantizes itself: --type q8_0, q4_0 or q4_k_m)")


def _token_types(tok, n: int) -> tuple[list[str], list[float], list[int]]:
    gguf = require("gguf", "gguf")
    tt = gguf.TokenType
    added = {t.id: t for t in getattr(tok, "added_tokens", [])}
    tokens, scores, types = [], [], []
    for i in range(n):
        if i < tok.vocab_size:
            s = tok.id_to_token(i)
            if s is None:
                tokens.append(f"[PAD{i}]")
                scores.append(0.0)
                types.append(int(tt.UNUSED))
                continue
            tokens.append(s)
            if i in added:
                types.append(int(tt.CONTROL if added[i].special else tt.USER_DEFINED))
                scores.append(0.0)
            else:
                types.append(int(tt.NORMAL))
                scores.append(-float(i))  # earlier (lower-rank) tokens score higher
        else:
            tokens.append(f"[PAD{i}]")
            scores.append(0.0)
            types.append(int(tt.UNUSED))
    return tokens, scores, types


def _pre_name(tok) -> str:
    from lmkit.tokenizers.pretokenize import PATTERNS

    pattern = getattr(tok, "pattern", None)
    if pattern == PATTERNS.get("gpt2"):
        return "gpt-2"  # llama.cpp's name (llama-vocab.cpp); it does not know "gpt2"
    if pattern == PATTERNS.get("cl100k"):
        return "llama-bpe"  # Llama-3 uses cl100k's split pattern
    return "default"


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in the _M mixes."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], ftype: str, n_layers: int, tied: bool) -> str:
    """The GGML type `llama-quantize` gives the tensor `name` (GGUF name, torch `shape`) in a file
    of type `ftype` (llama_tensor_get_type for the llama architecture without an imatrix)."""
    if len(shape) == 1 or ftype in ("f32", "f16"):
        return "F32" if len(shape) == 1 else _BASE_TYPE[ftype]
    kind = _BASE_TYPE[ftype]
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if ftype != "q8_0":
            kind = "Q6_K" if shape[-1] % BY_NAME[kind].block_size == 0 else "Q8_0"
    elif ftype == "q4_k_m" and name.startswith("blk."):
        layer = int(name.split(".")[1])
        if (".attn_v." in name or ".ffn_down." in name) and _use_more_bits(layer, n_layers):
            kind = "Q6_K"
    if shape[-1] % BY_NAME[kind].block_size:
        kind = _FALLBACK.get(kind, "F16")
        if shape[-1] % BY_NAME[kind].block_size:
            kind = "F16"
    return kind


def _tensor(writer, name: str, t: torch.Tensor, kind: str) -> None:
    gguf = require("gguf", "gguf")
    a = t.detach().float().cpu().numpy().astype(np.float32)
    if kind == "F32":
        writer.add_tensor(name, a)
    elif kind == "F16":
        writer.add_tensor(name, a.astype(np.float16))
    else:
        writer.add_tensor(name, quantize(a, kind), raw_dtype=gguf.GGMLQuantizationType(BY_NAME[kind].id))


def export_gguf(model: nn.Module, path: str | os.PathLike, tokenizer=None, ftype: str = "f16",
                name: str | None = None, chat_template: str | None = None) -> dict:
    """Write `model` (+ byte-level BPE `tokenizer`) to a GGUF file; returns a small summary.

    With a tokenizer the file records where a reply ends (`hub/end_of_turn.py`): eos = end of
    document, eot = the chat template's end of turn (<|im_end|>), and the template itself
    (`chat_template`, a Jinja string; default: the built-in template the tokenizer has the
    tokens for), so llama.cpp stops after a reply and formats chats itself."""
    gguf = require("gguf", "gguf")
    if ftype not in FILE_TYPES:
        raise ValueError(f"GGUF type {ftype!r}: choose one of {FILE_TYPES}")
    _check_model(model)
    cfg = model.config
    if tokenizer is not None and not hasattr(tokenizer, "merge_ids"):
        raise CheckpointError(f"GGUF export supports byte-level BPE tokenizers, not {type(tokenizer).__name__}")
    path = Path(path)
    state = model.state_dict()
    tied = cfg.tie_embeddings
    kinds: dict[str, str] = {}
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(name or (cfg.model_type or "lmkit") + "-lmkit")
        w.add_file_type(FILE_TYPE_IDS[ftype])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.d_ff)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_rope_dimension_count(cfg.head_dim)
        if cfg.head_dim * cfg.n_heads != cfg.d_model:
            w.add_key_length(cfg.head_dim)
            w.add_value_length(cfg.head_dim)
        if cfg.rope_scaling == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(cfg.rope_scaling_factor))
        w.add_layer_norm_rms_eps(float(cfg.norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        if tokenizer is not None:
            tokens, scores, types = _token_types(tokenizer, cfg.vocab_size)
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(_pre_name(tokenizer))
            w.add_token_list(tokens)
            w.add_token_scores(scores)
            w.add_token_types(types)
            from lmkit.tokenizers.bytes_level import bytes_to_token_str

            w.add_token_merges([f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in tokenizer.merges])
        bos, eos, eot, pad = cfg.bos_token_id, cfg.eos_token_id, None, cfg.pad_token_id
        if tokenizer is not None:
            from lmkit.hub.end_of_turn import checkpoint_tokens

            tokens = checkpoint_tokens(tokenizer)
            eos = eos if eos is not None else (tokens.end_of_text or tokens.end_of_turn or (None, None))[1]
            eot = tokens.end_of_turn[1] if tokens.end_of_turn is not None else None
            pad = pad if pad is not None else (tokens.pad[1] if tokens.pad is not None else None)
            if bos is None:
                specials = tokenizer.special_tokens
                for cand in ("<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>"):
                    if bos is None and cand in specials:
                        bos = specials[cand]
            if chat_template is None and tokens.template is not None:
                chat_template = tokens.template.to_jinja()
        if bos is not None:
            w.add_bos_token_id(int(bos))
            w.add_add_bos_token(False)
        if eos is not None:
            w.add_eos_token_id(int(eos))
        if eot is not None:
            w.add_eot_token_id(int(eot))
        if chat_template:
            w.add_chat_template(chat_template)
        if pad is not None:
            w.add_pad_token_id(int(pad))
        for k, t in state.items():
            if k == "lm_head.weight" and tied:
                continue
            try:
                gname = gguf_name(k)
            except KeyError:
                raise CheckpointError(f"parameter {k!r} has no GGUF llama tensor name") from None
            if ".attn_q." in gname:
                t = permute(t, cfg.n_heads, cfg.n_heads)
            elif ".attn_k." in gname:
                t = permute(t, cfg.n_heads, cfg.n_kv_heads)
            kinds[gname] = tensor_type(gname, tuple(t.shape), ftype, cfg.n_layers, tied)
            _tensor(w, gname, t, kinds[gname])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    counts = {k: list(kinds.values()).count(k) for k in sorted(set(kinds.values()))}
    return {"path": str(path), "tensors": len(kinds), "types": counts, "q8_0": counts.get("Q8_0", 0),
            "bytes": path.stat().st_size}


def export_gguf_dir(model_dir: str | os.PathLike, path: str | os.PathLike, ftype: str = "f16") -> dict:
    """A Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json) -> GGUF."""
    from lmkit.hub.pretrained import load_pretrained

    model = load_pretrained(model_dir, dtype=torch.float32)
    tok = None
    tj = Path(model_dir) / "tokenizer.json"
    if tj.exists():
        from lmkit.tokenizers.loading import load_tokenizer

        tok = load_tokenizer(tj)
    return export_gguf(model, path, tok, ftype, name=Path(model_dir).name, chat_template=_saved_template(model_dir))


def _saved_template(model_dir: str | os.PathLike) -> str | None:
    """The checkpoint's default Jinja chat template (tokenizer_config.json, a list of named ones,
    or chat_template.jinja), if it has one."""
    from lmkit.errors import TokenizerError
    from lmkit.hub.checkpoint_template import read_chat_templates

    try:
        return read_chat_templates(model_dir).get("default")
    except (OSError, TokenizerError):
        return None
