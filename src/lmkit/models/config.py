"""`ModelConfig`: one dataclass describes every architecture lmkit builds.

The field names are lmkit's own; `hub/` translates to and from each Hugging Face
`config.json`. A config is validated on construction and round-trips through JSON.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lmkit.errors import ConfigError

ARCHS = ("decoder", "encoder", "encoder_decoder", "lstm")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "quick_gelu")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "t5_bias", "none")
ROPE_SCALINGS = (None, "linear", "ntk", "dynamic", "llama3", "yarn", "longrope")
# the parameters each RoPE scaling kind reads from ModelConfig.rope_params (besides the factor and the
# original length, which have their own fields); the meaning of each is in models/positional.py
ROPE_PARAMS: dict[str | None, frozenset[str]] = {
    "llama3": frozenset({"low_freq_factor", "high_freq_factor"}),
    "yarn": frozenset({"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"}),
    "longrope": frozenset({"short_factor", "long_factor", "attention_factor"}),
}
ROUTERS = ("topk", "switch")
NORM_POSITIONS = ("pre", "post", "sandwich", "sublayer_output")
QK_NORMS = (None, "head", "full")
LAYER_TYPES = ("sliding_attention", "full_attention")


_FOREIGN = contextvars.ContextVar("lmkit_foreign_config", default=False)


@contextmanager
def foreign_special_ids():
    """Inside: a config read from another tool (hub's config.json import). In a decoder-only model a
    special token id outside the vocabulary (metadata its forward pass never reads, such as GPT-2's
    default 50256 on a small test vocabulary) becomes None with a warning instead of an error;
    encoders and encoder-decoders embed their pad / decoder-start ids, so those stay errors."""
    token = _FOREIGN.set(True)
    try:
        yield
    finally:
        _FOREIGN.reset(token)


def dataclass_from_dict(cls: type, d: dict[str, Any]):
    """`cls(**d)` for a config dataclass, refusing unknown keys with the list of known ones
    (a typo in a config file must not be silently ignored)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**d)


