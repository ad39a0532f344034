"""Llama 3 / 3.1 / 3.2 recipes, with the names, keyword arguments, defaults and parallel layouts of
Megatron Bridge's `megatron/bridge/recipes/llama/llama3.py` (the keyword-argument version with
`_llama3_common` / `_llama3_finetune_common`) and the tables of its docs/models/llm/llama3.md:

    pretrain                 TP  PP  VP  CP  SP   seq      finetune (LoRA | full)  TP  PP  VP  SP
    llama32_1b / 3b           1   1   -   1  off  8192     llama32_1b / 3b          1 | 1
    llama3_8b                 1   1   -   2  off  8192     llama3_8b, llama31_8b    1 | 2
    llama3_8b_16k             4   2   -   2  on   16384    llama3_70b, llama31_70b  8 | 8   - | 4
    llama3_8b_64k             4   2   -   4  on   65536    llama31_405b             4 | 8   8 | 16  8 | -  on
    llama3_8b_128k            4   2   -   8  on   131072
    llama3_70b                4   4   5   2  on   8192
    llama3_70b_16k            8   2   -   2  on   16384
    llama3_70b_64k            8   4   -   8  on   65536
    llama31_8b                1   1   -   2  off  8192
    llama31_70b               4   4   5   2  on   131072
    llama31_405b              8   8   2   4  on   131072

Pretraining (the code's defaults; the docs are silent): 1,168,251 iterations, global batch 512, micro 1,
lr 3e-4 -> 3e-5 cosine after 2000 warmup, Adam (0.9, 0.95) eps 1e-8, weight decay 0.033 (the scheduler's
constant start/end_weight_decay over the optimizer's 0.1), clip 1.0, eval every 2000, checkpoint every 500,
bf16_mixed. Finetuning: 1000 iterations, packed sequences of 4096 (405B: 2048), global batch 8 (405B: 32 LoRA,
16 full), lr 1e-4 (LoRA/DoRA) or 5e-6 (full), 50 warmup, beta2 0.98, save every 50; packed_sequence=False
gives 2048-token rows and global batch 128.

Names: Megatron Bridge 0.6's `<model>_sft_config` (full) and `<model>_peft_config(peft_scheme=...)` are
`<model>_finetune_config` (the older name, LoRA by default) with peft=None / peft=peft_scheme: one recipe,
three names, the same defaults. `*_pretrain_deterministic_config` adds model.deterministic_mode.

A finetune recipe without `data_paths` trains on SQuAD, as Megatron Bridge's (dataset.kind=hf, preset squad: the
hub, the HF cache, or dataset.hf_path=LOCAL_COPY); mock tokens only with dataset.kind=mock. The debug recipes at
the end are CPU-sized.
"""

from __future__ import annotations


from minibridge.models.config import ModelConfig, RopeConfig
from minibridge.training.config import ConfigContainer, ConfigError

from .common import (
    architecture, checkpoint_architecture, deterministic, finetune_architecture, is_full_sft, make_container,
    peft_config, peft_recipe, sft_recipe, debug_architecture, debug_tweaks,
)

SEQUENCE_LENGTH_16K = 16384
SEQUENCE_LENGTH_64K = 65536
SEQUENCE_LENGTH_128K = 131072
LOW_PRECISION_RECIPES = ("bf16_with_mxfp8_mixed", "bf16_with_fp8_current_scaling_mixed", "bf16_with_nvfp4_mixed")


def _layout(tp: int, pp: int = 1, vp: int | None = None, cp: int = 1, sp: bool = False) -> dict:
    return dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                virtual_pipeline_model_parallel_size=vp, context_parallel_size=cp, sequence_parallel=sp)


