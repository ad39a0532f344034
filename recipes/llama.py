"""Llama 3 / 3.1 / 3.2 recipes, with the names, keyword arguments, defaults and parallel layouts of
Megatron Bridge's `megatron/bridge/recipes/llama/llama3.py` (`_llama3_common` / `_llama3_finetune_common`) and
the tables of its docs/models/llm/llama3.md; the defaults are common.PRETRAIN / FINETUNE (Adam beta2 0.98 when
fine-tuning), `python -m minibridge.train --list` prints each recipe's layout. Each `<model>_finetune_config` is
also named `<model>_sft_config` (full) and `<model>_peft_config` (adapters), Megatron Bridge 0.6's names.
"""

from __future__ import annotations

from minibridge.models.config import ModelConfig, RopeConfig
from minibridge.training.config import ConfigContainer, ConfigError

from .common import FINETUNE, PRETRAIN, aliases, build, debug_finetune, debug_pretrain, layout, recipe

SEQUENCE_LENGTH_16K = 16384
SEQUENCE_LENGTH_64K = 65536
SEQUENCE_LENGTH_128K = 131072
LOW_PRECISION_RECIPES = ("bf16_with_mxfp8_mixed", "bf16_with_fp8_current_scaling_mixed", "bf16_with_nvfp4_mixed")
LLAMA32_1B, LLAMA32_3B = "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B"
LLAMA3_8B, LLAMA3_70B = "meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B"
LLAMA31_8B, LLAMA31_70B, LLAMA31_405B = ("meta-llama/Meta-Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-70B",
                                         "meta-llama/Meta-Llama-3.1-405B")
LLAMA3_FINETUNE = {**FINETUNE, "optimizer.adam_beta2": 0.98}  # _llama3_finetune_common's beta2
PIPELINE_SPLIT = dict(account_for_embedding_in_pipeline_split=True, account_for_loss_in_pipeline_split=True)

# Megatron Bridge's apply_determinism_overrides: model.deterministic_mode on (it also turns off the fused
# cross-entropy and TP comm overlap, which minibridge does not have, and sets CUBLAS_WORKSPACE_CONFIG, which
# training.loop sets in deterministic mode).
DETERMINISTIC = {"model.deterministic_mode": True}


@recipe(PRETRAIN, hf_path=LLAMA32_1B)
def llama32_1b_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3.2 1B pretraining."""


@recipe(PRETRAIN, hf_path=LLAMA32_3B)
def llama32_3b_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3.2 3B pretraining."""


@recipe(PRETRAIN, hf_path=LLAMA3_8B, **layout(1, cp=2))
def llama3_8b_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3 8B pretraining, 8k context."""


@recipe(PRETRAIN, hf_path=LLAMA3_8B, **layout(4, 2, cp=2, sp=True), seq_length=SEQUENCE_LENGTH_16K)
def llama3_8b_16k_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3 8B pretraining, 16k context."""


@recipe(PRETRAIN, hf_path=LLAMA3_8B, **layout(4, 2, cp=4, sp=True), seq_length=SEQUENCE_LENGTH_64K)
def llama3_8b_64k_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3 8B pretraining, 64k context."""


@recipe(PRETRAIN, hf_path=LLAMA3_8B, **layout(4, 2, cp=8, sp=True), seq_length=SEQUENCE_LENGTH_128K)
def llama3_8b_128k_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3 8B pretraining, 128k context."""


_LOW_PRECISION = {**PRETRAIN, "hf_path": LLAMA3_8B, **layout(1, cp=2), "lr": 6e-4, "min_lr": 6e-6,
                  "global_batch_size": 768}


