"""LoRA / DoRA fine-tuning: adapters on any (tensor-parallel) linear, merge, HF PEFT export and import.

    from minibridge.peft import apply_peft, merge_peft
    model = apply_peft(model, scheme="lora", rank=32, alpha=32, targets=["linear_qkv", "linear_proj"])
    bridge.save_hf_adapter(model, "adapter_dir")             # peft.PeftModel.from_pretrained reads it
    bridge.save_hf_pretrained(merge_peft(model), "hf_dir")   # full HF weights, adapters folded in
    model = bridge.load_hf_adapter(bridge.to_model(), "adapter_dir")   # continue training an HF adapter
"""

from .apply import (
    DEFAULT_ALPHA, DEFAULT_TARGETS, adapter_parameters, adapters_hidden, apply_peft, attach_peft, count_parameters,
    has_adapters, init_adapters, merge_peft, remove_peft, select_modules,
)
from .lora import LoraMixin, is_adapted

__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_TARGETS", "LoraMixin", "adapter_parameters", "adapters_hidden", "apply_peft",
    "attach_peft", "count_parameters", "has_adapters", "init_adapters", "is_adapted", "merge_peft", "remove_peft",
    "select_modules",
]