def _llama3_common(
    hf_path: str | None = None, arch: ModelConfig | None = None, dir: str | None = None, name: str = "default",
    data_paths: list[str] | None = None, mock: bool = False, tokenizer: str | None = None,
    tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: int | None = None, context_parallel_size: int = 1,
    sequence_parallel: bool = False, account_for_embedding_in_pipeline_split: bool = False,
    account_for_loss_in_pipeline_split: bool = False, train_iters: int = 1168251, global_batch_size: int = 512,
    micro_batch_size: int = 1, seq_length: int = 8192, lr: float = 3e-4, min_lr: float = 3e-5, adam_eps: float = 1e-8,
    lr_warmup_iters: int = 2000, lr_decay_iters: int | None = None, eval_interval: int = 2000,
    save_interval: int = 500, wandb_project: str | None = None, wandb_entity: str | None = None,
    wandb_exp_name: str | None = None, precision_config: str = "bf16_mixed",
) -> ConfigContainer:
    """Pretraining config of a Llama 3 model: `hf_path` names a built-in architecture (or pass `arch`).
    data_paths: Megatron .bin/.idx prefixes or .jsonl files, optionally weighted ["0.3", "a", "0.7", "b"];
    None (or mock=True) trains on mock tokens."""
    return make_container(
        arch or architecture(hf_path), dir=dir, name=name, data_paths=data_paths, mock=mock, finetune=False,
        tokenizer=tokenizer, tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size, sequence_parallel=sequence_parallel,
        account_for_embedding_in_pipeline_split=account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=account_for_loss_in_pipeline_split, seq_length=seq_length,
        train_iters=train_iters, global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
        eval_interval=eval_interval, eval_iters=32, save_interval=save_interval, seed=1234, lr=lr, min_lr=min_lr,
        adam_eps=adam_eps, lr_warmup_iters=lr_warmup_iters, lr_decay_iters=lr_decay_iters, log_interval=10,
        precision_config=precision_config, wandb_project=wandb_project, wandb_entity=wandb_entity,
        wandb_exp_name=wandb_exp_name,
    )


def _pretrain(hf_path: str, recommended: dict, user_kwargs: dict) -> ConfigContainer:
    return _llama3_common(**{"hf_path": hf_path, **recommended, **user_kwargs})


def llama32_1b_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.2 1B pretraining."""
    return _pretrain("meta-llama/Llama-3.2-1B", _layout(1), user_kwargs)


def llama32_3b_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.2 3B pretraining."""
    return _pretrain("meta-llama/Llama-3.2-3B", _layout(1), user_kwargs)


def llama3_8b_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 8B pretraining, 8k context."""
    return _pretrain("meta-llama/Meta-Llama-3-8B", _layout(1, cp=2), user_kwargs)


def llama3_8b_16k_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 8B pretraining, 16k context."""
    recommended = {**_layout(4, 2, cp=2, sp=True), "seq_length": SEQUENCE_LENGTH_16K}
    return _pretrain("meta-llama/Meta-Llama-3-8B", recommended, user_kwargs)


def llama3_8b_64k_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 8B pretraining, 64k context."""
    recommended = {**_layout(4, 2, cp=4, sp=True), "seq_length": SEQUENCE_LENGTH_64K}
    return _pretrain("meta-llama/Meta-Llama-3-8B", recommended, user_kwargs)


def llama3_8b_128k_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 8B pretraining, 128k context."""
    recommended = {**_layout(4, 2, cp=8, sp=True), "seq_length": SEQUENCE_LENGTH_128K}
    return _pretrain("meta-llama/Meta-Llama-3-8B", recommended, user_kwargs)


def llama3_8b_low_precision_pretrain_config(
    mixed_precision_recipe: str = "bf16_with_fp8_current_scaling_mixed", **user_kwargs
) -> ConfigContainer:
    """Llama 3 8B pretraining in FP8 current scaling / MXFP8 / NVFP4 (GPU only).

    On CPU, validate() explains that the number format needs a GPU and stops.

    Megatron Bridge requires `mixed_precision_recipe`; the default here lets `--recipe` use it alone.
    Its NVFP4 variant also keeps the last 4 layers in bf16, which has no setting here yet.
    """
    if mixed_precision_recipe not in LOW_PRECISION_RECIPES:
        raise ConfigError(f"mixed_precision_recipe={mixed_precision_recipe!r}: expected one of "
                          f"{', '.join(LOW_PRECISION_RECIPES)} (the ones Megatron Bridge has tested for this recipe)")
    recommended = {**_layout(1, cp=2), "precision_config": mixed_precision_recipe, "lr": 6e-4, "min_lr": 6e-6,
                   "adam_eps": 1e-8, "micro_batch_size": 1, "global_batch_size": 768}
    return _pretrain("meta-llama/Meta-Llama-3-8B", recommended, user_kwargs)


