"""Gemma 3 recipes, with the names, keyword arguments and defaults of Megatron Bridge's
`megatron/bridge/recipes/gemma/gemma3.py` (keyword-argument version with `_gemma3_common` /
`_gemma3_finetune_common`) and the table of its docs/models/llm/gemma3.md:

    gemma3_1b_pretrain_config   TP=1 PP=1 CP=1 SP=off  seq 32768, global batch 512, lr 3e-4 -> 3e-5, 2000 warmup
    gemma3_1b_finetune_config   TP=1 PP=1 CP=1 SP=off  packed sequences of 4096 (2048 unpacked), global batch 32,
                                100 iterations, lr 1e-4 (LoRA/DoRA dim 8 alpha 16) or 5e-6 (full), 10 warmup,
                                save every 100; also named gemma3_1b_sft_config (full) and gemma3_1b_peft_config
                                (peft_scheme="lora"|"dora"), Megatron Bridge 0.6's names

All: Adam eps 1e-8, weight decay 0.033 (the scheduler's constant start/end_weight_decay).

Without `data_paths` finetuning trains on SQuAD, as Megatron Bridge's (recipes/common.py). The debug recipes
at the end are CPU-sized and keep Gemma's features: sliding windows (5 local : 1 global), MQA-style GQA,
q/k norms, tied embeddings.
"""

from __future__ import annotations


from minibridge.bridge.hf_config import config_from_hf
from minibridge.models.config import ModelConfig
from minibridge.training.config import ConfigContainer, ConfigError

from .common import (
    HF_CONFIGS, architecture, checkpoint_architecture, finetune_architecture, is_full_sft, make_container,
    debug_architecture, debug_tweaks, peft_config, peft_recipe, sft_recipe,
)

SEQUENCE_LENGTH_32K = 32768
SEQUENCE_LENGTH_128K = 131072


def _gemma3_common(
    hf_path: str | None = None, arch: ModelConfig | None = None, dir: str | None = None, name: str = "default",
    data_paths: list[str] | None = None, mock: bool = False, tokenizer: str | None = None,
    tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: int | None = None, context_parallel_size: int = 1,
    sequence_parallel: bool = False, train_iters: int = 1168251, global_batch_size: int = 512,
    micro_batch_size: int = 1, seq_length: int = SEQUENCE_LENGTH_128K, lr: float = 3e-4, min_lr: float = 3e-5,
    lr_warmup_iters: int = 2000, lr_decay_iters: int | None = None, eval_interval: int = 2000,
    save_interval: int = 500, wandb_project: str | None = None, wandb_entity: str | None = None,
    wandb_exp_name: str | None = None, precision_config: str = "bf16_mixed",
) -> ConfigContainer:
    """Pretraining config of a Gemma 3 text model (`hf_path` names a built-in architecture, or pass `arch`)."""
    return make_container(
        arch or architecture(hf_path), dir=dir, name=name, data_paths=data_paths, mock=mock, finetune=False,
        tokenizer=tokenizer, tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size, sequence_parallel=sequence_parallel, seq_length=seq_length,
        train_iters=train_iters, global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
        eval_interval=eval_interval, eval_iters=32, save_interval=save_interval, seed=1234, lr=lr, min_lr=min_lr,
        lr_warmup_iters=lr_warmup_iters, lr_decay_iters=lr_decay_iters, log_interval=10,
        precision_config=precision_config, wandb_project=wandb_project, wandb_entity=wandb_entity,
        wandb_exp_name=wandb_exp_name,
    )


