"""Paged KV cache with automatic prefix caching (PagedAttention, Kwon et al. 2023; vLLM's APC).

A contiguous cache gives every sequence one [kv_heads, capacity, head_dim] strip that must be
sized for the longest it may become, so memory is reserved, not used, and it fragments as
requests come and go. Here the keys/values live in one preallocated pool per layer of
fixed-size blocks (`block_size` tokens each), and each sequence owns a `BlockTable`: the list
of its blocks in order. Token t of a sequence sits in slot `blocks[t // bs] * bs + t % bs`.
A sequence takes a new block only when its last one is full, so it holds at most
`block_size - 1` slots it does not use.

Prefix caching. A FULL block is named by a hash of (its parent block's hash, its tokens), so
the hash names the whole prefix up to the block's end: two sequences whose prompts start with
the same 1,500 tokens compute the same hashes for those blocks. Finished blocks are registered
under their hash and shared read-only (a reference count per block); a newcomer whose prompt
prefix is found skips computing those tokens. Blocks no sequence references stay cached and
are evicted least-recently-used first when the pool needs room. Only full blocks are shared,
and a sequence only ever writes into its own last, partial block, so no copy-on-write is needed.
The hash names token ids only: whatever else changes the keys/values (an adapter chosen per
request, say) must go into the root of the chain (`BlockTable(root=...)`).

Layout. The pool of layer i is [kv_heads, n_blocks + 1, block_size, head_dim] (stored as rows
of head_dim; the spare block holds `scratch_slot`, where the padding tokens of a batched
prefill write), so the keys of any rows, heads and token slots come out of one `index_select`
already in attention's [B, kv_heads, S, head_dim] order and contiguous (a transposed gather
made SDPA several times slower on the CPU), into a buffer reused from step to step (a fresh
multi-MB tensor per layer costs page faults). `PagedKVView` implements the model's KV-cache
protocol (`seq_len`, `layer(i).update(k, v)`, `update(i, k, v)`) for one forward of B
sequences: `update` writes the new keys/values into their slots and returns the keys/values
of every row gathered into a [B, kv_heads, S, head_dim] tensor, each row right-aligned (its
first columns padding, hidden by the caller's attention mask) exactly like the contiguous
cache of the serving engine, so `model.forward` and the fused step (fused_step.py) run on it
unchanged and compute the same numbers. The gather is a copy of the row's keys per step
(on a CPU it costs about what attention itself reads); `DecodeBatch` pays it once for a run
of decode steps of the same rows (it keeps their keys/values contiguous and appends one
column per step); a paged-attention kernel would read the blocks in place.
"""

from __future__ import annotations

import collections
import hashlib
from array import array

import torch

from lmkit.errors import ConfigError, LmkitError
from lmkit.infer.fused_step import padding_bias
from lmkit.models.kv_cache import local_kv_heads


class PoolExhausted(LmkitError):
    """No free or evictable block is left in the pool (the caller preempts a sequence)."""


