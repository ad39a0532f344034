"""`python -m minibridge.convert` and AutoBridge.import_ckpt / export_ckpt end to end on tiny checkpoints:
exact round trips (also through a tp=2 import on two ranks), LoRA checkpoints exported merged and as
adapters, training starting from an imported checkpoint, and every kind of bad input."""

import json
import os

import pytest
import torch
from hf_checkpoints import load_hf
from spawn import run_distributed

from minibridge import AutoBridge
from minibridge.conversion import compare_folders, import_checkpoint
from minibridge.convert import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _tp2_import(src, dst):
    assert main(["import", "--hf-model", src, "--megatron-path", dst, "--tp", "2", "--no-progress"]) == 0


def _identical(a, b):
    results = compare_folders(a, b)
    assert results and all(r.ok for r in results), [r for r in results if not r.ok][:3]


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "gemma-3-4b-it"])
def test_import_export_roundtrip_is_exact(hf_checkpoint, tmp_path, capsys, name):
    src = hf_checkpoint(name, dtype=torch.bfloat16)
    mb, out = str(tmp_path / "mb"), str(tmp_path / "out")
    assert main(["import", "--hf-model", str(src), "--megatron-path", mb, "--no-progress"]) == 0
    assert (tmp_path / "mb" / "latest_checkpointed_iteration.txt").read_text() == "0"
    info = json.loads((tmp_path / "mb" / "iter_0000000" / "run.json").read_text())
    assert info["iteration"] == 0 and info["config"]["model"]["config"]["family"] in ("llama", "gemma3")
    assert main(["export", "--hf-model", str(src), "--megatron-path", mb, "--hf-path", out, "--no-progress"]) == 0
    _identical(src, out)  # bf16 stays bf16; a multimodal source keeps its vision tower
    assert main(["roundtrip", "--hf-model", str(src), "--work-dir", str(tmp_path), "--no-progress"]) == 0
    assert "identical, 0 differ" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".", "minibridge-"))] == []  # nothing left over


def test_tp2_import_then_export_equals_the_source(hf_checkpoint, tmp_path):
    src = hf_checkpoint("Llama-3.2-1B")  # fp32
    run_distributed(_tp2_import, 2, str(src), str(tmp_path / "mb"))
    files = sorted(p.name for p in (tmp_path / "mb" / "iter_0000000").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "checksums.json", "run.json",
                     "run_config.yaml"]  # each rank its blocks
    info = json.loads((tmp_path / "mb" / "iter_0000000" / "run.json").read_text())
    assert (info["tp"], info["world_size"]) == (2, 2)
    bridge = AutoBridge.from_hf_pretrained(src)
    out = bridge.export_ckpt(megatron_path=tmp_path / "mb", hf_path=tmp_path / "out", progress=False)
    _identical(src, out)


def test_python_api_and_training_starts_from_an_imported_checkpoint(tmp_path, monkeypatch):
    from minibridge.recipes import build_config
    from minibridge.recipes.llama import DEBUG_ARCH
    from minibridge.training.loop import Trainer

    monkeypatch.setenv("SAVE_DIR", str(tmp_path / "save_dir"))
    bridge = AutoBridge.from_config(DEBUG_ARCH.replace(vocab_size=256))
    src = bridge.save_hf_pretrained(bridge.to_model(dtype=torch.float32, progress=False, seed=1), tmp_path / "hf",
                                    progress=False)
    folder = AutoBridge.import_ckpt(src, tmp_path / "mb", progress=False)
    assert folder == tmp_path / "mb" / "iter_0000000"
    trainer = Trainer(build_config("llama3_debug_finetune_config", str(tmp_path / "mb"), "none", [
        "model.vocab_size=256", "train.train_iters=1", "scheduler.lr_warmup_iters=0", "train.global_batch_size=2",
        "train.micro_batch_size=2",
        "model.seq_length=16", "train.eval_interval=null", "logger.tensorboard_dir=null", "dataset.tokenizer=null",
        "dataset.kind=mock"]))
    reference = AutoBridge.from_hf_pretrained(src).to_model(progress=False)
    for name, p in trainer.chunks.named_parameters():
        assert torch.equal(p, reference.get_parameter(name)), name


