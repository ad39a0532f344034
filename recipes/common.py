"""What the Llama and Gemma recipes share: built-in architectures, output folders, data and PEFT choices,
and `make_container`, which turns a recipe's numbers into a ConfigContainer.

The architectures are the `config.json` of each Hugging Face checkpoint (values from the public model
cards, the same files as tests/data/hf_configs), translated by the bridge's `config_from_hf`, so a recipe
needs no download to pretrain from scratch.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from minibridge.bridge.hf_config import config_from_hf, read_config_json
from minibridge.bridge.hf_folder import inside
from minibridge.bridge.json_checks import parse_json
from minibridge.models.config import ModelConfig
from minibridge.training.config import (
    CheckpointConfig, ConfigContainer, ConfigError, DatasetConfig, LoggerConfig, ModelSettings, OptimizerConfig,
    PeftConfig, SchedulerConfig, TrainingConfig,
)

_LLAMA3 = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_act="silu", rms_norm_eps=1e-5,
    rope_theta=500000.0, attention_bias=False, mlp_bias=False, initializer_range=0.02, tie_word_embeddings=False,
    max_position_embeddings=8192, rope_scaling=None,
)
# Llama 3.1 / 3.2 rope: frequency-dependent scaling of the 8k original context (factor 8; 32 on 3.2).
_LLAMA31 = dict(max_position_embeddings=131072, rope_scaling=dict(
    rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=8192))
_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
           num_key_value_heads=8)
_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
            num_key_value_heads=8)

# distributed_fused_adam_with_cosine_annealing's start_weight_decay = end_weight_decay (Megatron Bridge 0.6.2):
# the weight decay every recipe's runs actually use, whatever optimizer.weight_decay says.
SCHEDULED_WEIGHT_DECAY = 0.033

# Keyed by the hub id Megatron Bridge's recipes pass to AutoBridge.from_hf_pretrained.
HF_CONFIGS = {
    "meta-llama/Llama-3.2-1B": {**_LLAMA3, **_LLAMA31, "rope_scaling": {**_LLAMA31["rope_scaling"], "factor": 32.0},
                                "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                                "tie_word_embeddings": True},
    "meta-llama/Llama-3.2-3B": {**_LLAMA3, **_LLAMA31, "rope_scaling": {**_LLAMA31["rope_scaling"], "factor": 32.0},
                                "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                                "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
                                "tie_word_embeddings": True},
    "meta-llama/Meta-Llama-3-8B": {**_LLAMA3, **_8B},
    "meta-llama/Meta-Llama-3-70B": {**_LLAMA3, **_70B},
    "meta-llama/Meta-Llama-3.1-8B": {**_LLAMA3, **_LLAMA31, **_8B},
    "meta-llama/Meta-Llama-3.1-70B": {**_LLAMA3, **_LLAMA31, **_70B},
    "meta-llama/Meta-Llama-3.1-405B": {**_LLAMA3, **_LLAMA31, "hidden_size": 16384, "intermediate_size": 53248,
                                       "num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8},
    # google/gemma-3-1b-pt and -it share this architecture: MQA (1 KV head), 5 local : 1 global layers.
    "google/gemma-3-1b": dict(
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", vocab_size=262144, hidden_size=1152,
        intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, max_position_embeddings=32768,
        query_pre_attn_scalar=256, rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling=None,
        sliding_window=512, sliding_window_pattern=6, pad_token_id=0, initializer_range=0.02,
    ),
}


def architecture(hf_path: str) -> ModelConfig:
    return config_from_hf(HF_CONFIGS[hf_path], source=f"built-in {hf_path}")


def checkpoint_dir(dir: str | None, name: str) -> str:
    """{dir}/{name}/checkpoints as Megatron Bridge lays it out; without `dir`: $SAVE_DIR, else
    ./nemo_experiments (Megatron Bridge's default). TensorBoard follows the run into <save>/tb_logs
    (logger.tensorboard_dir="auto"), wherever checkpoint.save is moved."""
    base = dir or os.environ.get("SAVE_DIR") or os.path.join(os.getcwd(), "nemo_experiments")
    return os.path.join(base, name, "checkpoints")


def split_blend(data_paths: list[str] | None) -> tuple[list[str], list[float] | None]:
    """Megatron's blend list: ["a", "b"] or weights interleaved, ["0.3", "a", "0.7", "b"]."""
    paths = [str(p) for p in data_paths or []]

    def is_number(text: str) -> bool:
        try:
            float(text)
            return True
        except ValueError:
            return False

    if not paths or not is_number(paths[0]):
        return paths, None
    if len(paths) % 2 or not all(is_number(w) for w in paths[::2]):
        raise ConfigError(f"data_paths={paths}: a weighted blend alternates weight and path, "
                          f"e.g. ['0.3', 'a', '0.7', 'b']")
    return paths[1::2], [float(w) for w in paths[::2]]


FINETUNE_DATASET = "squad"  # what a fine-tuning recipe trains on without data_paths, as Megatron Bridge's


def dataset_kind(paths: list[str], finetune: bool) -> str:
    """mock (pretraining without data, as Megatron Bridge), hf (fine-tuning without data: SQuAD), sft, jsonl
    or indexed."""
    if not paths:
        return "hf" if finetune else "mock"
    if finetune:
        return "sft"
    return "jsonl" if all(p.endswith((".jsonl", ".json")) for p in paths) else "indexed"


def peft_config(peft, **changes) -> PeftConfig | None:
    """peft argument of a finetune recipe: "lora", "dora", None / "none" (full training) or a PeftConfig."""
    if peft is None or isinstance(peft, PeftConfig):
        return peft
    if isinstance(peft, str) and peft.lower() == "none":
        return None
    if not isinstance(peft, str):
        raise ConfigError(f"peft={peft!r}: expected 'lora', 'dora', None or a PeftConfig")
    return PeftConfig.default(peft, **changes)


def is_full_sft(peft) -> bool:
    return peft is None or (isinstance(peft, str) and peft.lower() == "none")


def checkpoint_architecture(pretrained_checkpoint: str | None) -> ModelConfig | None:
    """The architecture of an HF folder (its config.json) or of a Megatron checkpoint (its run_config.yaml);
    None for anything else (a minibridge checkpoint holds the recipe's model)."""
    if pretrained_checkpoint and (Path(pretrained_checkpoint) / "config.json").is_file():
        path = Path(pretrained_checkpoint) / "config.json"
        return config_from_hf(read_config_json(pretrained_checkpoint), source=str(path))
    if pretrained_checkpoint:
        from minibridge.bridge.megatron_config import megatron_architecture

        return megatron_architecture(pretrained_checkpoint)
    return None


def checkpoint_tokenizer(pretrained_checkpoint: str | None) -> str | None:
    """The tokenizer that comes with a pretrained checkpoint: an HF folder's own, a Megatron checkpoint's
    tokenizer/ folder."""
    if not pretrained_checkpoint or checkpoint_architecture(pretrained_checkpoint) is None:
        return None
    if (Path(pretrained_checkpoint) / "config.json").is_file():
        return pretrained_checkpoint
    from minibridge.bridge.megatron_config import megatron_tokenizer

    found = megatron_tokenizer(pretrained_checkpoint)
    return str(found) if found else None


def finetune_architecture(builtin: ModelConfig, pretrained_checkpoint: str | None, recipe: str) -> ModelConfig:
    """A finetune recipe's architecture: the checkpoint's when it is an HF folder (rope details such as
    3 vs 3.1 scaling come from there), after checking it is the model the recipe's layout was made for."""
    found = checkpoint_architecture(pretrained_checkpoint)
    if found is None:
        return builtin
    shape = ("family", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
    if any(getattr(found, k) != getattr(builtin, k) for k in shape):
        have = {k: getattr(found, k) for k in shape}
        want = {k: getattr(builtin, k) for k in shape}
        raise ConfigError(f"{recipe}: pretrained checkpoint {pretrained_checkpoint} is {have}, but this recipe is for "
                          f"{want}; pick the recipe of that model size")
    return found


def tokenizer_vocab_size(folder: str) -> int:
    """Number of token ids of an HF tokenizer folder (tokenizer.json: vocabulary + added tokens)."""
    path = inside(folder, "tokenizer.json")
    if not path.is_file():
        raise ConfigError(f"tokenizer={folder}: no tokenizer.json there; expected a Hugging Face tokenizer folder")
    data = parse_json(path.read_bytes(), str(path))
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab))) if isinstance(vocab, list) else []
    ids += [t.get("id") for t in (data.get("added_tokens") or []) if isinstance(t, dict)] if isinstance(data, dict) else []
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"{path}: expected token ids (integers >= 0) under model.vocab (BPE dict or Unigram list) "
                          f"and added_tokens")
    return max(ids) + 1


