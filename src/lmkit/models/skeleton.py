"""A model skeleton: parameters on PyTorch's meta device (shapes, no memory), buffers real.

Loading a checkpoint into a fully built model holds two copies of the weights at once:
the randomly initialised parameters and the tensors read from disk. Built inside
`parameters_on_meta()`, a model has the shapes of its parameters but no storage for
them (and no time is spent initialising them), while the buffers its constructor computes
(RoPE inverse frequencies, sinusoidal tables) are ordinary tensors with their values.
`fill_parameters` then gives each parameter its own tensor, copied from the checkpoint
and cast on the way, one at a time; tied parameters (an LM head sharing the embedding)
stay one parameter.

Building everything under `torch.device("meta")` instead would leave the computed buffers
on meta too, with no value to load them from (they are not in any checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

_active = threading.local()
_lock = threading.Lock()
_users = 0
_original_register = nn.Module.register_parameter


def _register_on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _original_register(self, name, param)
    if param is not None and getattr(_active, "on", False) and param.device.type != "meta":
        meta = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        meta.__dict__.update(param.__dict__)
        self._parameters[name] = meta


def _skipping_meta(init: Callable) -> Callable:
    @functools.wraps(init)
    def skip(tensor, *args, **kwargs):
        if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
            return tensor
        return init(tensor, *args, **kwargs)

    return skip


_INITS = {name: getattr(nn.init, name) for name in dir(nn.init)
          if name.endswith("_") and not name.startswith("_") and callable(getattr(nn.init, name))}
_SKIPPING_INITS = {name: _skipping_meta(fn) for name, fn in _INITS.items()}


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside: every parameter a module registers (in this thread) moves to the meta device as
    it is registered. Buffers and plain tensors are untouched. `nn.init` functions skip meta
    tensors: random initialisation of a meta tensor computes nothing, but PyTorch runs it
    through its Python reference kernels, whose first use imports torch._dynamo (~75 MB)."""
    global _users
    with _lock:
        if _users == 0:
            nn.Module.register_parameter = _register_on_meta
            for name, fn in _SKIPPING_INITS.items():
                setattr(nn.init, name, fn)
        _users += 1
    previous = getattr(_active, "on", False)
    _active.on = True
    try:
        yield
    finally:
        _active.on = previous
        with _lock:
            _users -= 1
            if _users == 0:
                nn.Module.register_parameter = _original_register
                for name, fn in _INITS.items():
                    setattr(nn.init, name, fn)


def fill_parameters(model: nn.Module, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                    after_copy: Callable[[torch.Tensor], None] | None = None) -> list[str]:
    """Give every parameter and buffer of `model` named in `tensors` (state-dict names, one name
    per tied tensor) a new tensor of its own, copied from `tensors`; returns the names filled.

    Floating parameters become `dtype` (None: their current dtype); integer parameters and all
    buffers keep the dtype the model has. Each copy is made straight into the final dtype, so
    casting never holds a second full copy. `after_copy(source)` runs after each copy (a
    memory-mapped reader drops the pages it no longer needs there). Everything lands on the CPU.
    """
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in model.modules():
        for attr, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is not None:
                owners.setdefault(id(t), []).append((mod, attr))
    filled: list[str] = []
    done: set[int] = set()
    with torch.no_grad():
        for name, old in model.state_dict(keep_vars=True).items():
            if id(old) in done or name not in tensors:
                continue
            done.add(id(old))
            src = tensors[name]
            is_param = isinstance(old, nn.Parameter)
            to = dtype if (is_param and dtype is not None and old.is_floating_point()) else old.dtype
            new = torch.empty(tuple(src.shape), dtype=to, device="cpu")
            new.copy_(src)
            if after_copy is not None:
                after_copy(src)
            if is_param:
                param = type(old)(new, requires_grad=old.requires_grad)
                param.__dict__.update(old.__dict__)
                new = param
            for mod, attr in owners[id(old)]:
                setattr(mod, attr, new)  # through the module, so modules caching their weights (RNNs) see it
            filled.append(name)
    return filled


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers still on the meta device (none, once loaded)."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return [n for n, t in named if t.device.type == "meta"]