def llama3_70b_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 70B pretraining, 8k context."""
    return _pretrain("meta-llama/Meta-Llama-3-70B", _layout(4, 4, 5, cp=2, sp=True), user_kwargs)


def llama3_70b_16k_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 70B pretraining, 16k context."""
    recommended = {**_layout(8, 2, cp=2, sp=True), "seq_length": SEQUENCE_LENGTH_16K}
    return _pretrain("meta-llama/Meta-Llama-3-70B", recommended, user_kwargs)


def llama3_70b_64k_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 70B pretraining, 64k context."""
    recommended = {**_layout(8, 4, cp=8, sp=True), "seq_length": SEQUENCE_LENGTH_64K}
    return _pretrain("meta-llama/Meta-Llama-3-70B", recommended, user_kwargs)


def llama31_8b_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.1 8B pretraining (Megatron Bridge keeps 8k sequences here)."""
    return _pretrain("meta-llama/Meta-Llama-3.1-8B", _layout(1, cp=2), user_kwargs)


def llama31_70b_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.1 70B pretraining, 128k context."""
    recommended = {**_layout(4, 4, 5, cp=2, sp=True), "seq_length": SEQUENCE_LENGTH_128K}
    return _pretrain("meta-llama/Meta-Llama-3.1-70B", recommended, user_kwargs)


def llama31_405b_pretrain_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.1 405B pretraining, 128k context."""
    recommended = {**_layout(8, 8, 2, cp=4, sp=True), "seq_length": SEQUENCE_LENGTH_128K, "micro_batch_size": 1,
                   "account_for_embedding_in_pipeline_split": True, "account_for_loss_in_pipeline_split": True}
    return _pretrain("meta-llama/Meta-Llama-3.1-405B", recommended, user_kwargs)


def llama3_70b_pretrain_deterministic_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 70B pretraining, 8k context, bit-exact reruns (llama3_70b_pretrain_config + model.deterministic_mode)."""
    return deterministic(llama3_70b_pretrain_config(**user_kwargs))


def llama31_405b_pretrain_deterministic_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.1 405B pretraining, 128k context, bit-exact reruns (llama31_405b_pretrain_config + deterministic_mode)."""
    return deterministic(llama31_405b_pretrain_config(**user_kwargs))


# ---------------------------------------------------------------------------------------------------
# Finetuning
# ---------------------------------------------------------------------------------------------------


def _llama3_finetune_common(
    hf_path: str | None = None, arch: ModelConfig | None = None, dir: str | None = None, name: str = "default",
    pretrained_checkpoint: str | None = None, peft=None, data_paths: list[str] | None = None,
    packed_sequence: bool = True, train_iters: int = 1000, global_batch_size: int | None = None,
    micro_batch_size: int = 1, seq_length: int | None = None, eval_interval: int = 30, save_interval: int = 50,
    finetune_lr: float = 1e-4, min_lr: float = 0.0, lr_warmup_iters: int = 50, lr_decay_iters: int | None = None,
    wandb_project: str | None = None, wandb_entity: str | None = None, wandb_exp_name: str | None = None,
    precision_config: str = "bf16_mixed", tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: int | None = None, context_parallel_size: int = 1,
    sequence_parallel: bool = False, account_for_embedding_in_pipeline_split: bool = False,
    account_for_loss_in_pipeline_split: bool = False, recipe: str = "llama3 finetune",
) -> ConfigContainer:
    """Finetuning config; the layout comes from the calling recipe. data_paths: .jsonl prompt/answer files.
    Packed sequences (on by default, as Megatron Bridge 0.6) fill each row of seq_length tokens (4096; 2048
    without packing) with several conversations, so a global batch of 8 rows (128 without) holds about as much."""
    arch = finetune_architecture(arch or architecture(hf_path), pretrained_checkpoint, recipe)
    seq_length = seq_length or (4096 if packed_sequence else 2048)  # packed size = seq_length; SQuAD fits 2k unpacked
    return make_container(
        arch, dir=dir, name=name, data_paths=data_paths, mock=False, finetune=True, seq_length=seq_length,
        train_iters=train_iters, global_batch_size=global_batch_size or (8 if packed_sequence else 128),
        micro_batch_size=micro_batch_size, eval_interval=eval_interval, eval_iters=32, save_interval=save_interval,
        seed=5678, lr=finetune_lr, min_lr=min_lr, lr_warmup_iters=lr_warmup_iters, lr_decay_iters=lr_decay_iters,
        adam_beta2=0.98, log_interval=1, precision_config=precision_config, pretrained_checkpoint=pretrained_checkpoint,
        peft=peft, packing=packed_sequence, wandb_project=wandb_project, wandb_entity=wandb_entity,
        wandb_exp_name=wandb_exp_name, tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size, sequence_parallel=sequence_parallel,
        account_for_embedding_in_pipeline_split=account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=account_for_loss_in_pipeline_split,
    )