def test_lora_checkpoint_exports_merged_and_as_adapter(tmp_path, monkeypatch):
    import peft

    from minibridge.recipes import build_config
    from minibridge.recipes.llama import DEBUG_ARCH
    from minibridge.training.loop import Trainer

    monkeypatch.setenv("SAVE_DIR", str(tmp_path / "save_dir"))
    bridge = AutoBridge.from_config(DEBUG_ARCH.replace(vocab_size=256))
    base = bridge.save_hf_pretrained(bridge.to_model(dtype=torch.float32, progress=False, seed=1), tmp_path / "base",
                                     progress=False)
    run = tmp_path / "run"
    result = Trainer(build_config("llama3_debug_finetune_config", str(base), "lora", [
        "train.train_iters=2", "train.global_batch_size=4", "train.micro_batch_size=2", "model.seq_length=32",
        "train.eval_interval=null", "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=1",
        "dataset.tokenizer=null", "dataset.kind=mock", "peft.dim=4", "peft.alpha=8", f"checkpoint.save={run}",
        "checkpoint.export_hf_on_finish=true"])).run()
    merged, adapter = str(tmp_path / "merged"), str(tmp_path / "adapter")
    assert main(["export", "--hf-model", str(base), "--megatron-path", str(run), "--hf-path", merged, "--no-progress"]) == 0
    assert main(["export", "--hf-model", str(base), "--megatron-path", str(run), "--hf-path", adapter,
                 "--adapter-only", "--no-progress"]) == 0
    _identical(result.hf_export, merged)  # the same files the training run exported itself
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "adapter" / name).read_bytes() == (result.hf_adapter_export / name).read_bytes()
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full = load_hf(merged)(input_ids=ids).logits
        adapted = peft.PeftModel.from_pretrained(load_hf(base), adapter)(input_ids=ids).logits
    torch.testing.assert_close(full, adapted, rtol=0, atol=1e-4)
    # adapters only fit their base: another base with the same shapes is refused
    other = tmp_path / "other"
    bridge.save_hf_pretrained(bridge.to_model(dtype=torch.float32, progress=False, seed=2), other, progress=False)
    with pytest.raises(ValueError, match=rf"adapters trained on base model {base}.*other weights"):
        AutoBridge.from_hf_pretrained(other).export_ckpt(run, tmp_path / "x", progress=False)


def test_bad_inputs(hf_checkpoint, tmp_path, capsys):
    llama, gemma = hf_checkpoint("Llama-3.2-1B"), hf_checkpoint("gemma-3-1b-it")
    mb = tmp_path / "mb"
    import_checkpoint(llama, mb, progress=False)

    def fails(args, *expected):
        assert main(args + ["--no-progress"]) == 2
        err = capsys.readouterr().err
        assert all(e in err for e in expected), err

    nowhere, empty = tmp_path / "nowhere", tmp_path / "empty"
    empty.mkdir()
    fails(["import", "--hf-model", str(nowhere), "--megatron-path", str(tmp_path / "a")], str(nowhere), "not a model folder")
    fails(["import", "--hf-model", str(empty), "--megatron-path", str(tmp_path / "a")], "no config.json")
    fails(["import", "--hf-model", str(llama), "--megatron-path", str(mb)], str(mb), "not empty", "--overwrite")
    fails(["import", "--hf-model", str(llama), "--megatron-path", str(tmp_path / "a"), "--tp", "2"], "torchrun")
    fails(["import", "--hf-model", str(llama), "--megatron-path", str(tmp_path / "a"), "--tp", "3"], "not divisible")
    out = ["--hf-path", str(tmp_path / "out")]
    fails(["export", "--hf-model", str(llama), "--megatron-path", str(empty)] + out, str(empty),
          "found neither run.json (a minibridge checkpoint) nor metadata.json")
    fails(["export", "--hf-model", str(llama), "--megatron-path", str(llama)] + out, "looks like a Hugging Face folder")
    fails(["export", "--hf-model", str(gemma), "--megatron-path", str(mb)] + out, "another model", "family='llama'")
    fails(["export", "--hf-model", str(llama), "--megatron-path", str(mb), "--adapter-only"] + out, "no LoRA/DoRA adapters")
    assert not (tmp_path / "out").exists()  # nothing half-written

    # a checkpoint of another model without recorded sizes: the stored shapes give it away
    run_info = mb / "iter_0000000" / "run.json"
    info = json.loads(run_info.read_text())
    run_info.write_text(json.dumps({"iteration": 0}))
    wider = hf_checkpoint("Llama-3.2-1B", hidden_size=64)
    fails(["export", "--hf-model", str(wider), "--megatron-path", str(mb)] + out, "has shape", "another model")
    run_info.write_text(json.dumps(info))
    # missing files
    os.remove(mb / "iter_0000000" / ".metadata")
    fails(["export", "--hf-model", str(llama), "--megatron-path", str(mb)] + out, "metadata file is missing")
    (mb / "latest_checkpointed_iteration.txt").write_text("7")
    fails(["export", "--hf-model", str(llama), "--megatron-path", str(mb)] + out, "latest_checkpointed_iteration.txt")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((llama / "config.json").read_text())
    fails(["import", "--hf-model", str(broken), "--megatron-path", str(tmp_path / "a")], "no model.safetensors")
    assert not (tmp_path / "a").exists() and not (tmp_path / ".a.importing").exists()


def test_differences_are_reported(hf_checkpoint, tmp_path, capsys):
    from minibridge.convert import _report

    src = hf_checkpoint("Llama-3.2-1B")  # fp32: an import cast to bf16 loses bits
    assert main(["import", "--hf-model", str(src), "--megatron-path", str(tmp_path / "mb"), "--dtype", "bf16",
                 "--no-progress"]) == 0
    out = AutoBridge.from_hf_pretrained(src).export_ckpt(tmp_path / "mb", tmp_path / "out", progress=False)
    results = compare_folders(src, out)
    assert {r.status for r in results} == {"values differ"} and "max abs diff" in results[0].detail
    assert _report(results) == 1
    assert f"{len(results)} differ" in capsys.readouterr().out
    bf16 = AutoBridge.from_hf_pretrained(src).export_ckpt(tmp_path / "mb", tmp_path / "bf16", dtype=torch.bfloat16,
                                                          progress=False)
    assert {r.status for r in compare_folders(src, bf16)} == {"dtype differs"}
