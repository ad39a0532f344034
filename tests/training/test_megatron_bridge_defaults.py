"""Every recipe against Megatron Bridge 0.6.2, field by field: layouts, batch sizes, sequence lengths and
packing, lr schedule, Adam, the weight-decay schedule, LoRA/DoRA, intervals and seeds, and the loss
normalisation (calculate_per_token_loss).

The expected values are tests/data/megatron_bridge_recipes/megatron_bridge_0.6.2.json, made once by running
the recipe functions of the released wheel (extract.py beside it says how); megatron-bridge is not needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minibridge.recipes import ALIASES, RECIPES

DATA = Path(__file__).resolve().parents[1] / "data" / "megatron_bridge_recipes" / "megatron_bridge_0.6.2.json"
TABLE = json.loads(DATA.read_text())["recipes"]
NOT_COMPARED = ("kind", "hf_path")  # hf_path: the architecture is checked by test_recipes.test_builtin_architectures


def recipe_fields(cfg) -> dict:
    """The JSON's fields, read from a minibridge ConfigContainer."""
    m, t, o, s, d, ck = cfg.model, cfg.train, cfg.optimizer, cfg.scheduler, cfg.dataset, cfg.checkpoint
    out = dict(
        tensor_model_parallel_size=m.tensor_model_parallel_size,
        pipeline_model_parallel_size=m.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=m.virtual_pipeline_model_parallel_size,
        context_parallel_size=m.context_parallel_size, sequence_parallel=m.sequence_parallel,
        account_for_embedding_in_pipeline_split=m.account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=m.account_for_loss_in_pipeline_split,
        deterministic_mode=m.deterministic_mode, calculate_per_token_loss=m.calculate_per_token_loss,
        seq_length=m.seq_length, dataset_seq_length=d.seq_length,
        train_iters=t.train_iters, global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
        eval_interval=t.eval_interval, eval_iters=t.eval_iters, seed=t.seed, log_interval=cfg.logger.log_interval,
        save_interval=ck.save_interval, lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        use_distributed_optimizer=o.use_distributed_optimizer, lr_warmup_iters=s.lr_warmup_iters,
        lr_decay_iters=cfg.lr_decay_iters, lr_decay_style=s.lr_decay_style,
        start_weight_decay=s.start_weight_decay, end_weight_decay=s.end_weight_decay,
        weight_decay_incr_style=s.weight_decay_incr_style,
        packing=d.packing, packed_sequence_size=d.seq_length if d.packing else None,  # packed rows are seq_length
        mixed_precision=cfg.mixed_precision, peft=None,
    )
    if cfg.peft is not None:
        p = cfg.peft
        out["peft"] = dict(scheme=p.scheme, dim=p.dim, alpha=p.alpha, dropout=p.dropout,
                           dropout_position=p.dropout_position, target_modules=list(p.target_modules))
    return out


def build(key: str):
    """A JSON key ("name" or "name(peft_scheme='dora')") -> minibridge's recipe of that name, so called."""
    name, _, call = key.partition("(")
    kwargs = {"peft_scheme": call.split("'")[1]} if call else {}
    return RECIPES[name](**kwargs)


def differences(key: str, cfg) -> dict:
    want = {k: v for k, v in TABLE[key].items() if k not in NOT_COMPARED}
    have = recipe_fields(cfg)
    assert set(have) == set(want), f"{key}: fields {sorted(set(want) ^ set(have))} differ between test and JSON"
    return {k: (have[k], want[k]) for k in want if have[k] != want[k]}


def test_the_table_has_every_megatron_bridge_name_and_we_have_every_one_of_them():
    names = {key.partition("(")[0] for key in TABLE}
    assert len(names) == 32 and len(TABLE) == 40  # 29 Llama 3 + 3 Gemma 3 names; peft ones with lora and dora
    assert names <= set(RECIPES)


@pytest.mark.parametrize("key", sorted(TABLE))
def test_recipe_equals_megatron_bridge_0_6_2(key):
    assert differences(key, build(key)) == {}  # (minibridge, Megatron Bridge) per differing field


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_finetune_name_is_the_same_recipe(alias):
    """<model>_finetune_config (the older name) gives what the 0.6 names give: the same table row."""
    target, argument = ALIASES[alias]
    if alias.endswith("_sft_config"):
        assert argument == "peft=None"
        assert differences(alias, RECIPES[target](peft=None)) == {}
    else:
        assert argument == "peft=peft_scheme"
        assert differences(f"{alias}(peft_scheme='lora')", RECIPES[target]()) == {}  # LoRA by default
        assert differences(f"{alias}(peft_scheme='dora')", RECIPES[target](peft="dora")) == {}


def test_a_changed_field_is_caught():
    cfg = build("llama3_8b_sft_config")
    cfg.scheduler.end_weight_decay = 0.1
    assert differences("llama3_8b_sft_config", cfg) == {"end_weight_decay": (0.1, 0.033)}