@dataclass
class ModelConfig:
    arch: str = "decoder"
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int | None = None  # None: = n_heads (MHA); 1: MQA; between: GQA
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int = 2048
    max_seq_len: int = 2048

    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    # "pre" (GPT-2, Llama, T5): x + f(norm(x)); "post" (BERT, Vaswani): norm(x + f(x));
    # "sandwich" (Gemma 2/3): x + norm2(f(norm1(x))); "sublayer_output" (OLMo 2): x + norm(f(x))
    norm_position: str = "pre"
    norm_bias: bool = True  # LayerNorm only
    activation: str = "silu"
    gated_ffn: bool = True  # SwiGLU / GeGLU: down(act(gate(x)) * up(x))

    position: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: str | None = None  # linear, ntk, dynamic, llama3, yarn, longrope (models/positional.py)
    rope_scaling_factor: float = 1.0
    rope_original_max_seq_len: int | None = None  # trained length (dynamic, llama3, yarn, longrope); None: max_seq_len
    rope_params: dict[str, Any] = field(default_factory=dict)  # the kind's other parameters, see ROPE_PARAMS
    partial_rotary_factor: float = 1.0  # rotate only the first int(head_dim * f) dims (GPT-NeoX rotary_pct, Phi-4)
    relative_buckets: int = 32  # T5 relative attention bias
    relative_max_distance: int = 128

    qkv_bias: bool = False
    o_bias: bool = False
    ffn_bias: bool = False
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    qk_norm: str | None = None  # "head" (Qwen3, Gemma 3: per head over head_dim) or "full" (OLMo 2: whole projection)
    scale_attn: bool = True  # T5 does not divide scores by sqrt(head_dim)
    sliding_window: int | None = None  # a query sees at most this many keys (itself included)
    # per layer "sliding_attention" (uses sliding_window) or "full_attention" (Gemma 2/3 local and
    # global layers); None: every layer uses sliding_window
    layer_types: list[str] | None = None
    rope_local_theta: float | None = None  # RoPE base of the sliding layers, unscaled (Gemma 3); None: one RoPE
    parallel_residual: bool = False  # GPT-NeoX/Pythia: x + attn(norm1(x)) + ffn(norm2(x)) (pre-norm decoders)

    # Gemma: RMSNorm scales by (1 + w) in fp32; token embeddings times sqrt(d_model); tanh soft-capping
    norm_unit_offset: bool = False
    scale_embeddings: bool = False
    attn_logit_softcapping: float | None = None  # scores -> tanh(s / c) * c, before the mask
    final_logit_softcapping: float | None = None  # logits -> tanh(l / c) * c
    query_pre_attn_scalar: float | None = None  # scores scaled by this ** -0.5; None: head_dim ** -0.5

    n_experts: int = 0  # > 0: MoE FFN in the layers of moe_layers
    moe_layers: list[int] | None = None  # which layers are sparse (None: all); the others keep a dense FFN
    moe_d_ff: int | None = None  # hidden size of each expert (None: d_ff); Qwen3-MoE's experts are smaller
    n_experts_per_tok: int = 2
    router: str = "topk"  # topk softmax (Mixtral) or switch (top-1, Switch Transformer)
    norm_topk_prob: bool = True
    capacity_factor: float | None = None  # None: no token dropping
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0

    type_vocab_size: int = 0  # BERT token-type (segment) embeddings
    n_decoder_layers: int | None = None  # encoder-decoder; None: = n_layers

    dropout: float = 0.0
    attn_dropout: float = 0.0
    initializer_range: float = 0.02

    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None

    model_type: str = ""  # the Hugging Face model_type this config maps to ("" = lmkit-native)
    extra: dict[str, Any] = field(default_factory=dict)  # round-tripped HF fields we do not use

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"ModelConfig.{name}={getattr(self, name)!r}: {why}")

        if self.arch not in ARCHS:
            bad("arch", f"must be one of {ARCHS}")
        if self.norm not in NORMS:
            bad("norm", f"must be one of {NORMS}")
        if self.norm_position not in NORM_POSITIONS:
            bad("norm_position", f"must be one of {NORM_POSITIONS}")
        if self.qk_norm not in QK_NORMS:
            bad("qk_norm", f"must be one of {QK_NORMS}")
        if self.activation not in ACTIVATIONS:
            bad("activation", f"must be one of {ACTIVATIONS}")
        if self.position not in POSITIONS:
            bad("position", f"must be one of {POSITIONS}")
        if self.rope_scaling not in ROPE_SCALINGS:
            bad("rope_scaling", f"must be one of {ROPE_SCALINGS}")
        if self.router not in ROUTERS:
            bad("router", f"must be one of {ROUTERS}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                bad(name, "must be a positive integer")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            bad("n_kv_heads", f"must be positive and divide n_heads={self.n_heads}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                bad("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
            self.head_dim = self.d_model // self.n_heads
        if self.position == "rope" and self.head_dim % 2:
            bad("head_dim", "must be even for RoPE")
        if self.rope_scaling is not None and self.rope_scaling_factor < 1.0:
            bad("rope_scaling_factor", "must be >= 1 when rope_scaling is set")
        self._check_rope()
        if self.parallel_residual and (self.norm_position != "pre" or self.arch != "decoder"):
            bad("parallel_residual", "needs a pre-norm decoder (norm_position='pre', arch='decoder')")
        if self.sliding_window is not None and self.sliding_window <= 0:
            bad("sliding_window", "must be a positive integer or None")
        self._check_gemma_settings(bad)
        if self.n_experts < 0:
            bad("n_experts", "must be >= 0")
        if self.n_experts:
            k = 1 if self.router == "switch" else self.n_experts_per_tok
            if not 1 <= k <= self.n_experts:
                bad("n_experts_per_tok", f"must be in [1, n_experts={self.n_experts}]")
        if self.moe_d_ff is not None and (not isinstance(self.moe_d_ff, int) or self.moe_d_ff <= 0):
            bad("moe_d_ff", "must be a positive integer or None")
        if self.moe_layers is not None:
            if any(not isinstance(i, int) or not 0 <= i < self.n_layers for i in self.moe_layers):
                bad("moe_layers", f"must list layer indices in [0, n_layers={self.n_layers})")
            layers = sorted(set(self.moe_layers))
            self.moe_layers = None if layers == list(range(self.n_layers)) else layers
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            bad("capacity_factor", "must be positive or None")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, "must be in [0, 1)")
        if self.type_vocab_size < 0:
            bad("type_vocab_size", "must be >= 0")
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < self.vocab_size:
                if not (_FOREIGN.get() and self.arch == "decoder"):  # T5 starts decoding from pad / decoder start
                    bad(name, f"must be in [0, vocab_size={self.vocab_size})")
                warnings.warn(f"{name}={v} is outside the vocabulary (vocab_size={self.vocab_size}); "
                              "lmkit ignores it (None)", stacklevel=3)
                setattr(self, name, None)

    def _check_rope(self) -> None:
        """rope_params holds exactly what the scaling kind reads, with the values it needs."""
        allowed = ROPE_PARAMS.get(self.rope_scaling, frozenset())
        unknown = sorted(set(self.rope_params) - allowed)
        if unknown:
            raise ConfigError(f"ModelConfig.rope_params: {unknown} are not parameters of rope_scaling="
                              f"{self.rope_scaling!r} (it reads {sorted(allowed) or 'none'})")
        if not 0.0 < self.partial_rotary_factor <= 1.0 or int(self.head_dim * self.partial_rotary_factor) < 2:
            raise ConfigError(f"ModelConfig.partial_rotary_factor={self.partial_rotary_factor!r}: must be in (0, 1] "
                              f"and leave at least 2 of head_dim={self.head_dim} dims to rotate")
        p = self.rope_params
        if self.rope_scaling == "llama3":
            if not {"low_freq_factor", "high_freq_factor"} <= set(p) or p["high_freq_factor"] <= p["low_freq_factor"]:
                raise ConfigError("ModelConfig.rope_params: llama3 needs low_freq_factor < high_freq_factor")
        if self.rope_scaling == "longrope":
            half = len(range(0, int(self.head_dim * self.partial_rotary_factor), 2))
            for key in ("short_factor", "long_factor"):
                if not isinstance(p.get(key), list) or len(p[key]) != half:
                    raise ConfigError(f"ModelConfig.rope_params: longrope needs {key} as a list of {half} numbers "
                                      "(one per rotated frequency)")

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer i has a mixture-of-experts FFN (else a dense one)."""
        return self.n_experts > 0 and (self.moe_layers is None or i in self.moe_layers)

    def _check_gemma_settings(self, bad) -> None:
        if self.layer_types is not None:
            self.layer_types = list(self.layer_types)
            if len(self.layer_types) != self.n_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                bad("layer_types", f"must list one of {LAYER_TYPES} for each of the n_layers={self.n_layers} layers")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                bad("layer_types", "has sliding_attention layers but sliding_window is None")
        for name in ("layer_types", "scale_embeddings", "final_logit_softcapping"):
            if getattr(self, name) not in (None, False) and self.arch != "decoder":
                bad(name, "is implemented for arch='decoder' only")
        if self.rope_local_theta is not None and (self.position != "rope" or self.layer_types is None):
            bad("rope_local_theta", "needs position='rope' and layer_types")
        if self.norm_unit_offset and self.norm != "rmsnorm":
            bad("norm_unit_offset", "applies to rmsnorm only")
        for name in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "rope_local_theta"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                bad(name, "must be positive or None")

    def layer_window(self, i: int) -> int | None:
        """The sliding window of layer i (None: the layer sees every earlier token)."""
        if self.layer_types is None or self.layer_types[i] == "sliding_attention":
            return self.sliding_window
        return None

    def gemma_settings(self) -> list[str]:
        """The Gemma mechanisms this config switches on, as "name=value", for the code paths and
        checkpoint formats that do not implement them (fused decode step, GGUF, llama files)."""
        names = ("norm_unit_offset", "scale_embeddings", "attn_logit_softcapping", "final_logit_softcapping",
                 "query_pre_attn_scalar", "layer_types", "rope_local_theta")
        return [f"{n}={getattr(self, n)!r}" for n in names if getattr(self, n) not in (None, False)]

    @property
    def n_query_groups(self) -> int:
        return self.n_heads // self.n_kv_heads

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return dataclass_from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"ModelConfig: not valid JSON ({exc})") from exc
        if not isinstance(d, dict):
            raise ConfigError("ModelConfig: JSON must be an object")
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> None:
        from lmkit.atomic import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())