def llama3_8b_low_precision_pretrain_config(
    mixed_precision_recipe: str = "bf16_with_fp8_current_scaling_mixed", **kwargs
) -> ConfigContainer:
    """Llama 3 8B pretraining in FP8 current scaling / MXFP8 / NVFP4 (GPU only).

    validate() refuses these formats (minibridge has no FP8/FP4 training). Megatron Bridge requires
    `mixed_precision_recipe`; the default here lets `--recipe` use it alone."""
    if mixed_precision_recipe not in LOW_PRECISION_RECIPES:
        raise ConfigError(f"mixed_precision_recipe={mixed_precision_recipe!r}: expected one of "
                          f"{', '.join(LOW_PRECISION_RECIPES)} (the ones Megatron Bridge has tested for this recipe)")
    return build(_LOW_PRECISION, {"precision_config": mixed_precision_recipe, **kwargs},
                 "llama3_8b_low_precision_pretrain_config")


@recipe(PRETRAIN, hf_path=LLAMA3_70B, **layout(4, 4, 5, cp=2, sp=True))
def llama3_70b_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3 70B pretraining, 8k context."""


@recipe(llama3_70b_pretrain_config, DETERMINISTIC)
def llama3_70b_pretrain_deterministic_config(**kwargs) -> ConfigContainer:
    """Llama 3 70B pretraining, 8k context, bit-exact reruns (llama3_70b_pretrain_config + model.deterministic_mode)."""


@recipe(PRETRAIN, hf_path=LLAMA3_70B, **layout(8, 2, cp=2, sp=True), seq_length=SEQUENCE_LENGTH_16K)
def llama3_70b_16k_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3 70B pretraining, 16k context."""


@recipe(PRETRAIN, hf_path=LLAMA3_70B, **layout(8, 4, cp=8, sp=True), seq_length=SEQUENCE_LENGTH_64K)
def llama3_70b_64k_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3 70B pretraining, 64k context."""


@recipe(PRETRAIN, hf_path=LLAMA31_8B, **layout(1, cp=2))
def llama31_8b_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3.1 8B pretraining (Megatron Bridge keeps 8k sequences here)."""