def make_container(
    arch: ModelConfig, *, dir: str | None, name: str, data_paths: list[str] | None, mock: bool, finetune: bool,
    tensor_model_parallel_size: int, pipeline_model_parallel_size: int,
    virtual_pipeline_model_parallel_size: int | None, context_parallel_size: int, sequence_parallel: bool,
    seq_length: int, train_iters: int, global_batch_size: int, micro_batch_size: int, eval_interval: int,
    eval_iters: int, save_interval: int, seed: int, lr: float, min_lr: float, lr_warmup_iters: int,
    lr_decay_iters: int | None, log_interval: int, precision_config: str, adam_beta2: float = 0.95,
    adam_eps: float = 1e-8, pretrained_checkpoint: str | None = None, peft: PeftConfig | None = None,
    packing: bool = False, tokenizer: str | None = None, num_workers: int = 8, wandb_project: str | None = None,
    wandb_entity: str | None = None, wandb_exp_name: str | None = None, **model_settings,
) -> ConfigContainer:
    """One ConfigContainer from a recipe's numbers (Adam + cosine as Megatron Bridge's
    distributed_fused_adam_with_cosine_annealing: beta1 0.9, eps 1e-8, clip 1.0, weight decay 0.1 in the
    optimizer section, which its scheduler overwrites with a constant 0.033 at every step)."""
    if not isinstance(precision_config, str):
        raise ConfigError(f"precision_config={precision_config!r}: expected a mixed-precision recipe name such "
                          f"as 'bf16_mixed' or 'fp32'")
    save = checkpoint_dir(dir, name)
    if not finetune and pretrained_checkpoint is None and seq_length > arch.max_position_embeddings:
        # Pretraining from scratch at a longer context (the 16k/64k/128k recipes): the model being made
        # is trained for seq_length positions, as Megatron Bridge's providers take them from seq_length.
        arch = dataclasses.replace(arch, max_position_embeddings=seq_length)
    paths, weights = split_blend(data_paths)
    kind = "mock" if mock else dataset_kind(paths, finetune)
    if tokenizer is None:
        tokenizer = checkpoint_tokenizer(pretrained_checkpoint)  # an HF folder carries its tokenizer
    return ConfigContainer(
        model=ModelSettings(
            config=arch, tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
            context_parallel_size=context_parallel_size, sequence_parallel=sequence_parallel, seq_length=seq_length,
            **model_settings,
        ),
        train=TrainingConfig(train_iters=train_iters, global_batch_size=global_batch_size,
                             micro_batch_size=micro_batch_size, eval_interval=eval_interval, eval_iters=eval_iters,
                             seed=seed),
        optimizer=OptimizerConfig(lr=lr, min_lr=min_lr, adam_beta2=adam_beta2, adam_eps=adam_eps,
                                  use_distributed_optimizer=peft is None),  # as Megatron Bridge: off for PEFT
        scheduler=SchedulerConfig(lr_warmup_iters=lr_warmup_iters, lr_decay_iters=lr_decay_iters,
                                  start_weight_decay=SCHEDULED_WEIGHT_DECAY, end_weight_decay=SCHEDULED_WEIGHT_DECAY,
                                  weight_decay_incr_style="constant"),
        dataset=DatasetConfig(kind=kind, data_paths=paths, blend_weights=weights, seq_length=seq_length,
                              tokenizer=tokenizer, packing=packing, num_workers=num_workers,
                              preset=FINETUNE_DATASET if kind == "hf" else None),
        checkpoint=CheckpointConfig(save=save, load=save, save_interval=save_interval,
                                    pretrained_checkpoint=pretrained_checkpoint),
        logger=LoggerConfig(log_interval=log_interval, wandb_project=wandb_project,
                            wandb_entity=wandb_entity, wandb_exp_name=wandb_exp_name),
        peft=peft,
        mixed_precision=precision_config,
    )


