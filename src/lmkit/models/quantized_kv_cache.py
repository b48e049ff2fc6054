"""An int8 KV cache for long contexts: `Int8KVCache`, the `KVCache` protocol with keys and values
stored as int8 codes and one float32 scale per (row, head, token).

At long context the cache, not the weights, is what fills memory: 2 * layers * kv_heads *
head_dim * bytes per token. Each new key / value vector (one head of one token) is quantized
on its own, symmetric absmax: scale = max|x| / 127, code = round(x / scale). A token's
vector is written once and never requantized, so the error does not grow with length, and
an outlier in one head or token does not cost the others precision.

Memory per token and head: head_dim + 4 bytes, against 4 * head_dim (fp32) or 2 * head_dim
(bf16/fp16): at head_dim 64, 0.27x an fp32 cache and 0.53x a bf16 one.

Compute: `update` returns the cached keys / values dequantized to the dtype the model writes,
so attention runs as before; the dequantization reads every cached code once per step, so a
step costs somewhat more than with a float cache (docs/quantization.md has the figures). The
compiled static-cache step writes float buffers in place and cannot use it.
"""

from __future__ import annotations

import torch

from lmkit.errors import ConfigError
from lmkit.models.kv_cache import KVCache

KV_CACHE_DTYPES = ("auto", "int8")


class Int8KVCache(KVCache):
    """`KVCache` with int8 codes (`keys` / `values` [B, kv_heads, max_len, head_dim] int8) and
    float32 scales (`key_scales` / `value_scales` [B, kv_heads, max_len, 1])."""

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        self.key_scales: list[torch.Tensor | None] = [None] * n_layers
        self.value_scales: list[torch.Tensor | None] = [None] * n_layers
        self.dtype = dtype  # what `update` returns: the dtype of the first keys written unless given
        super().__init__(n_layers, batch_size, n_kv_heads, head_dim, max_len, dtype, device)

    def _allocate(self, i: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (self.batch_size, self.n_kv_heads, self.max_len, self.head_dim)
        self.keys[i] = torch.zeros(shape, dtype=torch.int8, device=device)
        self.values[i] = torch.zeros(shape, dtype=torch.int8, device=device)
        self.key_scales[i] = torch.zeros(shape[:3] + (1,), dtype=torch.float32, device=device)
        self.value_scales[i] = torch.zeros(shape[:3] + (1,), dtype=torch.float32, device=device)
        if self.dtype is None:
            self.dtype = dtype

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize and append k, v [B, n_kv_heads, T_new, head_dim]; return every cached key / value,
        dequantized to the model's dtype."""
        start, end = self._span(i, k)
        for x, codes, scales in ((k, self.keys[i], self.key_scales[i]), (v, self.values[i], self.value_scales[i])):
            q, s = quantize_per_vector(x)
            codes[:, :, start:end] = q
            scales[:, :, start:end] = s
        self.lengths[i] = end
        dtype = self.dtype or k.dtype
        return (dequantize_per_vector(self.keys[i][:, :, :end], self.key_scales[i][:, :, :end], dtype),
                dequantize_per_vector(self.values[i][:, :, :end], self.value_scales[i][:, :, :end], dtype))

    def select(self, indices: torch.Tensor | list[int]) -> None:
        """Keep batch rows `indices` in that order (codes and scales alike)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        for i in range(self.n_layers):
            if self.key_scales[i] is not None:
                j = idx.to(self.key_scales[i].device)
                self.key_scales[i] = self.key_scales[i].index_select(0, j)
                self.value_scales[i] = self.value_scales[i].index_select(0, j)
        super().select(indices)

    def memory_bytes(self) -> int:
        scales = [t for t in self.key_scales + self.value_scales if t is not None]
        return super().memory_bytes() + sum(t.numel() * t.element_size() for t in scales)

    def __repr__(self) -> str:
        return "Int8" + super().__repr__()


def quantize_per_vector(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., d] -> (int8 codes [..., d], float32 scales [..., 1]): symmetric absmax per last-dim vector."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / 127.0
    codes = torch.round(xf / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp_(-127, 127)
    return codes.to(torch.int8), scale


def dequantize_per_vector(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes [..., d] int8 * scales [..., 1] in `dtype` (one int8 x fp32 pass: ~8x faster than converting first)."""
    out = torch.mul(codes, scales)
    return out if out.dtype == dtype else out.to(dtype)


def make_kv_cache(model, batch_size: int, max_len: int, kv_dtype: str = "auto") -> KVCache:
    """The cache generation uses: `model.make_cache` ("auto": the model's dtype) or an `Int8KVCache`
    ("int8", decoder models whose `make_cache` is the plain one)."""
    if kv_dtype not in KV_CACHE_DTYPES:
        raise ConfigError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_dtype!r}")
    if kv_dtype == "auto":
        return model.make_cache(batch_size, max_len)
    from lmkit.models.decoder import DecoderLM

    if getattr(type(model), "make_cache", None) is not DecoderLM.make_cache:
        raise ConfigError(f"an int8 KV cache needs a plain decoder model; {type(model).__name__} "
                         "builds its own cache (prompt tuning, encoder-decoder ...)")
    return Int8KVCache.for_model(model, batch_size, max_len)
