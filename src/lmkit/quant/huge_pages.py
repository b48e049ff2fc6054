"""Weights in transparent huge pages (2 MiB) for the batch-1 decode walk.

A decode step reads every weight once, so a matrix-vector product streams hundreds of MB per
token. On 4 KiB pages that is one TLB entry per 4 KiB, and the page walks show in the kernel's
time; on Linux, memory that is `madvise(MADV_HUGEPAGE)`d before it is first touched is backed by
2 MiB pages when the kernel's THP mode is "always" or "madvise" (the common default).
`huge_page_copy` gives such a copy of a large CPU tensor; anything else (small tensors, other
devices, no anonymous mmap or madvise, or THP "never") gets the tensor itself, so it is always
safe to call. Measured on the benchmark CPU (1 thread, the int8 weights of the 246M bench
model, 213 MB, `_weight_int8pack_mm`): 12.6 ms on 4 KiB pages, 12.0 ms on 2 MiB pages.

The fused low-bit kernels (weight_kernels.py) keep their packed weights this way. oneDNN's
reordered fp32/bf16 weights are opaque tensors whose memory cannot be placed from Python.
"""

from __future__ import annotations

import mmap

import torch

HUGE_PAGE = 2 << 20
MIN_BYTES = 2 * HUGE_PAGE  # smaller tensors gain little: at most one or two huge pages
ENABLED = True  # switch off to compare (bench) or to keep weights on the ordinary allocator


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "never"
    return text[text.index("[") + 1:text.index("]")] if "[" in text else "never"


_MODE = _thp_mode() if hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_ANONYMOUS") else "never"


def huge_page_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of CPU tensor `t` in memory advised for 2 MiB pages, or `t` where that does not apply.

    The copy is an ordinary tensor (it views an anonymous mapping that lives as long as the tensor);
    it is read-only in spirit: the kernels only read it."""
    if getattr(t, "_lmkit_huge_pages", None) == t.data_ptr():  # one of ours already
        return t
    nbytes = t.numel() * t.element_size()
    if (not ENABLED or _MODE == "never" or t.device.type != "cpu" or nbytes < MIN_BYTES or t.is_sparse
            or t.layout != torch.strided or t.requires_grad):
        return t
    try:
        m = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: the pages are faulted in as huge pages
    except (OSError, ValueError):
        return t
    with torch.inference_mode(False):  # an ordinary tensor even when built under inference mode
        raw = torch.frombuffer(m, dtype=torch.uint8)  # the tensor keeps `m` alive through its storage
        start = (-raw.data_ptr()) % HUGE_PAGE  # 2 MiB-aligned start: a huge page maps only aligned ranges
        out = raw[start:start + nbytes].view(t.dtype).view(t.shape)
        out.copy_(t)
    out._lmkit_huge_pages = out.data_ptr()  # (a deepcopy carries the attribute, not the address)
    return out
