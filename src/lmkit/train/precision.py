"""Which floating-point precision a run trains in: `precision="auto"` follows the hardware.

bf16 autocast runs matmuls in bf16 while the master weights, gradients and optimizer state
stay fp32 (no loss scaling: bf16 has fp32's exponent range). It pays only where the hardware
has bf16 units:
  CUDA  GPUs that report bf16 support (Ampere and later);
  CPU   x86 cores with AVX512-BF16 or AMX-BF16 (oneDNN then runs bf16 GEMMs natively;
        a CPU without them emulates bf16 and is *slower* than fp32).
Elsewhere "auto" trains in fp32. Detection goes through torch (its cpuinfo), with no extra
dependency. The environment variable LMKIT_CPU_BF16=0 (or 1) overrides what the CPU is
detected to have — for tests, and for comparing both precisions on one machine.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

from lmkit.errors import ConfigError

CPU_BF16_ENV = "LMKIT_CPU_BF16"

_announced: set[tuple[str, str, str]] = set()


def cpu_bf16_features() -> list[str]:
    """The bf16 matmul features torch sees on this CPU: a subset of ["avx512_bf16", "amx_bf16"]."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        found = caps()
        return [f for f in ("avx512_bf16", "amx_bf16") if found.get(f, False)]
    found = []  # older torch: the private probes that get_capabilities() replaced
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.append("avx512_bf16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        found.append("amx_bf16")
    return found


def cpu_has_bf16() -> tuple[bool, str]:
    """(does this CPU run bf16 matmuls natively, why we think so)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False, f"{CPU_BF16_ENV}={forced} forces no CPU bf16"
    if forced in ("1", "true", "yes", "on"):
        return True, f"{CPU_BF16_ENV}={forced} forces CPU bf16"
    if forced:
        raise ConfigError(f"{CPU_BF16_ENV}={forced!r}: must be 0 or 1 (or unset to detect)")
    features = cpu_bf16_features()
    if features:
        return True, "CPU has " + " and ".join(f.upper().replace("_", "-") for f in features)
    return False, "CPU has neither AVX512-BF16 nor AMX-BF16"


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """("fp32" | "bf16" | "fp16", reason) for `requested` on `device`; "auto" picks bf16 only
    where the hardware has bf16 units."""
    if requested != "auto":
        return requested, "set in the config"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"{torch.cuda.get_device_name(device)} has no bf16 support"
    if device.type == "cpu":
        has, why = cpu_has_bf16()
        return ("bf16" if has else "fp32"), why
    return "fp32", f"no bf16 detection for device type {device.type!r}"


def announce_precision(requested: str, resolved: str, reason: str) -> None:
    """Print the choice once per process (a run may build several Trainers)."""
    key = (requested, resolved, reason)
    if key in _announced:
        return
    _announced.add(key)
    weights = "" if resolved == "fp32" else " autocast; master weights and optimizer state fp32"
    print(f"precision: {requested} -> {resolved}{weights} ({reason})", file=sys.stderr, flush=True)


def autocast(precision: str, device: torch.device):
    """The forward's context: nothing for fp32, `torch.autocast` in bf16/fp16 otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
