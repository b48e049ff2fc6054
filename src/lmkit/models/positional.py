"""Positional information: sinusoidal and learned absolute embeddings, RoPE (with linear,
NTK, dynamic, Llama 3, YaRN and LongRoPE scaling, and partial rotary), ALiBi and T5's
bucketed relative attention bias.

Absolute encodings are added to the token embeddings; RoPE rotates queries and keys;
ALiBi and T5 bias are added to the attention scores.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from lmkit.models.config import ModelConfig


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...) (Vaswani et al. 2017)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(config.max_seq_len, config.d_model), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]


# ---- RoPE ------------------------------------------------------------------------------
def rope_inv_freq(base: float, dim: int) -> torch.Tensor:
    """The RoPE inverse frequencies base^(-2i/dim), i < dim/2."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def llama3_inv_freq(inv_freq: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                    original_max: int) -> torch.Tensor:
    """Llama 3.1: wavelengths longer than original_max / low_freq_factor are divided by `factor`, those
    shorter than original_max / high_freq_factor kept, and the band between interpolated smoothly."""
    low_wavelen, high_wavelen = original_max / low_freq_factor, original_max / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature 0.1 * mscale * ln(scale) + 1 (Peng et al. 2023, eq. 21)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(base: float, dim: int, factor: float, original_max: int, params: dict) -> tuple[torch.Tensor, float]:
    """YaRN: frequencies that turn fewer than beta_slow times over the original length are interpolated
    (divided by `factor`), those turning more than beta_fast times kept, a linear ramp between; the
    cos/sin tables are multiplied by the attention factor. -> (inv_freq, attention factor)."""
    attention = params.get("attention_factor")
    if attention is None:
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        attention = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all) if mscale and mscale_all
                     else yarn_mscale(factor))
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original_max / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention)


