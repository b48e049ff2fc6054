"""KV cache: the keys and values of tokens already seen, so each new token costs O(T) not O(T^2).

During generation the keys/values of earlier tokens never change (causal attention), so they
are computed once and stored. Per layer the cache holds two preallocated tensors
[B, n_kv_heads, max_len, head_dim] and a write position; `layer(i).update(k, v)` writes the
new keys/values at that position and returns everything written so far. With GQA/MQA the
cache stores only the n_kv_heads heads, which is where those variants save memory
(2 * layers * n_kv_heads * head_dim * bytes per token).

Beside the write/read protocol the cache can be
  truncate(n)      cut back to the first n positions (rejected draft tokens in speculative decoding),
  select(indices)  reorder or repeat batch rows (beam search keeps the surviving beams),
  reset()          forget everything (the buffers are kept for reuse).
"""

from __future__ import annotations

import torch


class LayerCache:
    """One layer's view of a `KVCache`: implements the attention's `update(k, v)` protocol."""

    def __init__(self, cache: "KVCache", index: int) -> None:
        self.cache = cache
        self.index = index

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(self.index, k, v)

    @property
    def seq_len(self) -> int:
        return self.cache.lengths[self.index]


class KVCache:
    """Preallocated keys/values for every layer of a decoder.

    The buffers are allocated on the first `update` with the dtype and device of the keys
    the model produces, so a cache built before `model.to(...)` still fits.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if min(n_layers, batch_size, n_kv_heads, head_dim, max_len) <= 0:
            raise ValueError("KVCache: n_layers, batch_size, n_kv_heads, head_dim and max_len must be positive")
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.max_len = max_len
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers
        if dtype is not None or device is not None:
            for i in range(n_layers):
                self._allocate(i, dtype or torch.float32, torch.device(device or "cpu"))

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None) -> "KVCache":
        """A cache sized for `model` (anything with a `config`), on its device and dtype.

        max_len defaults to config.max_seq_len, which for long-context models is a lot of
        memory allocated up front: pass prompt length + new tokens instead.
        """
        cfg = model.config
        p = next(model.parameters())
        return cls(
            cfg.n_layers, batch_size, local_kv_heads(model), cfg.head_dim, max_len or cfg.max_seq_len,
            dtype=p.dtype if p.is_floating_point() else None, device=p.device,
        )

    # ---- protocol -----------------------------------------------------------------------
    def layer(self, i: int) -> LayerCache:
        if not 0 <= i < self.n_layers:
            raise IndexError(f"KVCache has {self.n_layers} layers, asked for layer {i}")
        return LayerCache(self, i)

    def _allocate(self, i: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (self.batch_size, self.n_kv_heads, self.max_len, self.head_dim)
        self.keys[i] = torch.zeros(shape, dtype=dtype, device=device)
        self.values[i] = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [B, n_kv_heads, T_new, head_dim] to layer i; return all keys/values so far."""
        start, end = self._span(i, k)
        self.keys[i][:, :, start:end] = k
        self.values[i][:, :, start:end] = v
        self.lengths[i] = end
        return self.keys[i][:, :, :end], self.values[i][:, :, :end]

    def _span(self, i: int, k: torch.Tensor) -> tuple[int, int]:
        """(start, end) positions that new keys `k` take in layer i (checked; buffers allocated on first use)."""
        b, h, t, d = k.shape
        name = type(self).__name__
        if (b, h, d) != (self.batch_size, self.n_kv_heads, self.head_dim):
            raise ValueError(
                f"{name}: got keys of shape {tuple(k.shape)}, cache holds "
                f"[batch={self.batch_size}, kv_heads={self.n_kv_heads}, *, head_dim={self.head_dim}]"
            )
        if self.keys[i] is None:
            self._allocate(i, k.dtype, k.device)
        start = self.lengths[i]
        end = start + t
        if end > self.max_len:
            raise ValueError(
                f"{name} is full: {start} cached + {t} new tokens > max_len={self.max_len}; "
                "build the cache with a larger max_len (prompt + new tokens)"
            )
        return start, end

    # ---- bookkeeping --------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Positions cached so far (those of layer 0; all layers agree between forwards)."""
        return self.lengths[0]

    def reset(self) -> None:
        self.lengths = [0] * self.n_layers

    def truncate(self, n: int) -> None:
        """Keep only the first n positions (n >= 0); later writes overwrite the rest."""
        if n < 0:
            raise ValueError(f"KVCache.truncate: n={n} must be >= 0")
        self.lengths = [min(length, n) for length in self.lengths]

    def select(self, indices: torch.Tensor | list[int]) -> None:
        """Keep batch rows `indices` in that order (may repeat rows or change the batch size)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        for i in range(self.n_layers):
            if self.keys[i] is not None:
                j = idx.to(self.keys[i].device)
                self.keys[i] = self.keys[i].index_select(0, j)
                self.values[i] = self.values[i].index_select(0, j)
        self.batch_size = int(idx.numel())

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    def __repr__(self) -> str:
        return (
            f"KVCache(layers={self.n_layers}, batch={self.batch_size}, kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, seq_len={self.seq_len}/{self.max_len})"
        )


def local_kv_heads(model) -> int:
    """The key/value heads this process computes: all of them, or its slice under tensor
    parallelism (train/tensor_parallel.py sets each attention's n_kv_heads to its share)."""
    layers = getattr(model, "layers", None)
    attn = getattr(layers[0], "self_attn", None) if layers is not None and len(layers) else None
    return getattr(attn, "n_kv_heads", model.config.n_kv_heads)
