"""FSDP2 over the dp ranks (dist.use_torch_fsdp2): losses equal to one process over AdamW steps with
gradient accumulation and clipping, alone and with TP, PP and CP; LoRA under it; checkpoints that
plain runs resume (and the reverse) and torch's dcp_to_torch_save reads; HF exports byte-identical
to one process's. FSDP2 with compiled blocks and a TP-padded vocabulary: test_fsdp_compose.py."""

import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from fsdp_workers import fsdp_world, train
from spawn import run_distributed

from minibridge import AutoBridge
from minibridge.conversion.exporter import export_checkpoint
from minibridge.errors import ConfigError
from minibridge.recipes import build_config
from minibridge.training.config import ConfigContainer
from minibridge.recipes.llama import DEBUG_ARCH as LLAMA_DEBUG

LLAMA, GEMMA = "llama3_debug_pretrain_config", "gemma3_debug_pretrain_config"
FSDP = ["dist.use_torch_fsdp2=true"]
BF16 = ["mixed_precision=bf16_mixed"]
# 2 layers, hidden 64: 8 sequences of 32 tokens in micro-batches of 2, so every dp rank accumulates
# gradients over 2 (dp=2) micro-batches; clip_grad 0.5 clips every step here.
TINY = ["model.num_layers=2", "model.hidden_size=64", "model.vocab_size=256", "model.seq_length=32",
        "train.global_batch_size=8", "train.micro_batch_size=2", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "optimizer.clip_grad=0.5", "scheduler.lr_warmup_iters=2",
        "scheduler.lr_decay_iters=20", "checkpoint.save=null", "dataset.kind=mock"]


def close(got: list[list[float]], want: list[list[float]], what) -> None:
    """Per step [loss, grad norm] of a run against the reference's, relative 1e-4."""
    assert len(got) == len(want), (what, got, want)
    for step, (g, w) in enumerate(zip(got, want)):
        assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(g, w)), (what, step, g, w)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """An HF folder of the tiny Llama (for LoRA and the export)."""
    arch = LLAMA_DEBUG.replace(vocab_size=256, num_layers=2, hidden_size=64, layer_types=None)
    bridge = AutoBridge.from_config(arch)
    folder = tmp_path_factory.mktemp("fsdp_base") / "llama"
    return str(bridge.save_hf_pretrained(bridge.to_model(dtype=torch.float32, progress=False, seed=3), folder,
                                         progress=False))


def _torch_save(folder: Path, out: Path) -> dict:
    dcp_to_torch_save(str(folder), str(out))
    return torch.load(out, weights_only=True)


def test_fsdp_dp2_resumes_across_layouts_lora_and_export(tmp_path, base):
    plain, fsdp = tmp_path / "plain", tmp_path / "fsdp"
    save = ["checkpoint.save_interval=3", "train.train_iters=3"]
    straight = train(LLAMA, None, None, TINY + ["train.train_iters=6"])
    first_plain = train(LLAMA, None, None, TINY + save + [f"checkpoint.save={plain}"])
    lora = ["peft.dim=4", "peft.alpha=8", "dataset.tokenizer=null", "train.train_iters=3",
            f"checkpoint.export_hf_on_finish={tmp_path / 'lora_plain'}"]
    lora_reference = train("llama3_debug_finetune_config", base, "lora", TINY + lora)
    lora[-1] = f"checkpoint.export_hf_on_finish={tmp_path / 'lora_fsdp'}"
    runs = [(LLAMA, None, None, TINY + save + FSDP + [f"checkpoint.save={fsdp}"]),  # FSDP2 from scratch
            (LLAMA, None, None, TINY + FSDP + ["train.train_iters=6", f"checkpoint.save={plain}"]),  # resumes plain
            ("llama3_debug_finetune_config", base, "lora", TINY + FSDP + lora),
            (LLAMA, None, None, TINY + save + FSDP + BF16 + [f"checkpoint.save={fsdp}_bf16"])]
    out = tmp_path / "losses.json"
    run_distributed(fsdp_world, 2, runs, str(out), (base, str(tmp_path / "export")))
    first_fsdp, plain_then_fsdp, lora_fsdp, bf16_fsdp = json.loads(out.read_text())
    fsdp_then_plain = train(LLAMA, None, None, TINY + ["train.train_iters=6", f"checkpoint.save={fsdp}"])

    close(first_plain, straight[:3], "plain")
    close(first_fsdp, straight[:3], "fsdp dp=2")
    close(plain_then_fsdp, straight[3:], "plain -> fsdp resume")
    close(fsdp_then_plain, straight[3:], "fsdp -> plain resume")
    close(lora_fsdp, lora_reference, "lora under fsdp")

    # both layouts store the same global tensors under the same names, in torch's nested layout
    ours = _torch_save(fsdp / "iter_0000003", tmp_path / "fsdp.pt")
    theirs = _torch_save(plain / "iter_0000003", tmp_path / "plain.pt")
    assert set(theirs) == {"model", "optim", "rng.rank0"} and set(ours) == set(theirs) | {"rng.rank1"}
    assert set(ours["model"]) == set(theirs["model"]) and len(ours["model"]) == 2 * 9 + 3
    assert set(ours["optim"]["state"]) == set(ours["model"])
    for name, tensor in theirs["model"].items():
        torch.testing.assert_close(ours["model"][name], tensor, rtol=1e-3, atol=1e-5, msg=name)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(ours["optim"]["state"][name][key], theirs["optim"]["state"][name][key],
                                       rtol=1e-2, atol=1e-6, msg=f"{name} {key}")

    # `convert export` of either checkpoint: the same HF files (values equal to the tolerance above)
    exports = [export_checkpoint(None, folder / "iter_0000003", tmp_path / f"{folder.name}_hf", progress=False)
               for folder in (fsdp, plain)]
    ours, theirs = (hf_weights(folder) for folder in exports)
    assert set(ours) == set(theirs) and all(ours[n].dtype == t.dtype for n, t in theirs.items())
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-3, atol=1e-5, msg=name)

    # bf16_mixed: FSDP2's fp32 shards are stored as a plain bf16 run's masters, beside its bf16 weights
    # (3 Adam steps of at most lr = 3e-3 each: bf16 gradients that differ in sign move a weight by < 1e-2)
    bf16_plain = train(LLAMA, None, None, TINY + save + BF16 + [f"checkpoint.save={plain}_bf16"])
    assert all(abs(g[0] - w[0]) <= 1e-2 * w[0] for g, w in zip(bf16_fsdp, bf16_plain)), (bf16_fsdp, bf16_plain)
    ours = _torch_save(Path(f"{fsdp}_bf16") / "iter_0000003", tmp_path / "fsdp_bf16.pt")
    theirs = _torch_save(Path(f"{plain}_bf16") / "iter_0000003", tmp_path / "plain_bf16.pt")
    assert {n: t.dtype for n, t in ours["model"].items()} == {n: t.dtype for n, t in theirs["model"].items()}
    assert {t.dtype for t in theirs["model"].values()} == {torch.bfloat16}
    for name, entries in theirs["optim"]["state"].items():
        assert {k: (v.dtype, v.shape) for k, v in ours["optim"]["state"][name].items()} == \
            {k: (v.dtype, v.shape) for k, v in entries.items()}, name
        assert entries["master"].dtype == torch.float32
        torch.testing.assert_close(ours["optim"]["state"][name]["master"], entries["master"], rtol=0, atol=1e-2)

    # exports: sharded then gathered, byte for byte the one-process export of the same weights
    single = tmp_path / "single"
    bridge = AutoBridge.from_hf_pretrained(base)
    bridge.save_hf_pretrained(bridge.to_model(dtype=torch.float32, progress=False), single, progress=False)
    files = sorted(p.name for p in single.iterdir())
    assert files == sorted(p.name for p in (tmp_path / "export").iterdir())
    for name in files:
        assert (single / name).read_bytes() == (tmp_path / "export" / name).read_bytes(), name
    # a LoRA run's final exports (adapters, and merged weights) gathered from the shards
    for kind in ("", "_adapter"):
        theirs = hf_weights(tmp_path / f"lora_plain{kind}")
        ours = hf_weights(tmp_path / f"lora_fsdp{kind}")
        assert set(ours) == set(theirs) and ours
        for name in theirs:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-3, atol=1e-5, msg=name)


