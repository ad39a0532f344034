"""Gemma 3 recipes, with the names, keyword arguments and defaults of Megatron Bridge's
`megatron/bridge/recipes/gemma/gemma3.py` (`_gemma3_common` / `_gemma3_finetune_common`) and the table of its
docs/models/llm/gemma3.md: TP=PP=CP=1. The debug recipes at the end are CPU-sized and keep Gemma's features:
sliding windows (5 local : 1 global), MQA-style GQA, q/k norms, tied embeddings.
"""

from __future__ import annotations

from minibridge.bridge.hf_config import config_from_hf
from minibridge.training.config import ConfigContainer

from .architectures import HF_CONFIGS
from .common import FINETUNE, PRETRAIN, aliases, debug_finetune, debug_pretrain, recipe

SEQUENCE_LENGTH_32K = 32768
SEQUENCE_LENGTH_128K = 131072
GEMMA3_1B = "google/gemma-3-1b"
# _gemma3_common: 128k sequences unless a recipe says otherwise.
GEMMA3_PRETRAIN = {**PRETRAIN, "seq_length": SEQUENCE_LENGTH_128K}
# _gemma3_finetune_common: 100 iterations, global batch 32 packed or not, 10 warmup, lr decay over the whole run;
# LoRA / DoRA dim 8 alpha 16.
GEMMA3_FINETUNE = {**FINETUNE, "train_iters": 100, "eval_interval": 50, "save_interval": 100, "lr_warmup_iters": 10,
                   "train.eval_iters": 10, "logger.log_interval": 10, "recipe.global_batch_size": (32, 32),
                   "recipe.peft": dict(dim=8, alpha=16), "recipe.decay_to_end": True}
# ZeRO-1 with adapters too: Megatron Bridge 0.6.2's Gemma PEFT recipe turns it off in its optimizer section but on
# in its ddp section, and its ConfigContainer then turns both on (Llama's PEFT recipes set both off).
ZERO1_WITH_ADAPTERS = {"optimizer.use_distributed_optimizer": True}


@recipe(GEMMA3_PRETRAIN, hf_path=GEMMA3_1B, seq_length=SEQUENCE_LENGTH_32K)
def gemma3_1b_pretrain_config(**kwargs) -> ConfigContainer:
    """Gemma 3 1B pretraining, 32k context."""


@recipe(GEMMA3_FINETUNE, ZERO1_WITH_ADAPTERS, hf_path=GEMMA3_1B)
def gemma3_1b_finetune_config(**kwargs) -> ConfigContainer:
    """Gemma 3 1B finetuning: LoRA (default), DoRA or full (peft=None)."""


gemma3_1b_sft_config, gemma3_1b_peft_config = aliases(gemma3_1b_finetune_config)


# ---------------------------------------------------------------------------------------------------
# CPU-sized debug recipes: the 1B architecture shrunk (hidden 128, 6 layers of which the 6th is global,
# window 64 < seq 256 so windows matter, 4 heads, 2 KV heads: TP=2 divides every sharded size), fp32.
# ---------------------------------------------------------------------------------------------------

DEBUG_ARCH = config_from_hf({
    **HF_CONFIGS[GEMMA3_1B], "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "query_pre_attn_scalar": 32, "sliding_window": 64,
}, source="gemma3 debug architecture")


@recipe(GEMMA3_PRETRAIN, debug_pretrain(DEBUG_ARCH, "gemma3_debug"))
def gemma3_debug_pretrain_config(**kwargs) -> ConfigContainer:
    """Tiny Gemma 3 pretraining on CPU (hidden 128, 6 layers, sliding window 64).

    The vocabulary is `vocab_size`, else the size of `tokenizer` (an HF folder), else 1024 for mock tokens."""


@recipe(GEMMA3_FINETUNE, debug_finetune(DEBUG_ARCH, "gemma3_debug_finetune", "llama3_debug_finetune_config"))
def gemma3_debug_finetune_config(**kwargs) -> ConfigContainer:
    """Tiny Gemma 3 finetuning on CPU: LoRA (default), DoRA or full (peft=None).

    The architecture is `pretrained_checkpoint`'s when that is an HF folder or a Megatron checkpoint, else the debug
    pretrain one."""