def longrope_attention_factor(factor: float, original_max: int, params: dict) -> float:
    """LongRoPE's cos/sin multiplier: sqrt(1 + ln(factor) / ln(original length)) unless given."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_max))


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embedding (Su et al. 2021), "rotate-half" layout.

    Scaling for longer contexts (the formulas of transformers' ROPE_INIT_FUNCTIONS):
      linear   — position interpolation: positions are divided by the factor;
      ntk      — NTK-aware: the base becomes theta * factor^(d/(d-2)), so low frequencies
                 stretch while the highest ones (local order) stay nearly unchanged;
      dynamic  — NTK with the factor grown only once the sequence exceeds the trained length;
      llama3   — low frequencies divided by the factor, high ones kept, a smooth band between;
      yarn     — NTK-by-parts interpolation plus an attention temperature on cos/sin;
      longrope — per-frequency factors: `short_factor` while the sequence (its largest position
                 + 1) fits the original length, `long_factor` beyond it, plus an attention factor.
    With partial_rotary_factor < 1 the tables cover only the first int(head_dim * f) dims of a head
    (`apply_rope` passes the rest through unrotated).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dim = int(config.head_dim * config.partial_rotary_factor)
        self.theta = config.rope_theta
        self.scaling = config.rope_scaling
        self.factor = config.rope_scaling_factor
        self.original_max = config.rope_original_max_seq_len or config.max_seq_len
        self.attention_factor = 1.0
        params = config.rope_params
        inv_freq = rope_inv_freq(self.theta, self.dim)
        if self.scaling == "ntk":
            inv_freq = rope_inv_freq(self.theta * self.factor ** (self.dim / (self.dim - 2)), self.dim)
        elif self.scaling == "llama3":
            inv_freq = llama3_inv_freq(inv_freq, self.factor, params["low_freq_factor"], params["high_freq_factor"],
                                       self.original_max)
        elif self.scaling == "yarn":
            inv_freq, self.attention_factor = yarn_inv_freq(self.theta, self.dim, self.factor, self.original_max,
                                                            params)
        elif self.scaling == "longrope":
            shape = torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim
            inv_freq = 1.0 / (torch.tensor(params["short_factor"], dtype=torch.float32) * self.theta**shape)
            long = 1.0 / (torch.tensor(params["long_factor"], dtype=torch.float32) * self.theta**shape)
            self.register_buffer("long_inv_freq", long, persistent=False)
            self.attention_factor = longrope_attention_factor(self.factor, self.original_max, params)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B, T] -> cos, sin [B, T, rotary dims] (head_dim unless partial)."""
        inv_freq = self.inv_freq
        pos = position_ids.float()
        if self.scaling == "linear":
            pos = pos / self.factor
        elif self.scaling == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.original_max:
                base = self.theta * (
                    (self.factor * seq_len / self.original_max) - (self.factor - 1)
                ) ** (self.dim / (self.dim - 2))
                inv_freq = rope_inv_freq(base, self.dim).to(inv_freq.device)
        elif self.scaling == "longrope" and int(position_ids.max()) + 1 > self.original_max:
            inv_freq = self.long_inv_freq
        freqs = pos[..., None] * inv_freq.to(pos.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, T, R]: the first R dims of each head are rotated (R < D with
    partial rotary), the rest pass through."""
    cos, sin = cos[:, None], sin[:, None]
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :r], x[..., r:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


# ---- ALiBi -----------------------------------------------------------------------------
def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric slopes 2^(-8i/n) (Press et al. 2021), with the paper's rule for n not a power of 2."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(pow2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = pow2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(pow2(closest) + extra)


def alibi_bias(n_heads: int, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool) -> torch.Tensor:
    """Score bias -slope * distance, [H, Tq, Tk] (distance |i-j| when bidirectional)."""
    dist = q_pos[:, None] - k_pos[None, :]
    dist = dist.clamp(min=0) if causal else dist.abs()
    return -alibi_slopes(n_heads).to(dist.device)[:, None, None] * dist[None].float()


# ---- T5 relative bias -----------------------------------------------------------------
def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Map key_pos - query_pos to a bucket: exact for small distances, log-spaced up to max_distance."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        n = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float() / max_exact + 1e-30) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, n, large)


class T5RelativeBias(nn.Module):
    """Learned scalar bias per (bucket, head), shared by all layers of one stack."""

    def __init__(self, config: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_buckets
        self.max_distance = config.relative_max_distance
        self.embedding = nn.Embedding(config.relative_buckets, config.n_heads)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """-> bias [H, Tq, Tk]."""
        rel = k_pos[None, :] - q_pos[:, None]
        b = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(b).permute(2, 0, 1)


# ---- shared by the stacks --------------------------------------------------------------
def add_position_modules(module: nn.Module, config: ModelConfig, bidirectional: bool) -> None:
    """Register on `module` the position encoding ``config.position`` asks for, under the names
    the parameter scheme uses: ``embed_positions`` (learned), ``sinusoidal``, ``rotary`` (and
    ``rotary_local``, the sliding layers' own unscaled RoPE of base ``rope_local_theta``: Gemma 3),
    or ``relative_bias`` (t5_bias; `bidirectional` buckets for encoders). Shared by every stack."""
    if config.position == "learned":
        module.embed_positions = nn.Embedding(config.max_seq_len, config.d_model)
    elif config.position == "sinusoidal":
        module.sinusoidal = SinusoidalPositions(config)
    elif config.position == "rope":
        module.rotary = RotaryEmbedding(config)
        if config.rope_local_theta is not None:
            module.rotary_local = RotaryEmbedding(dataclasses.replace(
                config, rope_theta=config.rope_local_theta, rope_scaling=None, rope_scaling_factor=1.0))
    elif config.position == "t5_bias":
        module.relative_bias = T5RelativeBias(config, bidirectional=bidirectional)


def add_absolute_positions(stack: nn.Module, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """x + the learned or sinusoidal embedding of position_ids ([B, T] or [T]) when the stack's
    config uses one; the other encodings act inside attention, so x comes back unchanged."""
    position = stack.config.position
    if position == "learned":
        return x + stack.embed_positions(position_ids)
    if position == "sinusoidal":
        return x + stack.sinusoidal(position_ids).to(x.dtype)
    return x


def position_score_bias(
    stack: nn.Module, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool
) -> torch.Tensor | None:
    """The attention-score bias of the stack's position encoding (ALiBi or T5's relative
    bias) for queries q_pos over keys k_pos, computed once and shared by every layer; else None."""
    cfg = stack.config
    if cfg.position == "alibi":
        return alibi_bias(cfg.n_heads, q_pos, k_pos, causal=causal)
    if cfg.position == "t5_bias":
        return stack.relative_bias(q_pos, k_pos)
    return None
