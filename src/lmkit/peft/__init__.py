"""lmkit.peft — parameter-efficient fine-tuning.

One file per method: lora.py (LoRA, rsLoRA, merge, named adapters), qlora.py (NF4 base +
LoRA), adalora.py (SVD-form adaptive rank), peft_format.py (Hugging Face PEFT adapter files),
multi_lora.py (many LoRA adapters on one model, chosen per batch row, for serving),
adapter.py, adapter_fusion.py, adapter_drop.py, prefix_tuning.py, prompt_tuning.py,
p_tuning.py, p_tuning_v2.py, bitfit.py, probing.py; registry.py maps method names to them and
finetune.py drives any of them (and full fine-tuning) with the Trainer.
"""

from lmkit.peft.lora import (
    LoraConfig,
    LoraLinear,
    disable_adapters,
    inject_lora,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    set_adapter,
    unload_lora,
    unmerge_lora,
)
from lmkit.peft.peft_format import load_lora, save_lora

__all__ = [
    "LoraConfig", "LoraLinear", "disable_adapters", "inject_lora", "load_lora", "lora_state_dict",
    "mark_only_lora_trainable", "merge_lora", "save_lora", "set_adapter", "unload_lora", "unmerge_lora",
]
