"""Recipes: every name of the Megatron Bridge docs, their parallel layouts and defaults, the built-in
architectures (against the real config.json files, and on the meta device against the known sizes),
keyword arguments, output folders, finetuning choices and the FP8 recipe's CPU error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from minibridge.bridge.hf_config import config_from_hf
from minibridge.models import parameter_count
from minibridge.recipes import ALIASES, RECIPES, build_config, gemma, get_recipe, list_recipes, llama
from minibridge.recipes.architectures import HF_CONFIGS, architecture, tokenizer_vocab_size
from minibridge.training.config import ConfigError, PeftConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "hf_configs"

# (TP, PP, VP, CP, SP, seq_length, global batch), from the tables of Megatron Bridge's llama3.md / gemma3.md
# and recipes/llama/llama3.py, recipes/gemma/gemma3.py.
PRETRAIN = {
    "llama32_1b_pretrain_config": (1, 1, None, 1, False, 8192, 512),
    "llama32_3b_pretrain_config": (1, 1, None, 1, False, 8192, 512),
    "llama3_8b_pretrain_config": (1, 1, None, 2, False, 8192, 512),
    "llama3_8b_16k_pretrain_config": (4, 2, None, 2, True, 16384, 512),
    "llama3_8b_64k_pretrain_config": (4, 2, None, 4, True, 65536, 512),
    "llama3_8b_128k_pretrain_config": (4, 2, None, 8, True, 131072, 512),
    "llama3_8b_low_precision_pretrain_config": (1, 1, None, 2, False, 8192, 768),
    "llama3_70b_pretrain_config": (4, 4, 5, 2, True, 8192, 512),
    "llama3_70b_16k_pretrain_config": (8, 2, None, 2, True, 16384, 512),
    "llama3_70b_64k_pretrain_config": (8, 4, None, 8, True, 65536, 512),
    "llama31_8b_pretrain_config": (1, 1, None, 2, False, 8192, 512),
    "llama31_70b_pretrain_config": (4, 4, 5, 2, True, 131072, 512),
    "llama31_405b_pretrain_config": (8, 8, 2, 4, True, 131072, 512),
    "llama3_70b_pretrain_deterministic_config": (4, 4, 5, 2, True, 8192, 512),
    "llama31_405b_pretrain_deterministic_config": (8, 8, 2, 4, True, 131072, 512),
    "gemma3_1b_pretrain_config": (1, 1, None, 1, False, 32768, 512),
}
# name: (LoRA layout, full-finetune layout), each (TP, PP, VP, CP, SP, seq_length, global batch): packed
# sequences of seq_length, as Megatron Bridge 0.6.2 (tests/training/test_megatron_bridge_defaults.py: every field)
FINETUNE = {
    "llama32_1b_finetune_config": ((1, 1, None, 1, False, 4096, 8), (1, 1, None, 1, False, 4096, 8)),
    "llama32_3b_finetune_config": ((1, 1, None, 1, False, 4096, 8), (1, 1, None, 1, False, 4096, 8)),
    "llama3_8b_finetune_config": ((1, 1, None, 1, False, 4096, 8), (2, 1, None, 1, False, 4096, 8)),
    "llama31_8b_finetune_config": ((1, 1, None, 1, False, 4096, 8), (2, 1, None, 1, False, 4096, 8)),
    "llama3_70b_finetune_config": ((8, 1, None, 1, False, 4096, 8), (8, 4, None, 1, False, 4096, 8)),
    "llama31_70b_finetune_config": ((8, 1, None, 1, False, 4096, 8), (8, 4, None, 1, False, 4096, 8)),
    "llama31_405b_finetune_config": ((4, 8, 8, 1, True, 2048, 32), (8, 16, None, 1, True, 2048, 16)),
    "gemma3_1b_finetune_config": ((1, 1, None, 1, False, 4096, 32), (1, 1, None, 1, False, 4096, 32)),
}
# Megatron Bridge 0.6's names of the finetune recipes
NEW_FINETUNE_NAMES = [n.replace("_finetune_config", f"_{kind}_config") for n in FINETUNE for kind in ("sft", "peft")]
DEBUG = ["llama3_debug_pretrain_config", "llama3_debug_finetune_config", "gemma3_debug_pretrain_config",
         "gemma3_debug_finetune_config"]
# hub id -> (file in tests/data/hf_configs, known parameter count)
ARCHITECTURES = {
    "meta-llama/Llama-3.2-1B": ("Llama-3.2-1B", 1.24e9), "meta-llama/Llama-3.2-3B": ("Llama-3.2-3B", 3.21e9),
    "meta-llama/Meta-Llama-3-8B": ("Meta-Llama-3-8B", 8.03e9), "meta-llama/Meta-Llama-3-70B": ("Meta-Llama-3-70B", 70.6e9),
    "meta-llama/Meta-Llama-3.1-8B": ("Llama-3.1-8B", 8.03e9), "meta-llama/Meta-Llama-3.1-70B": ("Llama-3.1-70B", 70.6e9),
    "meta-llama/Meta-Llama-3.1-405B": ("Llama-3.1-405B", 405.9e9), "google/gemma-3-1b": ("gemma-3-1b-it", 1.0e9),
}


def _layout(cfg):
    m = cfg.model
    return (m.tensor_model_parallel_size, m.pipeline_model_parallel_size, m.virtual_pipeline_model_parallel_size,
            m.context_parallel_size, m.sequence_parallel, m.seq_length, cfg.train.global_batch_size)


def test_every_documented_name_is_registered():
    assert set(RECIPES) == set(PRETRAIN) | set(FINETUNE) | set(NEW_FINETUNE_NAMES) | set(DEBUG)
    names = [name for name, _ in list_recipes()]
    assert names == list(RECIPES)
    for name, line in list_recipes():
        assert "TP=" in line and "\n" not in line, name


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_and_validates(name, monkeypatch, tmp_path):
    monkeypatch.setenv("SAVE_DIR", str(tmp_path))
    kwargs = {"pretrained_checkpoint": "/ckpt"} if name.endswith(("finetune_config", "sft_config", "peft_config")) else {}
    cfg = get_recipe(name)(**kwargs)
    assert cfg.dataset.seq_length == cfg.model.seq_length
    if name == "llama3_8b_low_precision_pretrain_config":
        with pytest.raises(ConfigError, match="does not implement FP8/FP4 training"):
            cfg.validate()
    else:
        cfg.validate()
    assert cfg.checkpoint.save.startswith(str(tmp_path))
    json.dumps(cfg.to_dict())


@pytest.mark.parametrize("name", sorted(PRETRAIN))
def test_pretrain_layouts_and_defaults(name):
    cfg = RECIPES[name]()
    assert _layout(cfg) == PRETRAIN[name]
    low = name == "llama3_8b_low_precision_pretrain_config"
    assert cfg.optimizer.lr == (6e-4 if low else 3e-4) and cfg.optimizer.min_lr == (6e-6 if low else 3e-5)
    assert cfg.optimizer.adam_eps == 1e-8
    assert (cfg.optimizer.adam_beta1, cfg.optimizer.adam_beta2, cfg.optimizer.weight_decay) == (0.9, 0.95, 0.1)
    s = cfg.scheduler  # the weight decay the runs use: the scheduler's, over the optimizer's 0.1
    assert (s.start_weight_decay, s.end_weight_decay, s.weight_decay_incr_style) == (0.033, 0.033, "constant")
    assert cfg.model.deterministic_mode == name.endswith("_deterministic_config")
    assert cfg.optimizer.clip_grad == 1.0 and cfg.optimizer.use_distributed_optimizer
    assert (cfg.train.train_iters, cfg.train.micro_batch_size, cfg.train.eval_interval) == (1168251, 1, 2000)
    assert (cfg.scheduler.lr_warmup_iters, cfg.scheduler.lr_decay_style, cfg.checkpoint.save_interval) == (2000, "cosine", 500)
    assert cfg.peft is None and cfg.dataset.kind == "mock" and cfg.train.seed == 1234
    assert cfg.mixed_precision == ("bf16_with_fp8_current_scaling_mixed" if low else "bf16_mixed")


@pytest.mark.parametrize("name", sorted(FINETUNE))
def test_finetune_layouts_and_defaults(name):
    lora, full = RECIPES[name](), RECIPES[name](peft=None)
    assert (_layout(lora), _layout(full)) == FINETUNE[name]
    assert lora.peft.scheme == "lora" and full.peft is None
    assert (lora.optimizer.lr, full.optimizer.lr) == (1e-4, 5e-6)
    assert lora.optimizer.min_lr == 0.0 and full.optimizer.use_distributed_optimizer
    # Megatron Bridge 0.6.2: off for Llama's adapters; Gemma's recipe ends up with it on (its ddp section)
    assert lora.optimizer.use_distributed_optimizer == name.startswith("gemma")
    # no data_paths: SQuAD, as Megatron Bridge's default_squad_config (never mock tokens by accident)
    assert lora.train.seed == 5678 and (lora.dataset.kind, lora.dataset.preset) == ("hf", "squad")
    given = build_config(name, overrides=["dataset.data_paths=[chat.jsonl]", "dataset.tokenizer=/tok"], validate=False)
    assert (given.dataset.kind, given.dataset.preset) == ("sft", None)  # data given: not the SQuAD default
    assert lora.dataset.packing and full.dataset.packing and lora.optimizer.adam_eps == 1e-8
    assert lora.scheduler.end_weight_decay == full.scheduler.start_weight_decay == 0.033
    gemma_recipe = name.startswith("gemma")
    assert lora.train.train_iters == (100 if gemma_recipe else 1000)
    assert lora.scheduler.lr_warmup_iters == (10 if gemma_recipe else 50)
    assert lora.optimizer.adam_beta2 == (0.95 if gemma_recipe else 0.98)
    assert lora.checkpoint.save_interval == (100 if gemma_recipe else 50)


def test_peft_defaults_per_recipe():
    assert llama.llama32_1b_finetune_config().peft == PeftConfig("lora", dim=32, alpha=32)
    assert llama.llama32_1b_finetune_config(peft="dora").peft == PeftConfig("dora", dim=32, alpha=64)
    assert llama.llama3_8b_finetune_config(peft="dora").peft == PeftConfig("dora", dim=8, alpha=16)
    assert llama.llama3_70b_finetune_config().peft == PeftConfig("lora", dim=16, alpha=32)
    assert llama.llama31_405b_finetune_config().peft.target_modules == ["linear_qkv"]
    assert gemma.gemma3_1b_finetune_config().peft == PeftConfig("lora", dim=8, alpha=16)
    assert gemma.gemma3_debug_finetune_config(peft="dora").peft == PeftConfig("dora", dim=8, alpha=16)
    assert llama.llama3_8b_finetune_config(peft="none").peft is None
    custom = PeftConfig("lora", dim=4, alpha=8, target_modules=["linear_fc1"])
    assert llama.llama3_8b_finetune_config(peft=custom).peft is custom
    with pytest.raises(ConfigError, match="peft scheme 'ia3' is not supported"):
        llama.llama3_8b_finetune_config(peft="ia3")


@pytest.mark.parametrize("hub_id", sorted(ARCHITECTURES))
def test_builtin_architectures(hub_id):
    file, size = ARCHITECTURES[hub_id]
    real = config_from_hf(json.loads((CONFIG_DIR / f"{file}.json").read_text()))
    arch = architecture(hub_id)
    assert arch == real  # the same translation of the same numbers as the real config.json
    count = parameter_count(arch)  # shapes only, on meta: nothing is allocated
    assert abs(count - size) / size < 0.01, f"{hub_id}: {count / 1e9:.3f}B parameters, expected ~{size / 1e9}B"


def test_recipe_kwargs(tmp_path, monkeypatch):
    cfg = llama.llama3_8b_pretrain_config(name="run1", dir=str(tmp_path), seq_length=4096, global_batch_size=64,
                                          train_iters=100, lr=1e-4, min_lr=1e-5, lr_warmup_iters=10,
                                          tensor_model_parallel_size=2, wandb_project="p")
    assert (cfg.model.seq_length, cfg.dataset.seq_length, cfg.train.global_batch_size) == (4096, 4096, 64)
    assert (cfg.train.train_iters, cfg.optimizer.lr, cfg.optimizer.min_lr) == (100, 1e-4, 1e-5)
    assert cfg.model.tensor_model_parallel_size == 2 and cfg.model.context_parallel_size == 2
    assert cfg.checkpoint.save == cfg.checkpoint.load == str(tmp_path / "run1" / "checkpoints")
    assert cfg.logger.tensorboard_dir == "auto" and cfg.logger.wandb_project == "p"  # <checkpoint.save>/tb_logs
    monkeypatch.setenv("SAVE_DIR", str(tmp_path / "env"))
    assert gemma.gemma3_1b_pretrain_config(name="g").checkpoint.save == str(tmp_path / "env" / "g" / "checkpoints")
    monkeypatch.delenv("SAVE_DIR")
    monkeypatch.chdir(tmp_path)
    assert llama.llama32_1b_pretrain_config().checkpoint.save == str(tmp_path / "nemo_experiments/default/checkpoints")
    with pytest.raises(TypeError, match="train_iter"):
        llama.llama3_8b_pretrain_config(train_iter=5)


def test_finetune_kwargs():
    cfg = llama.llama3_8b_finetune_config(pretrained_checkpoint="/ckpt", finetune_lr=3e-4, packed_sequence=False,
                                          data_paths=["train.jsonl"])
    assert cfg.optimizer.lr == 3e-4 and cfg.checkpoint.pretrained_checkpoint == "/ckpt"
    assert (cfg.model.seq_length, cfg.train.global_batch_size, cfg.dataset.packing) == (2048, 128, False)
    unpacked = gemma.gemma3_1b_sft_config(packed_sequence=False)
    assert (unpacked.model.seq_length, unpacked.train.global_batch_size, unpacked.dataset.packing) == (2048, 32, False)
    assert (cfg.dataset.kind, cfg.dataset.data_paths) == ("sft", ["train.jsonl"])
    assert gemma.gemma3_1b_finetune_config(train_iters=30).scheduler.lr_decay_iters == 30


def test_data_paths():
    cfg = llama.llama3_debug_pretrain_config(data_paths=["0.3", "/d/a_text_document", "0.7", "/d/b_text_document"])
    assert cfg.dataset.kind == "indexed" and cfg.dataset.blend_weights == [0.3, 0.7]
    assert cfg.dataset.data_paths == ["/d/a_text_document", "/d/b_text_document"]
    assert llama.llama3_debug_pretrain_config(data_paths=["a.jsonl"]).dataset.kind == "jsonl"
    assert llama.llama3_debug_pretrain_config(data_paths=["a.jsonl"], mock=True).dataset.kind == "mock"
    with pytest.raises(ConfigError, match="alternates weight and path"):
        llama.llama3_debug_pretrain_config(data_paths=["0.3", "a", "b"])


def test_low_precision_recipe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = llama.llama3_8b_low_precision_pretrain_config("bf16_with_mxfp8_mixed")
    assert cfg.mixed_precision == "bf16_with_mxfp8_mixed" and cfg.train.global_batch_size == 768
    with pytest.raises(ConfigError, match="'bf16_with_mxfp8_mixed': minibridge does not implement FP8/FP4 training "
                                          r"\(Megatron Bridge does it with Transformer Engine, on compute capability "
                                          r">= 10.0\)"):
        cfg.validate()
    with pytest.raises(ConfigError, match="mixed_precision_recipe='fp8'"):
        llama.llama3_8b_low_precision_pretrain_config("fp8")


def test_debug_recipes_are_cpu_sized():
    for name in ("llama3_debug_pretrain_config", "gemma3_debug_pretrain_config"):
        cfg = RECIPES[name]()
        assert parameter_count(cfg.model.config) < 2_000_000 and cfg.mixed_precision == "fp32"
        assert cfg.model.seq_length <= 256 and cfg.dataset.kind == "mock" and cfg.dataset.num_workers == 0
        build_config(name, overrides=["model.tensor_model_parallel_size=2", "model.sequence_parallel=true"])
    arch = gemma.gemma3_debug_pretrain_config().model.config
    assert arch.sliding_window < 256 and arch.layer_types.count("full_attention") == 1


def test_debug_vocab_from_tokenizer(tmp_path):
    vocab = {f"t{i}": i for i in range(300)}
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab},
                                                          "added_tokens": [{"id": 300}, {"id": 301}]}))
    assert tokenizer_vocab_size(str(tmp_path)) == 302
    cfg = llama.llama3_debug_pretrain_config(tokenizer=str(tmp_path))
    assert cfg.model.config.vocab_size == 302 and cfg.dataset.tokenizer == str(tmp_path)
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        llama.llama3_debug_pretrain_config(tokenizer=str(tmp_path / "missing"))


@pytest.mark.parametrize("name,recipe", [("Llama-3.2-1B", "llama3_debug_finetune_config"),
                                         ("gemma-3-1b-it", "gemma3_debug_finetune_config")])
def test_debug_finetune_takes_the_checkpoint_architecture(hf_checkpoint, name, recipe):
    folder = str(hf_checkpoint(name))
    cfg = build_config(recipe, pretrained_checkpoint=folder, peft_scheme="dora")
    assert cfg.model.config == config_from_hf(json.loads((Path(folder) / "config.json").read_text()))
    assert cfg.peft.scheme == "dora" and cfg.dataset.tokenizer == folder
    other = "gemma3_debug_finetune_config" if recipe.startswith("llama") else "llama3_debug_finetune_config"
    with pytest.raises(ConfigError, match="model; use"):
        RECIPES[other](pretrained_checkpoint=folder)
    with pytest.raises(ConfigError, match="pick the recipe of that model size"):
        RECIPES["gemma3_1b_finetune_config" if "gemma" in name else "llama3_8b_finetune_config"](
            pretrained_checkpoint=folder)


def test_build_config_from_cli_pieces():
    cfg = build_config("llama3_debug_pretrain_config", pretrained_checkpoint="/ckpt", peft_scheme="lora",
                       overrides=["train.train_iters=5", "scheduler.lr_warmup_iters=1"])
    assert cfg.checkpoint.pretrained_checkpoint == "/ckpt" and cfg.peft.scheme == "lora"
    assert not cfg.optimizer.use_distributed_optimizer and cfg.train.train_iters == 5
    full = build_config("llama3_8b_finetune_config", pretrained_checkpoint="/ckpt", peft_scheme="none")
    assert full.peft is None and full.model.tensor_model_parallel_size == 2 and full.optimizer.lr == 5e-6
    with pytest.raises(ConfigError, match="did you mean llama3_8b_pretrain_config"):
        get_recipe("llama3_8b_pretrain")
    with pytest.raises(ConfigError, match="unknown override key"):
        build_config("llama3_debug_pretrain_config", overrides=["train.bogus=1"])


def test_recipes_need_no_test_data():
    """The built-in architectures live in the package, not in tests/."""
    import minibridge.recipes.architectures as architectures

    assert "tests" not in Path(architectures.__file__).parts and len(HF_CONFIGS) == len(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(FINETUNE))
def test_sft_and_peft_names_are_the_finetune_recipe(name):
    sft, peft = RECIPES[name.replace("_finetune", "_sft")], RECIPES[name.replace("_finetune", "_peft")]
    assert sft(train_iters=7).to_dict() == RECIPES[name](peft=None, train_iters=7).to_dict()
    assert peft().to_dict() == RECIPES[name]().to_dict()
    assert peft(peft_scheme="dora").to_dict() == RECIPES[name](peft="dora").to_dict()
    assert peft(peft_scheme="dora").peft.scheme == "dora" and sft().peft is None
    with pytest.raises(ConfigError, match="full fine-tuning and takes no peft"):
        sft(peft="lora")
    with pytest.raises(ConfigError, match="for full fine-tuning use .*_sft_config"):
        peft(peft_scheme="none")
    with pytest.raises(ConfigError, match="takes peft_scheme="):
        peft(peft="lora")
    assert ALIASES[sft.__name__] == (name, "peft=None") and ALIASES[peft.__name__] == (name, "peft=peft_scheme")


def test_list_shows_the_aliases():
    lines = dict(list_recipes())
    assert lines["llama3_8b_sft_config"].startswith("alias of llama3_8b_finetune_config(peft=None). ")
    assert lines["gemma3_1b_peft_config"].startswith("alias of gemma3_1b_finetune_config(peft=peft_scheme). ")
    assert "also named llama3_8b_sft_config / llama3_8b_peft_config" in lines["llama3_8b_finetune_config"]
    assert "TP=8 PP=16 VP=- CP=1 SP=on seq=2048 gbs=16" in lines["llama31_405b_sft_config"]
    assert "llama3_70b_pretrain_config + model.deterministic_mode" in lines["llama3_70b_pretrain_deterministic_config"]


def test_build_config_with_the_new_names():
    cfg = build_config("llama3_8b_peft_config", pretrained_checkpoint="/ckpt", peft_scheme="dora")
    assert cfg.peft == PeftConfig("dora", dim=8, alpha=16) and cfg.checkpoint.pretrained_checkpoint == "/ckpt"
    full = build_config("llama3_8b_sft_config", pretrained_checkpoint="/ckpt", peft_scheme="none")
    assert full.peft is None and full.optimizer.lr == 5e-6 and full.checkpoint.pretrained_checkpoint == "/ckpt"
    with pytest.raises(ConfigError, match="--peft_scheme lora with llama3_8b_sft_config, which is full fine-tuning"):
        build_config("llama3_8b_sft_config", pretrained_checkpoint="/ckpt", peft_scheme="lora")
    deterministic = build_config("llama3_70b_pretrain_deterministic_config", validate=False)
    assert deterministic.model.deterministic_mode and not build_config("llama3_70b_pretrain_config",
                                                                       validate=False).model.deterministic_mode
