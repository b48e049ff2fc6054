"""SLERP: spherical linear interpolation of two weight tensors (Shoemake 1985), per tensor.

Each tensor is flattened to one vector. With Ω the angle between the two *normalised*
vectors (cos Ω = v̂0 · v̂1),

    slerp(t; v0, v1) = sin((1 - t) Ω) / sin Ω · v0 + sin(t Ω) / sin Ω · v1

applied to the original (unnormalised) tensors, as mergekit does. When the two are nearly
parallel (|cos Ω| > dot_threshold, default 0.9995) sin Ω → 0 and the formula is unstable,
so plain linear interpolation is used instead (it is the limit of slerp as Ω → 0).
t = 0 gives v0 and t = 1 gives v1.
"""

from __future__ import annotations

import math

import torch

from lmkit.edit.merge_linear import lerp
from lmkit.errors import ConfigError

DOT_THRESHOLD = 0.9995


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = DOT_THRESHOLD,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between v0 (t = 0) and v1 (t = 1), lerp when nearly parallel."""
    if v0.shape != v1.shape:
        raise ConfigError(f"slerp of tensors with different shapes {tuple(v0.shape)} and {tuple(v1.shape)}")
    a, b = v0.float(), v1.float()
    na, nb = a.flatten().norm(), b.flatten().norm()
    if na < eps or nb < eps:  # a zero vector has no direction: interpolate linearly
        return lerp(t, a, b)
    dot = float(torch.dot(a.flatten() / na, b.flatten() / nb).clamp(-1.0, 1.0))
    if abs(dot) > dot_threshold:
        return lerp(t, a, b)
    omega = math.acos(dot)
    sin_omega = math.sin(omega)
    s0 = math.sin((1 - t) * omega) / sin_omega
    s1 = math.sin(t * omega) / sin_omega
    return s0 * a + s1 * b