def block_hash(parent: bytes, tokens) -> bytes:
    """The name of a full block: sha256 of the parent block's hash and the block's token ids.

    Chaining makes the hash name the whole prefix, not just the block's own tokens.
    """
    h = hashlib.sha256(parent)
    h.update(array("q", tokens).tobytes())
    return h.digest()


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes one token takes in the KV cache: keys and values of every layer."""
    size = torch.empty((), dtype=dtype).element_size()
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * size


class BlockTable:
    """The blocks of one sequence, in token order, and the hashes of its full blocks."""

    def __init__(self, root: bytes = b"root") -> None:
        self.root = root  # the parent hash of the first block
        self.blocks: list[int] = []
        self.hashes: list[bytes] = []  # hashes of the first len(hashes) full blocks of the token sequence
        self.registered = 0  # blocks already entered in the pool's prefix table (or taken from it)

    def hashes_for(self, tokens: list[int], n_blocks: int, block_size: int) -> list[bytes]:
        """Hashes of the first n_blocks full blocks of `tokens` (computed once, kept)."""
        while len(self.hashes) < n_blocks:
            j = len(self.hashes)
            self.hashes.append(block_hash(self.hashes[-1] if j else self.root, tokens[j * block_size:(j + 1) * block_size]))
        return self.hashes[:n_blocks]

    def slots(self, start: int, end: int, block_size: int) -> list[int]:
        """Pool slots of token positions [start, end)."""
        b = self.blocks
        return [b[t // block_size] * block_size + t % block_size for t in range(start, end)]


class BlockPool:
    """Preallocated KV blocks for every layer, their allocation and the prefix cache.

    Block states: free (no content), in use (ref > 0; full ones may be in the prefix table),
    cached (ref == 0 but in the prefix table: reusable by a hit, evictable LRU).
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, n_blocks: int, block_size: int = 16,
                 prefix_caching: bool = True) -> None:
        if n_blocks < 1 or block_size < 1:
            raise ConfigError(f"the KV pool needs n_blocks >= 1 and block_size >= 1, got {n_blocks}, {block_size}")
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.n_blocks, self.block_size = n_blocks, block_size
        self.prefix_caching = prefix_caching
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.ref = [0] * n_blocks
        # a stack, lowest ids on top: freed blocks are reused first, so the pages of a large
        # (lazily committed) pool that get touched follow the peak use, not the pool size
        self.free: list[int] = list(range(n_blocks - 1, -1, -1))
        self.table: dict[bytes, int] = {}  # prefix hash -> block
        self.hash_of: dict[int, bytes] = {}  # block -> its hash (registered blocks only)
        self.lru: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unreferenced blocks
        self.hits = self.misses = self.evictions = 0  # prefix-cache blocks found / computed; cached blocks evicted
        self._gather_buf: tuple[torch.Tensor, torch.Tensor] | None = None
        self._n_slots = (n_blocks + 1) * block_size  # one spare block holds scratch_slot

    @classmethod
    def for_model(cls, model, *, n_blocks: int | None = None, memory_mb: float | None = None, block_size: int = 16,
                  prefix_caching: bool = True, default_tokens: int | None = None) -> "BlockPool":
        """A pool for `model`: n_blocks given, or as many as `memory_mb` of keys/values hold
        (in the model's dtype), or enough for `default_tokens` tokens."""
        cfg = model.config
        p = next(model.parameters())
        dtype = p.dtype if p.is_floating_point() else torch.float32
        if n_blocks is None:
            if memory_mb is not None:
                per_block = kv_bytes_per_token(cfg, dtype) * block_size
                n_blocks = int(memory_mb * 2**20 // per_block)
                if n_blocks < 1:
                    raise ConfigError(f"a KV cache of {memory_mb} MiB holds no block of {block_size} tokens "
                                      f"({per_block} bytes each): give more memory")
            else:
                n_blocks = -(-(default_tokens or cfg.max_seq_len) // block_size)
        return cls(cfg.n_layers, local_kv_heads(model), cfg.head_dim, n_blocks, block_size, prefix_caching)

    # ---- accounting ---------------------------------------------------------------------
    @property
    def available(self) -> int:
        """Blocks an allocation can get: free ones plus cached ones it may evict."""
        return len(self.free) + len(self.lru)

    @property
    def in_use(self) -> int:
        """Blocks some sequence references."""
        return self.n_blocks - self.available

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    # ---- allocation ---------------------------------------------------------------------
    def allocate(self) -> int:
        """A block for one sequence (ref 1): a free one, else the least recently used cached one."""
        if self.free:
            block = self.free.pop()
        elif self.lru:
            block, _ = self.lru.popitem(last=False)
            del self.table[self.hash_of.pop(block)]
            self.evictions += 1
        else:
            raise PoolExhausted(f"all {self.n_blocks} KV blocks are in use")
        self.ref[block] = 1
        return block

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each block; unreferenced ones become cached (if registered) or free."""
        for block in blocks:
            self.ref[block] -= 1
            if self.ref[block] == 0:
                if block in self.hash_of:
                    self.lru[block] = None  # most recently used at the end
                else:
                    self.free.append(block)

    # ---- prefix cache -------------------------------------------------------------------
    def lookup(self, hashes: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes` found (not yet referenced)."""
        found = []
        if self.prefix_caching:
            for h in hashes:
                block = self.table.get(h)
                if block is None:
                    break
                found.append(block)
        return found

    def acquire(self, blocks: list[int]) -> None:
        """Take a reference to cached blocks `lookup` found."""
        for block in blocks:
            if self.ref[block] == 0:
                self.lru.pop(block, None)
            self.ref[block] += 1

    def register(self, block: int, h: bytes) -> None:
        """Enter a full block under its prefix hash (a block already there under another id stays private)."""
        if self.prefix_caching and h not in self.table and block not in self.hash_of:
            self.table[h] = block
            self.hash_of[block] = h

    # ---- storage ------------------------------------------------------------------------
    @property
    def scratch_slot(self) -> int:
        """A slot outside every block: where padding tokens of a batched prefill write."""
        return self.n_blocks * self.block_size

    def _allocate_storage(self, i: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (self.n_kv_heads * self._n_slots, self.head_dim)
        self.keys[i] = torch.empty(shape, dtype=dtype, device=device)  # never read before written
        self.values[i] = torch.empty(shape, dtype=dtype, device=device)

    def rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Token slots [B, S] -> storage rows [B * kv_heads * S] in [B, kv_heads, S] order."""
        heads = torch.arange(self.n_kv_heads, device=slots.device)[None, :, None] * self._n_slots
        return (heads + slots[:, None, :]).reshape(-1)

    def write(self, i: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, kv_heads, T, D] into storage `rows` (from `rows(slots [B, T])`) of layer i."""
        if self.keys[i] is None:
            self._allocate_storage(i, k.dtype, k.device)
        d = k.shape[-1]
        self.keys[i].index_copy_(0, rows, k.reshape(-1, d).to(self.keys[i].dtype))
        self.values[i].index_copy_(0, rows, v.reshape(-1, d).to(self.values[i].dtype))

    def read(self, i: int, rows: torch.Tensor, shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of storage `rows` (from `rows(slots [B, S])`) of layer i as `shape`
        [B, kv_heads, S, D], contiguous. They are gathered into buffers reused by the next
        read (of any layer): valid until then, which is all attention needs."""
        n = rows.numel()
        if self._gather_buf is None or self._gather_buf[0].shape[0] < n or self._gather_buf[0].dtype != self.keys[i].dtype:
            self._gather_buf = tuple(torch.empty(max(n, 1024), self.head_dim, dtype=self.keys[i].dtype,
                                              device=rows.device) for _ in range(2))
        k, v = (buf[:n] for buf in self._gather_buf)
        torch.index_select(self.keys[i], 0, rows, out=k)
        torch.index_select(self.values[i], 0, rows, out=v)
        return k.view(shape), v.view(shape)


class _LayerView:
    def __init__(self, view: "PagedKVView", index: int) -> None:
        self.view, self.index = view, index

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view.update(self.index, k, v)

    @property
    def seq_len(self) -> int:
        return self.view.seq_len


class PagedKVView:
    """The KV-cache protocol over a `BlockPool` for one forward of B sequences.

    write_slots [B, T]: where the T new tokens of each row go; read_slots [B, past + T]: the
    slots each row attends to, in column order (padding columns may point anywhere written:
    the caller's mask hides them). seq_len is `past`, the columns before the new tokens.
    """

    def __init__(self, pool: BlockPool, write_slots: torch.Tensor, read_slots: torch.Tensor) -> None:
        self.pool = pool
        self.seq_len = read_slots.shape[1] - write_slots.shape[1]
        self._write = pool.rows(write_slots)  # the same storage rows for every layer
        self._read = pool.rows(read_slots)
        self._shape = (read_slots.shape[0], pool.n_kv_heads, read_slots.shape[1], pool.head_dim)

    def layer(self, i: int) -> _LayerView:
        return _LayerView(self, i)

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.pool.write(i, self._write, k, v)
        return self.pool.read(i, self._read, self._shape)


DECODE_BATCH_LIMIT_BYTES = 256 * 2**20  # a DecodeBatch's contiguous copy larger than this: gather per step instead


class DecodeBatch:
    """Decode steps of a fixed set of sequences over a `BlockPool`, their keys/values kept contiguous.

    `PagedKVView` gathers every row's keys/values out of the pool at every step and layer (a
    copy that grows with the context). While the same rows decode step after step, nothing
    in those columns changes: this keeps them in one right-aligned [B, kv_heads, cap,
    head_dim] buffer per layer (one gather when the batch is built), and each step writes the
    new token into its pool slot AND into the next column, then attention reads a view of the
    first S columns. Built again whenever the rows change (the engine checks `matches`).
    The read slots, the padding mask and its additive bias are built once per batch too.

    kv_dtype: the buffers' dtype: the pool's, or float32 for a bf16/fp16 model whose fused
    step attends in fp32 on CPU (bf16 -> fp32 is exact, and its per-layer upcast becomes a
    no-op). Implements the model's KV-cache protocol for one step at a time: `begin(slots)`
    before the forward, `end()` after it.
    """

    def __init__(self, pool: BlockPool, rows: list, tables: list[list[int]], lengths: list[int],
                 device: torch.device, kv_dtype: torch.dtype, bias_dtype: torch.dtype | None) -> None:
        bs = pool.block_size
        b, s = len(lengths), max(lengths)
        self.pool, self.rows, self.lengths = pool, list(rows), list(lengths)
        self.s = s
        self.cap = -(-(s + 32) // 32) * 32  # room for 32 more steps before the buffers grow
        read = torch.empty(b, s, dtype=torch.long)
        mask = torch.ones(b, self.cap, dtype=torch.long)
        for j, (blocks, n) in enumerate(zip(tables, lengths)):
            t = torch.arange(n)
            slots = torch.tensor(blocks[: -(-n // bs)], dtype=torch.long)[t // bs] * bs + t % bs
            read[j, s - n:] = slots
            if n < s:
                read[j, : s - n] = slots[0]  # padding columns: any written slot (masked)
                mask[j, : s - n] = 0
        self.padded = bool((mask == 0).any())
        self.mask = mask.to(device) if self.padded else None
        self.bias = padding_bias(self.mask, bias_dtype) if self.padded and bias_dtype is not None else None
        rows_idx = pool.rows(read.to(device))
        shape = (b, pool.n_kv_heads, s, pool.head_dim)
        self.keys, self.values = [], []
        for i in range(pool.n_layers):
            k, v = pool.read(i, rows_idx, shape)
            kb = torch.empty(b, pool.n_kv_heads, self.cap, pool.head_dim, dtype=kv_dtype, device=device)
            vb = torch.empty_like(kb)
            kb[:, :, :s].copy_(k)
            vb[:, :, :s].copy_(v)
            self.keys.append(kb)
            self.values.append(vb)
        self._heads = torch.arange(pool.n_kv_heads, device=device)[None, :] * pool._n_slots
        self._write: torch.Tensor | None = None

    @staticmethod
    def size_bytes(pool: BlockPool, n_rows: int, longest: int, kv_dtype: torch.dtype) -> int:
        """Bytes of the buffers a batch of n_rows rows, the longest `longest` tokens, would hold."""
        cap = -(-(longest + 32) // 32) * 32
        size = torch.empty((), dtype=kv_dtype).element_size()
        return 2 * pool.n_layers * n_rows * pool.n_kv_heads * cap * pool.head_dim * size

    def matches(self, rows: list, lengths: list[int]) -> bool:
        """Whether `rows` (the same objects, in order) with `lengths` tokens cached continue this batch."""
        return (len(rows) == len(self.rows) and all(a is b for a, b in zip(rows, self.rows))
                and lengths == self.lengths)

    # ---- one step -----------------------------------------------------------------------
    def begin(self, slots: list[int]) -> None:
        """Before a forward: every row's new token goes to pool slot `slots[j]` (and column S)."""
        if self.s + 1 > self.cap:
            self._grow()
        new = torch.tensor(slots, dtype=torch.long, device=self._heads.device)
        self._write = (self._heads + new[:, None]).reshape(-1)  # [B * kv_heads] storage rows, [B, kv_heads] order

    def end(self) -> None:
        """After the forward: the new column is part of every row."""
        self.s += 1
        self.lengths = [n + 1 for n in self.lengths]
        self._write = None

    def _grow(self) -> None:
        cap = 2 * self.cap
        for layer in (self.keys, self.values):
            for i, buf in enumerate(layer):
                new = torch.empty(buf.shape[0], buf.shape[1], cap, buf.shape[3], dtype=buf.dtype, device=buf.device)
                new[:, :, : self.s].copy_(buf[:, :, : self.s])
                layer[i] = new
        if self.mask is not None:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask)], dim=1)
        if self.bias is not None:
            self.bias = torch.cat([self.bias, torch.zeros_like(self.bias)], dim=-1)
        self.cap = cap

    # ---- the KV-cache protocol (one token per row) --------------------------------------
    @property
    def seq_len(self) -> int:
        return self.s

    def layer(self, i: int) -> _LayerView:
        return _LayerView(self, i)

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [B, kv_heads, 1, D] -> the rows' keys/values [B, kv_heads, S + 1, D] (views)."""
        pool = self.pool
        if pool.keys[i] is None:
            pool._allocate_storage(i, k.dtype, k.device)
        d = k.shape[-1]
        pool.keys[i].index_copy_(0, self._write, k.reshape(-1, d).to(pool.keys[i].dtype))
        pool.values[i].index_copy_(0, self._write, v.reshape(-1, d).to(pool.values[i].dtype))
        s = self.s
        kb, vb = self.keys[i], self.values[i]
        kb[:, :, s: s + 1].copy_(k)
        vb[:, :, s: s + 1].copy_(v)
        return kb[:, :, : s + 1], vb[:, :, : s + 1]
