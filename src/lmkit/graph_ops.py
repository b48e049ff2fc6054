"""Operators of our own for `torch.compile`d graphs (namespace `lmkit`).

A call the inductor should leave alone (a library kernel it would lower badly, or a weight it
cannot hold as a constant) becomes an operator with a CPU kernel and a fake one that gives the
output's shape for tracing. Defined through `torch.library.Library`, which costs 3 us a call where
`torch.library.custom_op` costs 4.6 (a decode step makes 65 such calls).
"""

from __future__ import annotations

from typing import Callable

import torch

_LIBRARIES: list = []  # an operator lives as long as its Library object


def define_graph_op(name: str, schema: str, cpu_kernel: Callable, fake: Callable):
    """`torch.ops.lmkit.<name>`, defined once per process (a module reload reuses it); None where this
    torch has no `torch.library.register_fake` (torch < 2.4)."""
    if not hasattr(torch.library, "register_fake"):
        return None
    if not hasattr(torch.ops.lmkit, name):
        lib = torch.library.Library("lmkit", "FRAGMENT")
        lib.define(f"{name}{schema}")
        lib.impl(name, cpu_kernel, "CPU")
        torch.library.register_fake(f"lmkit::{name}", fake, lib=lib)
        _LIBRARIES.append(lib)
    return getattr(torch.ops.lmkit, name)