def hf_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_fsdp_with_tp_pp_cp_matches_one_process_and_reshards(tmp_path):
    # one KV head: replicated on both tp ranks, its gradient summed over them (with q/k and SP norms)
    gemma = ["model.num_layers=2", "model.hidden_size=64", "model.num_kv_heads=1", "train.train_iters=3"]
    tp2 = ["model.tensor_model_parallel_size=2", "model.sequence_parallel=true"]
    layouts = [(GEMMA, ["model.pipeline_model_parallel_size=2"]),  # tied embedding over the stages, sharded
               (LLAMA, ["model.context_parallel_size=2", "dist.reshard_after_forward=false"])]
    references = [train(recipe, None, None, TINY + gemma) for recipe, _ in layouts]
    # TP=2 x FSDP2 dp=2 saves what a plain process resumes, and resumes what a plain process saved
    straight = train(GEMMA, None, None, TINY + gemma + ["train.train_iters=6"])
    save = ["checkpoint.save_interval=3"]
    train(GEMMA, None, None, TINY + gemma + save + [f"checkpoint.save={tmp_path / 'plain'}"])
    runs = [(GEMMA, None, None, TINY + gemma + FSDP + tp2 + save + [f"checkpoint.save={tmp_path / 'tp_fsdp'}"]),
            (GEMMA, None, None, TINY + gemma + FSDP + tp2 + ["train.train_iters=6", f"checkpoint.save={tmp_path / 'plain'}"])]
    runs += [(recipe, None, None, TINY + gemma + FSDP + layout) for recipe, layout in layouts]
    out = tmp_path / "losses.json"
    run_distributed(fsdp_world, 4, runs, str(out))
    tp_fsdp, plain_then_tp_fsdp, *others = json.loads(out.read_text())
    tp_fsdp_then_plain = train(GEMMA, None, None, TINY + gemma + ["train.train_iters=6",
                                                                  f"checkpoint.save={tmp_path / 'tp_fsdp'}"])
    close(tp_fsdp, straight[:3], "tp=2 x fsdp dp=2")
    close(plain_then_tp_fsdp, straight[3:], "plain -> tp=2 x fsdp resume")
    close(tp_fsdp_then_plain, straight[3:], "tp=2 x fsdp -> plain resume")
    for (recipe, layout), got, want in zip(layouts, others, references):
        close(got, want, (recipe, layout))


def test_dist_section_overrides_round_trip_and_checks():
    config = build_config(LLAMA, overrides=TINY + FSDP + ["dist.reshard_after_forward=false"])
    assert config.dist.use_torch_fsdp2 and not config.dist.reshard_after_forward
    assert ConfigContainer.from_dict(json.loads(json.dumps(config.to_dict()))).dist == config.dist
    config.dist.use_torch_fsdp2 = "yes"
    with pytest.raises(ConfigError, match="dist.use_torch_fsdp2='yes': expected true or false"):
        config.validate()