def _finetune(hf_path: str, recipe: str, user_kwargs: dict, lora: dict, full: dict, peft_changes: dict | None = None,
              extra: dict | None = None) -> ConfigContainer:
    """A finetune recipe: LoRA (default), DoRA or full (peft=None) with the layout and lr of each."""
    user_kwargs = dict(user_kwargs)
    peft = user_kwargs.pop("peft", "lora")
    full_sft = is_full_sft(peft)
    if user_kwargs.get("finetune_lr") is None:
        user_kwargs["finetune_lr"] = 5e-6 if full_sft else 1e-4
    peft = peft_config(peft, **(peft_changes or {})) if isinstance(peft, str) else peft_config(peft)
    layout = full if full_sft else lora
    return _llama3_finetune_common(**{"hf_path": hf_path, "recipe": recipe, **layout, **(extra or {}),
                                      **user_kwargs, "peft": peft})


def llama32_1b_finetune_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.2 1B finetuning: LoRA (default), DoRA or full (peft=None)."""
    return _finetune("meta-llama/Llama-3.2-1B", "llama32_1b_finetune_config", user_kwargs, _layout(1), _layout(1))


def llama32_3b_finetune_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.2 3B finetuning: LoRA (default), DoRA or full (peft=None)."""
    return _finetune("meta-llama/Llama-3.2-3B", "llama32_3b_finetune_config", user_kwargs, _layout(1), _layout(1))