def gemma3_1b_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Gemma 3 1B pretraining, 32k context."""
    recommended = dict(hf_path="google/gemma-3-1b", tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                       context_parallel_size=1, sequence_parallel=False, seq_length=SEQUENCE_LENGTH_32K)
    return _gemma3_common(**{**recommended, **user_kwargs})


def _gemma3_finetune_common(
    hf_path: str | None = None, arch: ModelConfig | None = None, dir: str | None = None, name: str = "default",
    pretrained_checkpoint: str | None = None, peft=None, data_paths: list[str] | None = None,
    packed_sequence: bool = True, train_iters: int = 100, global_batch_size: int | None = None,
    micro_batch_size: int = 1, seq_length: int | None = None, eval_interval: int = 50, save_interval: int = 100,
    finetune_lr: float | None = None, min_lr: float = 0.0, lr_warmup_iters: int = 10,
    lr_decay_iters: int | None = None, wandb_project: str | None = None, wandb_entity: str | None = None,
    wandb_exp_name: str | None = None, precision_config: str = "bf16_mixed", tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1, virtual_pipeline_model_parallel_size: int | None = None,
    context_parallel_size: int = 1, sequence_parallel: bool = False, recipe: str = "gemma3 finetune",
) -> ConfigContainer:
    """Finetuning config of a Gemma 3 text model. data_paths: .jsonl prompt/answer files."""
    arch = finetune_architecture(arch or architecture(hf_path), pretrained_checkpoint, recipe)
    seq_length = seq_length or (4096 if packed_sequence else 2048)
    return make_container(
        arch, dir=dir, name=name, data_paths=data_paths, mock=False, finetune=True, seq_length=seq_length,
        train_iters=train_iters, global_batch_size=global_batch_size or 32, micro_batch_size=micro_batch_size,
        eval_interval=eval_interval, eval_iters=10, save_interval=save_interval, seed=5678,
        lr=finetune_lr if finetune_lr is not None else 1e-4, min_lr=min_lr, lr_warmup_iters=lr_warmup_iters,
        lr_decay_iters=lr_decay_iters if lr_decay_iters is not None else train_iters, log_interval=10,
        precision_config=precision_config, pretrained_checkpoint=pretrained_checkpoint, peft=peft,
        packing=packed_sequence, wandb_project=wandb_project, wandb_entity=wandb_entity,
        wandb_exp_name=wandb_exp_name, tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size, sequence_parallel=sequence_parallel,
    )


def _peft_and_lr(user_kwargs: dict, full_lr: float, peft_lr: float) -> tuple[dict, object]:
    """Split `peft` off the kwargs (LoRA by default, dim 8 alpha 16 as Megatron Bridge's Gemma recipes) and
    pick the learning rate of full or adapter training unless one was given."""
    user_kwargs = dict(user_kwargs)
    peft = user_kwargs.pop("peft", "lora")
    if user_kwargs.get("finetune_lr") is None:
        user_kwargs["finetune_lr"] = full_lr if is_full_sft(peft) else peft_lr
    return user_kwargs, peft_config(peft, dim=8, alpha=16) if isinstance(peft, str) else peft_config(peft)


def gemma3_1b_finetune_config(**user_kwargs) -> ConfigContainer:
    """Gemma 3 1B finetuning: LoRA (default), DoRA or full (peft=None).

    Adapters: dim 8, alpha 16 (Megatron Bridge's Gemma values)."""
    user_kwargs, peft = _peft_and_lr(user_kwargs, full_lr=5e-6, peft_lr=1e-4)
    cfg = _gemma3_finetune_common(**{"hf_path": "google/gemma-3-1b", "recipe": "gemma3_1b_finetune_config",
                                     **user_kwargs, "peft": peft})
    # ZeRO-1 with adapters too: Megatron Bridge 0.6.2's Gemma PEFT recipe turns it off in its optimizer section
    # but on in its ddp section, and its ConfigContainer then turns both on (Llama's PEFT recipes set both off).
    cfg.optimizer.use_distributed_optimizer = True
    return cfg


gemma3_1b_sft_config = sft_recipe(gemma3_1b_finetune_config, "gemma3_1b_sft_config")
gemma3_1b_peft_config = peft_recipe(gemma3_1b_finetune_config, "gemma3_1b_peft_config")


# ---------------------------------------------------------------------------------------------------
# CPU-sized debug recipes: the 1B architecture shrunk (hidden 128, 6 layers of which the 6th is global,
# window 64 < seq 256 so windows matter, 4 heads, 2 KV heads: TP=2 divides every sharded size), fp32.
# ---------------------------------------------------------------------------------------------------

DEBUG_ARCH = config_from_hf({
    **HF_CONFIGS["google/gemma-3-1b"], "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "query_pre_attn_scalar": 32, "sliding_window": 64,
}, source="gemma3 debug architecture")
_DEBUG = dict(name="gemma3_debug", train_iters=20, global_batch_size=8, micro_batch_size=2, seq_length=256,
              lr_warmup_iters=2, eval_interval=10, save_interval=10, precision_config="fp32")


def gemma3_debug_pretrain_config(tokenizer: str | None = None, vocab_size: int | None = None,
                                 **user_kwargs) -> ConfigContainer:
    """Tiny Gemma 3 pretraining on CPU (hidden 128, 6 layers, sliding window 64).

    The vocabulary is `vocab_size`, else the size of `tokenizer` (an HF folder), else 1024 for mock tokens."""
    arch = debug_architecture(DEBUG_ARCH, tokenizer, vocab_size)
    kwargs = {**_DEBUG, "lr": 1e-3, "min_lr": 1e-4, **user_kwargs}
    return debug_tweaks(_gemma3_common(arch=arch, tokenizer=tokenizer, **kwargs))


def gemma3_debug_finetune_config(**user_kwargs) -> ConfigContainer:
    """Tiny Gemma 3 finetuning on CPU: LoRA (default), DoRA or full (peft=None).

    The architecture is `pretrained_checkpoint`'s when that is an HF folder or a Megatron checkpoint, else the debug
    pretrain one."""
    user_kwargs, peft = _peft_and_lr(user_kwargs, full_lr=1e-4, peft_lr=1e-3)
    arch = checkpoint_architecture(user_kwargs.get("pretrained_checkpoint")) or DEBUG_ARCH
    if arch.family != "gemma3":
        raise ConfigError(f"gemma3_debug_finetune_config: {user_kwargs['pretrained_checkpoint']} is a {arch.family} "
                          f"model; use llama3_debug_finetune_config")
    kwargs = {**_DEBUG, "name": "gemma3_debug_finetune", "packed_sequence": False, **user_kwargs}
    return debug_tweaks(_gemma3_finetune_common(arch=arch, peft=peft, **kwargs))
