"""A small conditional UNet, the denoiser of a diffusion model.

Layout (as in DDPM / Stable Diffusion's UNet, scaled down): a conv stem; per resolution,
ResBlocks that add a timestep embedding, optionally followed by a transformer block
(self-attention over pixels, cross-attention to conditioning tokens, feed-forward); strided
conv downsampling; a middle ResBlock-attention-ResBlock at the lowest resolution; the mirror
path upsampling and concatenating the skip connections; GroupNorm-SiLU-conv out.

Conditioning comes as `context` tokens (B, L, context_dim) read by cross-attention (text-encoder
states in Stable Diffusion). With `num_classes` set, a class label is embedded as one such token
and is also added to the timestep embedding (as in class-conditional ADM); label `num_classes`
is the "no condition" token that classifier-free guidance trains and samples with.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import ConfigError


@dataclass
class UNetConfig:
    """Sizes of the UNet. `attention_levels[i]` puts transformer blocks at resolution level i."""

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_heads: int = 4
    context_dim: int = 64
    num_classes: int | None = None
    groups: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channel_mults = tuple(self.channel_mults)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if len(self.attention_levels) != len(self.channel_mults):
            raise ConfigError(f"attention_levels needs one flag per channel_mults entry "
                              f"({len(self.channel_mults)}), got {len(self.attention_levels)}")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.groups or (self.base_channels * mult) % self.num_heads:
                raise ConfigError(f"base_channels * {mult} must be divisible by groups={self.groups} "
                                  f"and num_heads={self.num_heads}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "UNetConfig":
        return cls(**json.loads(text))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer) timesteps, as the Transformer's positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep embedding added in between, plus a skip path."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention of `x` over `context` (itself when None): self- or cross-attention."""

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(context_dim, dim, bias=False)
        self.v_proj = nn.Linear(context_dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        h = self.num_heads

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, -1, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(context)), heads(self.v_proj(context)))
        return self.o_proj(out.transpose(1, 2).reshape(b, n, d))


class SpatialTransformer(nn.Module):
    """Pixels as tokens: pre-norm self-attention, cross-attention to the context, feed-forward."""

    def __init__(self, ch: int, context_dim: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.proj_in = nn.Linear(ch, ch)
        self.norm1 = nn.LayerNorm(ch)
        self.self_attn = Attention(ch, ch, num_heads)
        self.norm2 = nn.LayerNorm(ch)
        self.cross_attn = Attention(ch, context_dim, num_heads)
        self.norm3 = nn.LayerNorm(ch)
        self.ff = nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, ch))
        self.proj_out = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        h = h + self.self_attn(self.norm1(h))
        if context is not None:
            h = h + self.cross_attn(self.norm2(h), context)
        h = h + self.ff(self.norm3(h))
        return x + self.proj_out(h).transpose(1, 2).reshape(b, c, hgt, wid)


class UNet(nn.Module):
    """forward(x_t, t, labels=None, context=None) -> the prediction (eps, v or x_0) shaped as x_t."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        c0 = cfg.base_channels
        emb_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            self.class_embedding = nn.Embedding(cfg.num_classes + 1, cfg.context_dim)
            self.class_to_emb = nn.Linear(cfg.context_dim, emb_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)

        def block(in_ch: int, out_ch: int, attend: bool) -> nn.ModuleList:
            parts = [ResBlock(in_ch, out_ch, emb_dim, cfg.groups, cfg.dropout)]
            if attend:
                parts.append(SpatialTransformer(out_ch, cfg.context_dim, cfg.num_heads, cfg.groups))
            return nn.ModuleList(parts)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [c0]
        ch = c0
        levels = len(cfg.channel_mults)
        for level, mult in enumerate(cfg.channel_mults):
            out = c0 * mult
            for _ in range(cfg.layers_per_block):
                self.down.append(block(ch, out, cfg.attention_levels[level]))
                ch = out
                skips.append(ch)
            if level < levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.groups, cfg.dropout),
                                  SpatialTransformer(ch, cfg.context_dim, cfg.num_heads, cfg.groups),
                                  ResBlock(ch, ch, emb_dim, cfg.groups, cfg.dropout)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(levels)):
            out = c0 * cfg.channel_mults[level]
            for _ in range(cfg.layers_per_block + 1):
                self.up.append(block(ch + skips.pop(), out, cfg.attention_levels[level]))
                ch = out
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def null_labels(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """The "no condition" label for classifier-free guidance."""
        if self.config.num_classes is None:
            raise ConfigError("this UNet has no class conditioning (UNetConfig.num_classes is None)")
        return torch.full((batch,), self.config.num_classes, dtype=torch.long, device=device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if x.shape[-1] % 2 ** (len(cfg.channel_mults) - 1) or x.shape[-2] % 2 ** (len(cfg.channel_mults) - 1):
            raise ConfigError(f"image size {tuple(x.shape[-2:])} must be divisible by "
                              f"{2 ** (len(cfg.channel_mults) - 1)} (one halving per extra level)")
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, cfg.base_channels))
        if labels is not None:
            if cfg.num_classes is None:
                raise ConfigError("labels given to a UNet without class conditioning (set UNetConfig.num_classes)")
            token = self.class_embedding(labels)
            emb = emb + self.class_to_emb(token)
            context = token[:, None] if context is None else torch.cat([token[:, None], context], dim=1)

        def run(parts: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
            h = parts[0](h, emb)
            for part in parts[1:]:
                h = part(h, context)
            return h

        h = self.conv_in(x)
        skips = [h]
        down = iter(self.down)
        for level in range(len(cfg.channel_mults)):
            for _ in range(cfg.layers_per_block):
                h = run(next(down), h)
                skips.append(h)
            if level < len(cfg.channel_mults) - 1:
                h = self.downsample[level](h)
                skips.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h, context)
        h = self.mid[2](h, emb)
        up = iter(self.up)
        for i, level in enumerate(reversed(range(len(cfg.channel_mults)))):
            for _ in range(cfg.layers_per_block + 1):
                h = run(next(up), torch.cat([h, skips.pop()], dim=1))
            if level > 0:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