def llama3_8b_finetune_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 8B finetuning: LoRA (default), DoRA or full (peft=None).

    Adapters: dim 8, alpha 16 (Megatron Bridge's values for 8B)."""
    return _finetune("meta-llama/Meta-Llama-3-8B", "llama3_8b_finetune_config", user_kwargs, _layout(1), _layout(2),
                     dict(dim=8, alpha=16))


def llama31_8b_finetune_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.1 8B finetuning: LoRA (default), DoRA or full (peft=None).

    Adapters: dim 8, alpha 16 (Megatron Bridge's values for 8B)."""
    return _finetune("meta-llama/Meta-Llama-3.1-8B", "llama31_8b_finetune_config", user_kwargs, _layout(1),
                     _layout(2), dict(dim=8, alpha=16))


def llama3_70b_finetune_config(**user_kwargs) -> ConfigContainer:
    """Llama 3 70B finetuning: LoRA (default), DoRA or full (peft=None).

    Adapters: dim 16, alpha 32; LoRA fits one 8-GPU node."""
    return _finetune("meta-llama/Meta-Llama-3-70B", "llama3_70b_finetune_config", user_kwargs, _layout(8),
                     _layout(8, 4), dict(dim=16, alpha=32))


def llama31_70b_finetune_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.1 70B finetuning: LoRA (default), DoRA or full (peft=None).

    Adapters: dim 16, alpha 32; LoRA fits one 8-GPU node."""
    return _finetune("meta-llama/Meta-Llama-3.1-70B", "llama31_70b_finetune_config", user_kwargs, _layout(8),
                     _layout(8, 4), dict(dim=16, alpha=32))


def llama31_405b_finetune_config(**user_kwargs) -> ConfigContainer:
    """Llama 3.1 405B finetuning: LoRA (default), DoRA or full (peft=None).

    Adapters on linear_qkv only, dim 16, alpha 32; global batch 32 (LoRA) or 16 (full), seq 2048."""
    full_sft = is_full_sft(user_kwargs.get("peft", "lora"))
    extra = {"global_batch_size": 16 if full_sft else 32, "seq_length": 2048,
             "account_for_embedding_in_pipeline_split": True, "account_for_loss_in_pipeline_split": True}
    return _finetune("meta-llama/Meta-Llama-3.1-405B", "llama31_405b_finetune_config", user_kwargs,
                     _layout(4, 8, 8, sp=True), _layout(8, 16, sp=True),
                     dict(dim=16, alpha=32, target_modules=["linear_qkv"]), extra)


# Megatron Bridge 0.6's names of the same recipes: <model>_sft_config (full) and <model>_peft_config (adapters).
llama32_1b_sft_config = sft_recipe(llama32_1b_finetune_config, "llama32_1b_sft_config")
llama32_1b_peft_config = peft_recipe(llama32_1b_finetune_config, "llama32_1b_peft_config")
llama32_3b_sft_config = sft_recipe(llama32_3b_finetune_config, "llama32_3b_sft_config")
llama32_3b_peft_config = peft_recipe(llama32_3b_finetune_config, "llama32_3b_peft_config")
llama3_8b_sft_config = sft_recipe(llama3_8b_finetune_config, "llama3_8b_sft_config")
llama3_8b_peft_config = peft_recipe(llama3_8b_finetune_config, "llama3_8b_peft_config")
llama31_8b_sft_config = sft_recipe(llama31_8b_finetune_config, "llama31_8b_sft_config")
llama31_8b_peft_config = peft_recipe(llama31_8b_finetune_config, "llama31_8b_peft_config")
llama3_70b_sft_config = sft_recipe(llama3_70b_finetune_config, "llama3_70b_sft_config")
llama3_70b_peft_config = peft_recipe(llama3_70b_finetune_config, "llama3_70b_peft_config")
llama31_70b_sft_config = sft_recipe(llama31_70b_finetune_config, "llama31_70b_sft_config")
llama31_70b_peft_config = peft_recipe(llama31_70b_finetune_config, "llama31_70b_peft_config")
llama31_405b_sft_config = sft_recipe(llama31_405b_finetune_config, "llama31_405b_sft_config")
llama31_405b_peft_config = peft_recipe(llama31_405b_finetune_config, "llama31_405b_peft_config")


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
_DEBUG = dict(name="llama3_debug", train_iters=20, global_batch_size=8, micro_batch_size=2, seq_length=256,
              lr_warmup_iters=2, eval_interval=10, save_interval=10, precision_config="fp32")


def llama3_debug_pretrain_config(tokenizer: str | None = None, vocab_size: int | None = None,
                                 **user_kwargs) -> ConfigContainer:
    """Tiny Llama 3 pretraining on CPU (hidden 128, 4 layers, 4 heads, 2 KV heads).

    The vocabulary is `vocab_size`, else the size of `tokenizer` (an HF folder), else 1024 for mock tokens."""
    arch = debug_architecture(DEBUG_ARCH, tokenizer, vocab_size)
    kwargs = {**_DEBUG, "lr": 1e-3, "min_lr": 1e-4, **user_kwargs}
    return debug_tweaks(_llama3_common(arch=arch, tokenizer=tokenizer, **kwargs))


def llama3_debug_finetune_config(**user_kwargs) -> ConfigContainer:
    """Tiny Llama 3 finetuning on CPU: LoRA (default), DoRA or full (peft=None).

    The architecture is `pretrained_checkpoint`'s when that is an HF folder or a Megatron checkpoint, else the debug
    pretrain one."""
    user_kwargs = dict(user_kwargs)
    peft = user_kwargs.pop("peft", "lora")
    arch = checkpoint_architecture(user_kwargs.get("pretrained_checkpoint")) or DEBUG_ARCH
    if arch.family != "llama":
        raise ConfigError(f"llama3_debug_finetune_config: {user_kwargs['pretrained_checkpoint']} is a {arch.family} "
                          f"model; use gemma3_debug_finetune_config")
    if user_kwargs.get("finetune_lr") is None:
        user_kwargs["finetune_lr"] = 1e-4 if is_full_sft(peft) else 1e-3
    kwargs = {**_DEBUG, "name": "llama3_debug_finetune", "packed_sequence": False, **_layout(1), **user_kwargs}
    return debug_tweaks(_llama3_finetune_common(arch=arch, peft=peft_config(peft), **kwargs))
