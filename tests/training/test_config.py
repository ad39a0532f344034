"""Config dataclasses, typed dotted overrides, validate(), to_dict/from_dict and the command line."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from minibridge.models.config import FULL, SLIDING
from minibridge.recipes import gemma, llama
from minibridge.training.config import ConfigContainer, ConfigError, PeftConfig
from minibridge.training.command_line import parse_cli
from minibridge.training.overrides import apply_overrides, parse_value


@pytest.fixture
def cfg() -> ConfigContainer:
    return llama.llama3_debug_pretrain_config(dir="/tmp/mb")


@pytest.fixture
def gemma_cfg() -> ConfigContainer:
    return gemma.gemma3_debug_pretrain_config(dir="/tmp/mb")


# ----------------------------------------------------------------------------------------- typed values


def test_each_type_parses(cfg):
    apply_overrides(cfg, [
        "train.global_batch_size=64", "train.train_iters=1e3", "train.micro_batch_size=1_0",
        "optimizer.lr=3e-4", "optimizer.min_lr=0", "model.sequence_parallel=true", "optimizer.use_distributed_optimizer=0",
        "checkpoint.save=/data/run", "checkpoint.keep_last=null", "train.eval_interval=None",
        "scheduler.lr_decay_style=wsd", "scheduler.lr_wsd_decay_iters=100", "mixed_precision=bf16_mixed",
        "model.virtual_pipeline_model_parallel_size=2", "model.recompute_granularity=selective",
    ])
    assert (cfg.train.global_batch_size, cfg.train.train_iters, cfg.train.micro_batch_size) == (64, 1000, 10)
    assert cfg.optimizer.lr == 3e-4 and cfg.optimizer.min_lr == 0.0 and isinstance(cfg.optimizer.min_lr, float)
    assert cfg.model.sequence_parallel is True and cfg.optimizer.use_distributed_optimizer is False
    assert cfg.checkpoint.save == "/data/run" and cfg.checkpoint.keep_last is None and cfg.train.eval_interval is None
    assert cfg.scheduler.lr_decay_style == "WSD"  # Literal choices match case-insensitively, stored canonical
    assert cfg.mixed_precision == "bf16_mixed" and cfg.model.virtual_pipeline_model_parallel_size == 2
    assert cfg.model.recompute_granularity == "selective"


@pytest.mark.parametrize("raw,expected", [
    ('["a.jsonl", "b.jsonl"]', ["a.jsonl", "b.jsonl"]), ("[a.jsonl,b.jsonl]", ["a.jsonl", "b.jsonl"]),
    ("a.jsonl, b.jsonl", ["a.jsonl", "b.jsonl"]), ("a.jsonl", ["a.jsonl"]), ("[]", []),
])
def test_list_forms(cfg, raw, expected):
    apply_overrides(cfg, [f"dataset.data_paths={raw}"])
    assert cfg.dataset.data_paths == expected


def test_list_of_numbers_and_union(cfg):
    apply_overrides(cfg, ["dataset.blend_weights=[0.3, 0.7]", "checkpoint.export_hf_on_finish=true"])
    assert cfg.dataset.blend_weights == [0.3, 0.7] and cfg.checkpoint.export_hf_on_finish is True
    apply_overrides(cfg, ["checkpoint.export_hf_on_finish=/out/hf", "dataset.blend_weights=none"])
    assert cfg.checkpoint.export_hf_on_finish == "/out/hf" and cfg.dataset.blend_weights is None
    with pytest.raises(ConfigError, match=r"dataset.blend_weights='\[0.3, x\]': expected a list of a number"):
        apply_overrides(cfg, ["dataset.blend_weights=[0.3, x]"])


@pytest.mark.parametrize("item,message", [
    ("train.train_iters=abc", r"train.train_iters='abc': expected an integer"),
    ("train.train_iters=2.5", r"expected an integer"),
    ("optimizer.lr=fast", r"optimizer.lr='fast': expected a number"),
    ("model.sequence_parallel=maybe", r"expected a bool \(true/false/1/0\)"),
    ("train.train_iters=none", r"expected an integer"),  # not Optional
    ("scheduler.lr_decay_style=cosin", r"expected one of cosine, linear, constant, WSD; did you mean 'cosine'"),
    ("mixed_precision=bf16", r"did you mean 'bf16_mixed'"),
    ("peft=qlora", r"peft='qlora': expected one of lora, dora, none"),
])
def test_bad_values_name_key_value_and_type(cfg, item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(cfg, [item])


@pytest.mark.parametrize("item,suggestion", [
    ("train.global_batchsize=64", "train.global_batch_size"),
    ("optimizer.learning_rate=1", "optimizer.lr"),  # right section, wrong field: that section's fields
    ("trian.train_iters=5", "train.train_iters"),  # misspelt section
    ("model.tensor_parallel_size=2", "model.tensor_model_parallel_size"),
    ("checkpoint.save_intervals=5", "checkpoint.save_interval"),
])
def test_unknown_keys_suggest_closest(cfg, item, suggestion):
    with pytest.raises(ConfigError, match="unknown override key") as err:
        apply_overrides(cfg, [item])
    assert suggestion in str(err.value)


def test_structural_errors(cfg):
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(cfg, ["train.train_iters"])
    with pytest.raises(ConfigError, match="is a group, not a value"):
        apply_overrides(cfg, ["model.config=x"])
    with pytest.raises(ConfigError, match="peft is None"):
        apply_overrides(cfg, ["peft.dim=8"])


def test_all_errors_at_once_and_nothing_applied(cfg):
    before = copy.deepcopy(cfg)
    with pytest.raises(ConfigError) as err:
        apply_overrides(cfg, ["train.train_iters=7", "train.x=1", "optimizer.lr=abc"])
    assert "train.x" in str(err.value) and "optimizer.lr" in str(err.value)
    assert cfg == before  # parsed first, applied only when everything parses
    with pytest.raises(ConfigError, match="layer_types has 3 entries"):
        apply_overrides(cfg, ["train.train_iters=7", "model.layer_types=[full_attention,full_attention,full_attention]"])
    assert cfg == before


def test_parse_value_directly():
    assert parse_value("k", "'quoted str'", str) == "quoted str"
    assert parse_value("k", "YES", bool) is True and parse_value("k", "off", bool) is False


# ---------------------------------------------------------------------------------- model.* routing


def test_model_keys_route_to_layout_or_architecture(cfg):
    apply_overrides(cfg, ["model.tensor_model_parallel_size=2", "model.hidden_size=256", "model.num_attention_heads=8",
                          "model.ffn_hidden_size=512", "model.vocab_size=2048", "model.rope.theta=1e6",
                          "model.config.rms_norm_eps=1e-6"])
    arch = cfg.model.config
    assert cfg.model.tensor_model_parallel_size == 2
    assert (arch.hidden_size, arch.num_heads, arch.intermediate_size, arch.vocab_size) == (256, 8, 512, 2048)
    assert arch.rope.theta == 1e6 and arch.rope.rope_type == "llama3" and arch.rms_norm_eps == 1e-6


def test_the_layout_is_declared_once(cfg):
    """ModelSettings and the provider extend MegatronLayout: the same fields, first and in its order (so the
    dry-run YAML keeps its order), and parallel_config() is the one translation to ParallelConfig."""
    from dataclasses import fields

    from minibridge.bridge.provider import ModelProvider
    from minibridge.parallel import MegatronLayout, ParallelConfig
    from minibridge.training.config import ModelSettings

    layout = [f.name for f in fields(MegatronLayout)]
    for cls in (ModelSettings, ModelProvider):
        assert issubclass(cls, MegatronLayout) and [f.name for f in fields(cls)][:len(layout)] == layout
    apply_overrides(cfg, ["model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2",
                          "model.virtual_pipeline_model_parallel_size=2", "model.pipeline_layout=[1,1,1,1]"])
    assert cfg.model.parallel_config() == ParallelConfig(tp=2, pp=2, vp=2, vocab_multiple=1,
                                                         pipeline_layout=(1, 1, 1, 1))
    assert ModelSettings(config=cfg.model.config, recompute_granularity=None).recompute_granularity == "none"
    provider = ModelProvider(config=cfg.model.config, tensor_model_parallel_size=2, seq_length=None)
    assert provider.validate_layout() == ParallelConfig(tp=2, vocab_multiple=128)


def test_num_layers_rederives_layer_types(cfg, gemma_cfg):
    apply_overrides(cfg, ["model.num_layers=2"])
    assert cfg.model.config.layer_types == (FULL, FULL)
    apply_overrides(gemma_cfg, ["model.num_layers=12"])  # Gemma's every-6th-global pattern is kept
    types = gemma_cfg.model.config.layer_types
    assert len(types) == 12 and [i for i, t in enumerate(types) if t == FULL] == [5, 11]
    apply_overrides(gemma_cfg, ["model.sliding_window_pattern=2"])
    assert gemma_cfg.model.config.layer_types == (SLIDING, FULL) * 6
    apply_overrides(gemma_cfg, ["model.num_layers=3", "model.layer_types=[full_attention,sliding_attention,full_attention]"])
    assert gemma_cfg.model.config.layer_types == (FULL, SLIDING, FULL)
    with pytest.raises(ConfigError, match="follow no sliding-window pattern"):
        apply_overrides(gemma_cfg, ["model.num_layers=4"])


def test_bad_architecture_value(cfg):
    with pytest.raises(ConfigError, match="num_heads .* must be a multiple of num_kv_heads"):
        apply_overrides(cfg, ["model.num_kv_heads=3"])
    with pytest.raises(ConfigError, match="hidden_act"):
        apply_overrides(cfg, ["model.hidden_act=relu"])


def test_seq_length_is_one_setting(cfg):
    apply_overrides(cfg, ["model.seq_length=128"])
    assert cfg.dataset.seq_length == 128
    apply_overrides(cfg, ["dataset.sequence_length=64"])  # Megatron Bridge's name
    assert cfg.model.seq_length == 64
    cfg.dataset.seq_length = 32
    with pytest.raises(ConfigError, match="dataset.seq_length=32 differs from model.seq_length=64"):
        cfg.validate()


def test_peft_overrides(cfg):
    apply_overrides(cfg, ["peft.dim=8", "peft=dora", "peft.target_modules=linear_qkv,linear_proj"])
    assert cfg.peft == PeftConfig(scheme="dora", dim=8, alpha=64, target_modules=["linear_qkv", "linear_proj"])
    apply_overrides(cfg, ["peft=none"])
    assert cfg.peft is None


# ------------------------------------------------------------------------------------------- validate


@pytest.mark.parametrize("items,message", [
    (["train.global_batch_size=10", "train.micro_batch_size=4"], "not divisible by train.micro_batch_size=4"),
    (["optimizer.lr=1e-5", "optimizer.min_lr=1e-4"], "expected 0 <= min_lr <= lr"),
    (["checkpoint.save_interval=0"], "checkpoint.save_interval=0: expected a positive integer"),
    (["model.seq_length=0"], "model.seq_length=0: expected a positive integer"),
    (["scheduler.lr_warmup_iters=20"], "lr_warmup_iters=20 must be smaller than train.train_iters=20"),
    (["scheduler.lr_decay_style=WSD"], "scheduler.lr_wsd_decay_iters=None: expected a positive integer"),
    (["model.virtual_pipeline_model_parallel_size=2"], r"virtual pipeline stages \(vp=2\) need pipeline parallelism"),
    (["model.pipeline_model_parallel_size=3"], r"is not divisible by pp\*vp=3 pipeline stages"),
    (["model.tensor_model_parallel_size=3"], "num_heads=4 is not divisible by tensor parallel size tp=3"),
    (["model.context_parallel_size=3"], r"divisible by 2 \* cp = 6 \(context_parallel_size=3"),
    (["dataset.kind=indexed"], "needs dataset.data_paths"),
    (["dataset.data_paths=[a,b]", "dataset.kind=indexed", "dataset.blend_weights=[1]"], "give one weight per path"),
    (["dataset.data_paths=a.jsonl", "dataset.kind=jsonl"], "set dataset.tokenizer"),
    (["dataset.split=90/10"], "dataset.split='90/10'"),
    (["peft=lora"], "needs checkpoint.pretrained_checkpoint"),
    (["peft=lora", "checkpoint.pretrained_checkpoint=/x", "peft.target_modules=[q_projj]"], "linear_qkv"),
    (["checkpoint.save=none", "checkpoint.export_hf_on_finish=true"], "checkpoint.save is not set"),
    (["optimizer.lr=inf"], "optimizer.lr=inf: expected a finite number"),
    (["scheduler.lr_warmup_init=nan"], "scheduler.lr_warmup_init=nan: expected a finite number"),
    (["model.num_layers=0"], "model.num_layers=0: expected a positive integer"),
    (["dataset.kind=sft", "dataset.data_paths=[a.jsonl]", "dataset.tokenizer=/t", "model.context_parallel_size=2"],
     "needs model.calculate_per_token_loss=true"),
])
def test_validate_cross_checks(cfg, items, message):
    apply_overrides(cfg, items)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_valid_layouts_of_the_debug_model(cfg):
    cfg.validate()
    apply_overrides(cfg, ["model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                          "model.pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size=2",
                          "model.context_parallel_size=2"])
    cfg.validate()  # no world size needed: that is checked at launch


@pytest.mark.parametrize("capable", [False, True], ids=["cpu", "fake_b200"])
def test_low_precision_is_refused_even_where_a_gpu_could_run_it(cfg, monkeypatch, capable):
    """FP8 / MXFP8 / NVFP4 would train in plain bf16 under their name: refused on every machine (the GPU is
    faked with compute capability 10.0, which has every format)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capable)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (10, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA B200")
    for name in ("bf16_with_fp8_delayed_scaling_mixed", "bf16_with_mxfp8_mixed", "bf16_with_nvfp4_mixed"):
        apply_overrides(cfg, [f"mixed_precision={name}"])
        with pytest.raises(ConfigError, match="does not implement FP8/FP4 training") as err:
            cfg.validate()
        assert ("this GPU (NVIDIA B200) could run" in str(err.value)) == capable


def test_fp16_is_refused_for_want_of_loss_scaling(cfg):
    apply_overrides(cfg, ["mixed_precision=fp16_mixed"])
    with pytest.raises(ConfigError, match="needs dynamic loss scaling"):
        cfg.validate()


# ------------------------------------------------------------------------------- to_dict / from_dict


def test_json_round_trip(gemma_cfg):
    apply_overrides(gemma_cfg, ["peft=dora", "checkpoint.pretrained_checkpoint=/ckpt", "dataset.data_paths=[a,b]"])
    text = json.dumps(gemma_cfg.to_dict())
    back = ConfigContainer.from_dict(json.loads(text))
    assert back == gemma_cfg
    back.validate()


def test_from_dict_rejects_unknown_keys(cfg):
    data = cfg.to_dict()
    data["train"]["train_iter"] = 5
    with pytest.raises(ConfigError, match="unknown key 'train.train_iter'; closest valid keys: train_iters"):
        ConfigContainer.from_dict(data)


# --------------------------------------------------------------------------------------- command line


def test_parse_cli():
    args = parse_cli(["--recipe", "llama3_8b_finetune_config", "--pretrained-checkpoint=/ckpt", "--peft-scheme",
                      "DoRA", "train.train_iters=10", "optimizer.lr=1e-4"])
    assert args == ("llama3_8b_finetune_config", "/ckpt", "dora", ["train.train_iters=10", "optimizer.lr=1e-4"], False)
    recipe, ckpt, peft, overrides, listing = parse_cli(["--list"])
    assert listing and recipe is None
    assert parse_cli(["--recipe=x", "--peft_scheme=none", "--pretrained_checkpoint", "d"]).peft_scheme == "none"


@pytest.mark.parametrize("argv,message", [
    (["--recipe", "x", "--pretrained-chekpoint", "d"], "unknown flag '--pretrained-chekpoint'; did you mean --pretrained-checkpoint"),
    (["--recipe", "x", "--peft_scheme", "ia3"], "--peft_scheme='ia3': expected one of lora, dora, none"),
    (["train.train_iters=5"], "--recipe NAME is required"),
    (["--recipe", "x", "train"], "unexpected argument 'train'"),
    (["--recipe"], "--recipe needs a value"),
])
def test_parse_cli_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_cli(argv)