def layout(c: ConfigContainer) -> str:
    """One line: TP/PP/VP/CP/SP, sequence length and global batch."""
    m = c.model
    return (f"TP={m.tensor_model_parallel_size} PP={m.pipeline_model_parallel_size} "
            f"VP={m.virtual_pipeline_model_parallel_size or '-'} CP={m.context_parallel_size} "
            f"SP={'on' if m.sequence_parallel else 'off'} seq={m.seq_length} gbs={c.train.global_batch_size}")


def debug_tweaks(cfg: ConfigContainer) -> ConfigContainer:
    """What every CPU-sized debug recipe sets on top of its family's recipe."""
    cfg.model.make_vocab_size_divisible_by = 1  # logits keep the HF shape
    cfg.dataset.num_workers = 0
    cfg.train.eval_iters = 2
    cfg.logger.log_interval = 1
    return cfg


def debug_architecture(base, tokenizer: str | None, vocab_size: int | None):
    """`base` with the vocabulary of `vocab_size`, else of `tokenizer` (an HF folder), else its own."""
    vocab = vocab_size or (tokenizer_vocab_size(tokenizer) if tokenizer else base.vocab_size)
    return dataclasses.replace(base, vocab_size=vocab)


def sft_recipe(finetune: Callable[..., ConfigContainer], name: str) -> Callable[..., ConfigContainer]:
    """Megatron Bridge 0.6's `<model>_sft_config`: the finetune recipe with full training (peft=None)."""

    def recipe(**user_kwargs) -> ConfigContainer:
        if "peft" in user_kwargs or "peft_scheme" in user_kwargs:
            raise ConfigError(f"{name} is full fine-tuning and takes no peft / peft_scheme; for adapters use "
                              f"{name.replace('_sft_config', '_peft_config')}(peft_scheme='lora')")
        return finetune(**user_kwargs, peft=None)

    summary = (finetune.__doc__ or "").strip().splitlines()[0].split(":")[0]
    recipe.__name__ = recipe.__qualname__ = name
    recipe.__doc__ = f"{summary}, full (all weights): {finetune.__name__}(peft=None) under its Megatron Bridge 0.6 name."
    return recipe


