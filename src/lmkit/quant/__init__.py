"""lmkit.quant — quantization: absmax/zero-point (per tensor/channel/block), NF4 + double
quantization, FP8/BF16/FP16/TF32, LLM.int8(), GPTQ, quantized Linear modules, quantized
checkpoints. See docs/quantization.md."""

from lmkit.quant.linear import GPTQLinear, GroupQuantLinear, Int8DynamicLinear, Int8Linear, LLMInt8Linear, NF4Linear
from lmkit.quant.nf4 import NF4_CODE, NF4Tensor, dequantize_nf4, quantize_nf4
from lmkit.quant.quantize_model import quantize_model

__all__ = [
    "NF4_CODE", "NF4Tensor", "quantize_nf4", "dequantize_nf4", "NF4Linear", "Int8Linear", "Int8DynamicLinear", "LLMInt8Linear",
    "GroupQuantLinear", "GPTQLinear", "quantize_model",
]