@recipe(PRETRAIN, hf_path=LLAMA31_70B, **layout(4, 4, 5, cp=2, sp=True), seq_length=SEQUENCE_LENGTH_128K)
def llama31_70b_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3.1 70B pretraining, 128k context."""


@recipe(PRETRAIN, hf_path=LLAMA31_405B, **layout(8, 8, 2, cp=4, sp=True), seq_length=SEQUENCE_LENGTH_128K,
        **PIPELINE_SPLIT)
def llama31_405b_pretrain_config(**kwargs) -> ConfigContainer:
    """Llama 3.1 405B pretraining, 128k context."""


@recipe(llama31_405b_pretrain_config, DETERMINISTIC)
def llama31_405b_pretrain_deterministic_config(**kwargs) -> ConfigContainer:
    """Llama 3.1 405B pretraining, 128k context, bit-exact reruns
    (llama31_405b_pretrain_config + deterministic_mode)."""


# ---------------------------------------------------------------------------------------------------
# Finetuning: recipe.lora / recipe.full are the layouts of adapter and full training, recipe.peft the adapters'
# ---------------------------------------------------------------------------------------------------

_8B_ADAPTERS = {"recipe.full": layout(2), "recipe.peft": dict(dim=8, alpha=16)}  # Megatron Bridge's values for 8B
# 70B: LoRA fits one 8-GPU node.
_70B_ADAPTERS = {"recipe.lora": layout(8), "recipe.full": layout(8, 4), "recipe.peft": dict(dim=16, alpha=32)}


@recipe(LLAMA3_FINETUNE, hf_path=LLAMA32_1B)
def llama32_1b_finetune_config(**kwargs) -> ConfigContainer:
    """Llama 3.2 1B finetuning: LoRA (default), DoRA or full (peft=None)."""


llama32_1b_sft_config, llama32_1b_peft_config = aliases(llama32_1b_finetune_config)


@recipe(LLAMA3_FINETUNE, hf_path=LLAMA32_3B)
def llama32_3b_finetune_config(**kwargs) -> ConfigContainer:
    """Llama 3.2 3B finetuning: LoRA (default), DoRA or full (peft=None)."""


llama32_3b_sft_config, llama32_3b_peft_config = aliases(llama32_3b_finetune_config)


@recipe(LLAMA3_FINETUNE, _8B_ADAPTERS, hf_path=LLAMA3_8B)
def llama3_8b_finetune_config(**kwargs) -> ConfigContainer:
    """Llama 3 8B finetuning: LoRA (default), DoRA or full (peft=None)."""


llama3_8b_sft_config, llama3_8b_peft_config = aliases(llama3_8b_finetune_config)


@recipe(LLAMA3_FINETUNE, _8B_ADAPTERS, hf_path=LLAMA31_8B)
def llama31_8b_finetune_config(**kwargs) -> ConfigContainer:
    """Llama 3.1 8B finetuning: LoRA (default), DoRA or full (peft=None)."""


llama31_8b_sft_config, llama31_8b_peft_config = aliases(llama31_8b_finetune_config)


@recipe(LLAMA3_FINETUNE, _70B_ADAPTERS, hf_path=LLAMA3_70B)
def llama3_70b_finetune_config(**kwargs) -> ConfigContainer:
    """Llama 3 70B finetuning: LoRA (default), DoRA or full (peft=None)."""


llama3_70b_sft_config, llama3_70b_peft_config = aliases(llama3_70b_finetune_config)


@recipe(LLAMA3_FINETUNE, _70B_ADAPTERS, hf_path=LLAMA31_70B)
def llama31_70b_finetune_config(**kwargs) -> ConfigContainer:
    """Llama 3.1 70B finetuning: LoRA (default), DoRA or full (peft=None)."""


llama31_70b_sft_config, llama31_70b_peft_config = aliases(llama31_70b_finetune_config)


@recipe(LLAMA3_FINETUNE, {"recipe.lora": {**layout(4, 8, 8, sp=True), "global_batch_size": 32},
                   "recipe.full": {**layout(8, 16, sp=True), "global_batch_size": 16},
                   "recipe.peft": dict(dim=16, alpha=32, target_modules=["linear_qkv"])},
        hf_path=LLAMA31_405B, seq_length=2048, **PIPELINE_SPLIT)
def llama31_405b_finetune_config(**kwargs) -> ConfigContainer:
    """Llama 3.1 405B finetuning: LoRA (default), DoRA or full (peft=None)."""


llama31_405b_sft_config, llama31_405b_peft_config = aliases(llama31_405b_finetune_config)


# ---------------------------------------------------------------------------------------------------
# CPU-sized debug recipes: fp32 (exact comparisons), pretraining on mock tokens unless data_paths; TP=2 divides
# every sharded size (4 heads, 2 KV heads, 256 ffn, vocab) so `model.tensor_model_parallel_size=2` runs on 2 ranks.
# ---------------------------------------------------------------------------------------------------

DEBUG_ARCH = ModelConfig(
    family="llama", vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
    num_kv_heads=2, head_dim=32, rms_norm_eps=1e-5, max_position_embeddings=131072,
    rope=RopeConfig(theta=500000.0, rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192),
)


@recipe(PRETRAIN, debug_pretrain(DEBUG_ARCH, "llama3_debug"))
def llama3_debug_pretrain_config(**kwargs) -> ConfigContainer:
    """Tiny Llama 3 pretraining on CPU (hidden 128, 4 layers, 4 heads, 2 KV heads).

    The vocabulary is `vocab_size`, else the size of `tokenizer` (an HF folder), else 1024 for mock tokens."""


@recipe(LLAMA3_FINETUNE, debug_finetune(DEBUG_ARCH, "llama3_debug_finetune", "gemma3_debug_finetune_config"))
def llama3_debug_finetune_config(**kwargs) -> ConfigContainer:
    """Tiny Llama 3 finetuning on CPU: LoRA (default), DoRA or full (peft=None).

    The architecture is `pretrained_checkpoint`'s when that is an HF folder or a Megatron checkpoint, else the debug
    pretrain one."""
