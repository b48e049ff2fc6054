"""QLoRA (Dettmers et al. 2023): a frozen 4-bit NormalFloat base model + LoRA adapters.

    h = dequant_NF4(W) x + (alpha / r) B A x

Every linear layer of the transformer blocks is replaced by `lmkit.quant.linear.NF4Linear`
(weights as uint8 buffers holding two 4-bit codes each, one absmax per block of 64, the
absmax values themselves 8-bit quantized with double quantization: about 4.13 bits, i.e.
~0.52 byte per weight), then LoRA wraps the target layers. The quantized weights are
buffers, so no optimizer can change them and no gradient is kept for them; the backward
pass still goes *through* them (dequantize, matmul) to reach the adapters of lower layers.
Embeddings, norms and lm_head stay in their original precision (as in the paper and in
bitsandbytes, which skips lm_head).

The notes say QLoRA "dequantizes to bf16 for training" — that is the compute dtype:
NF4Linear dequantizes to the input's dtype, so with `precision="bf16"` the matmuls run in
bf16 and in fp32 otherwise. Paged optimizers (the paper's third idea) are a CUDA unified
memory feature and are not simulated here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.module_tree import replace_module
from lmkit.peft.lora import LoraConfig, LoraLinear, inject_lora, lora_param_count


@dataclass
class QLoraConfig(LoraConfig):
    block_size: int = 64
    double_quant: bool = True
    skip_modules: tuple[str, ...] = ("lm_head",)  # linear layers kept in full precision

    def __post_init__(self) -> None:
        super().__post_init__()
        self.skip_modules = tuple(self.skip_modules or ())
        if not isinstance(self.block_size, int) or self.block_size < 2 or self.block_size % 2:
            raise ConfigError(f"QLoraConfig.block_size={self.block_size!r}: must be an even integer >= 2")

    def lora_config(self) -> LoraConfig:
        fields = {f.name for f in dataclasses.fields(LoraConfig)}
        return LoraConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["skip_modules"] = list(self.skip_modules)
        return d


def quantize_linears(
    model: nn.Module, block_size: int = 64, double_quant: bool = True, skip_modules: tuple[str, ...] = ("lm_head",)
) -> list[str]:
    """Replace every nn.Linear (except `skip_modules`) by an NF4Linear, in place; returns their names."""
    from lmkit.quant.linear import NF4Linear

    names = []
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Linear:
            continue
        if any(name == s or name.endswith("." + s) for s in skip_modules):
            continue
        if (m.in_features * m.out_features) % block_size:
            raise ConfigError(
                f"{name} ({m.out_features}x{m.in_features}) does not split into NF4 blocks of {block_size}; "
                "pick a block_size that divides every weight"
            )
        names.append(name)
    for name in names:
        replace_module(model, name, NF4Linear.from_linear(model.get_submodule(name), block_size, double_quant))
    return names


def prepare_qlora(
    model: nn.Module, lora_config: LoraConfig, block_size: int = 64, double_quant: bool = True,
    skip_modules: tuple[str, ...] = ("lm_head",), adapter_name: str = "default",
) -> nn.Module:
    """Quantize the base to NF4 and inject LoRA (only the adapters train). Returns `model`."""
    if any(isinstance(m, LoraLinear) for m in model.modules()):
        raise ConfigError("prepare_qlora needs a model without LoRA layers (quantize first, then add adapters)")
    from lmkit.peft.lora import find_targets

    find_targets(model, lora_config.target_modules)  # fail before quantizing if nothing matches
    quantize_linears(model, block_size, double_quant, skip_modules)
    return inject_lora(model, lora_config, adapter_name)


def apply_qlora(model: nn.Module, config: QLoraConfig | None = None) -> nn.Module:
    """Registry entry point."""
    config = config or QLoraConfig()
    return prepare_qlora(model, config.lora_config(), config.block_size, config.double_quant, config.skip_modules)


def qlora_param_count(model_config, config: QLoraConfig) -> int:
    return lora_param_count(model_config, config)


def nf4_storage(model: nn.Module) -> dict[str, float]:
    """Measured storage of the NF4 base: bytes of codes + constants, weights quantized, bytes/weight."""
    from lmkit.quant.linear import NF4Linear

    nbytes = n = 0
    for m in model.modules():
        if isinstance(m, NF4Linear):
            nbytes += m.weight_bytes()
            n += m.in_features * m.out_features
    return {"nf4_bytes": nbytes, "nf4_weights": n, "bytes_per_weight": nbytes / n if n else float("nan")}