def peft_recipe(finetune: Callable[..., ConfigContainer], name: str) -> Callable[..., ConfigContainer]:
    """Megatron Bridge 0.6's `<model>_peft_config(peft_scheme="lora"|"dora")`: the finetune recipe with adapters."""

    def recipe(peft_scheme="lora", **user_kwargs) -> ConfigContainer:
        if "peft" in user_kwargs:
            raise ConfigError(f"{name} takes peft_scheme= ('lora', 'dora' or a PeftConfig), not peft=")
        if is_full_sft(peft_scheme):
            raise ConfigError(f"{name}(peft_scheme={peft_scheme!r}): expected 'lora', 'dora' or a PeftConfig; "
                              f"for full fine-tuning use {name.replace('_peft_config', '_sft_config')}")
        return finetune(**user_kwargs, peft=peft_scheme)

    summary = (finetune.__doc__ or "").strip().splitlines()[0].split(":")[0]
    recipe.__name__ = recipe.__qualname__ = name
    recipe.__doc__ = (f"{summary}, LoRA (default) or DoRA adapters: {finetune.__name__}(peft=peft_scheme) under "
                      f"its Megatron Bridge 0.6 name.")
    return recipe


def deterministic(cfg: ConfigContainer) -> ConfigContainer:
    """Megatron Bridge's apply_determinism_overrides: model.deterministic_mode on (it also turns off the fused
    cross-entropy and TP comm overlap, which minibridge does not have, and sets CUBLAS_WORKSPACE_CONFIG,
    which training.loop sets in deterministic mode)."""
    cfg.model.deterministic_mode = True
    return cfg
