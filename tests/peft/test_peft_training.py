"""LoRA / DoRA fine-tuning through the training loop: only adapters train, adapter-only checkpoints
resume exactly and refuse another base model, the final exports load in transformers + peft, and
TP, PP and CP layouts reproduce the single-process losses."""

import json

import peft
import pytest
import torch
import torch.distributed.checkpoint as dcp
from hf_checkpoints import load_hf
from peft_helpers import batch
from spawn import run_distributed

from minibridge import AutoBridge
from minibridge.recipes import build_config
from minibridge.recipes.gemma import DEBUG_ARCH as GEMMA_DEBUG
from minibridge.recipes.llama import DEBUG_ARCH as LLAMA_DEBUG
from minibridge.training.loop import Trainer
from minibridge.checkpoint import BlockLoadPlanner, SafeFileSystemReader

BASE = ["train.global_batch_size=8", "train.micro_batch_size=2", "model.seq_length=64", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=2", "scheduler.lr_decay_iters=20",
        "dataset.tokenizer=null", "dataset.kind=mock", "peft.dim=8", "peft.alpha=16"]
LLAMA, GEMMA = "llama3_debug_finetune_config", "gemma3_debug_finetune_config"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """HF folders of the debug architectures (vocabulary 256); `other` has the same shape, other weights."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for key, arch, seed in (("llama", LLAMA_DEBUG, 1), ("other", LLAMA_DEBUG, 2), ("gemma", GEMMA_DEBUG, 1)):
        bridge = AutoBridge.from_config(arch.replace(vocab_size=256))
        model = bridge.to_model(dtype=torch.float32, progress=False, seed=seed)
        out[key] = str(bridge.save_hf_pretrained(model, root / key, progress=False))
    return out


def _trainer(recipe, base, scheme, overrides):
    common = [o for o in BASE if scheme != "none" or not o.startswith("peft.")]
    return Trainer(build_config(recipe, base, scheme, common + overrides))


def test_lora_trains_only_adapters_checkpoints_them_and_resumes_exactly(bases, tmp_path):
    straight = _trainer(LLAMA, bases["llama"], "lora", ["train.train_iters=6", f"checkpoint.save={tmp_path / 'a'}"])
    before = {n: p.detach().clone() for n, p in straight.model.named_parameters()}
    losses = straight.run().losses
    for name, p in straight.model.named_parameters():
        assert torch.equal(p, before[name]) == (".lora_" not in name), name  # the base bitwise, every adapter moved
    folder = tmp_path / "a" / "iter_0000006"
    stored = SafeFileSystemReader(str(folder)).read_metadata().state_dict_metadata
    tensors = [k for k in stored if not k.startswith(("rng.", "optim.param_groups."))]
    assert tensors and all(".lora_" in k for k in tensors)  # adapters and their Adam state only
    groups = {k: None for k in stored if k.startswith("optim.param_groups.") and k.endswith(".params")}
    dcp.load(groups, storage_reader=SafeFileSystemReader(str(folder)), planner=BlockLoadPlanner())
    grouped = [n for names in groups.values() for n in names]
    assert grouped and all(".lora_" in n for n in grouped)  # the optimizer's groups: the adapters alone
    info = json.loads((folder / "run.json").read_text())["peft"]
    assert info["scheme"] == "lora" and len(info["base_model"]["fingerprint"]) == 32

    save = [f"checkpoint.save={tmp_path / 'b'}", "checkpoint.save_interval=3"]
    first = _trainer(LLAMA, bases["llama"], "lora", ["train.train_iters=3"] + save).run().losses
    second = _trainer(LLAMA, bases["llama"], "lora", ["train.train_iters=6", "checkpoint.export_hf_on_finish=true"]
                      + save).run()
    assert first + second.losses == losses

    # the final exports: merged full weights (transformers) == the adapter on the base (transformers + peft)
    ids = batch(256)
    with torch.no_grad():
        merged = load_hf(second.hf_export)(input_ids=ids).logits
        adapted = peft.PeftModel.from_pretrained(load_hf(bases["llama"]), second.hf_adapter_export)(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-4)

    with pytest.raises(ValueError, match=rf"trained on base model {bases['llama']}.*loads base model {bases['other']}"):
        _trainer(LLAMA, bases["other"], "lora", ["train.train_iters=8"] + save)
    with pytest.raises(ValueError, match="holds only lora adapters"):
        _trainer(LLAMA, bases["llama"], "none", ["train.train_iters=8"] + save)


def test_command_line_runs_dora(bases, tmp_path, capsys):
    from minibridge.train import main

    assert main(["--recipe", LLAMA, "--pretrained-checkpoint", bases["llama"], "--peft_scheme", "dora",
                 *BASE, "train.train_iters=2", f"checkpoint.save={tmp_path}"]) == 0
    assert "dora: rank 8, alpha 16 on 28 linear layers; trainable parameters" in capsys.readouterr().out


def test_tp_pp_cp_layouts_match_one_process(bases, tmp_path):
    runs = [(LLAMA, "lora", ["model.context_parallel_size=2"]),
            (LLAMA, "dora", ["model.tensor_model_parallel_size=2", "model.sequence_parallel=true"]),
            (GEMMA, "lora", ["model.pipeline_model_parallel_size=2"])]  # tied embedding, frozen, across stages
    cases = []
    for i, (recipe, scheme, layout) in enumerate(runs):
        base = bases["gemma" if recipe == GEMMA else "llama"]
        common = BASE + ["train.train_iters=3", "checkpoint.save=null"]
        reference = Trainer(build_config(recipe, base, scheme, common)).run().losses
        cases.append((recipe, base, scheme, common + layout, str(tmp_path / f"{i}.json"), reference))
    run_distributed(_run_layouts, 2, cases)
    for recipe, _, scheme, overrides, out, reference in cases:
        for step, (got, want) in enumerate(zip(json.loads(open(out).read()), reference)):
            assert abs(got - want) <= 1e-4 * abs(want), (scheme, overrides[-1], step, got, want)


def _run_layouts(cases):
    import torch.distributed as dist

    for recipe, base, scheme, overrides, out, _ in cases:
        losses = Trainer(build_config(recipe, base, scheme, overrides)).run().losses
        if dist.get_rank() == 0:
            with open(out, "w") as f:
                json.dump(losses, f)
