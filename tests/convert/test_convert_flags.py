"""Megatron Bridge's conversion flags: --torch-dtype (beside --dtype), --not-strict, --hf-revision; the
export of a model trained from scratch (no --hf-model; its tokenizer included) that generate then reads;
run_config.yaml in an imported checkpoint."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from minibridge.conversion.checkpoints import check_same_model
from minibridge.convert import main
from minibridge.errors import CheckpointMismatchError
from minibridge.generate import main as generate_main
from minibridge.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def _stored_dtypes(folder):
    from minibridge.checkpoint import read_checkpoint

    _, _, stored = read_checkpoint(folder)
    return {meta.properties.dtype for key, meta in stored.items() if key.startswith("model.")}


def test_torch_dtype_and_dtype(hf_checkpoint, tmp_path, capsys):
    src = str(hf_checkpoint("Llama-3.2-1B"))
    assert main(["import", "--hf-model", src, "--megatron-path", str(tmp_path / "a"), "--torch-dtype", "bfloat16",
                 "--no-progress"]) == 0
    assert _stored_dtypes(tmp_path / "a") == {torch.bfloat16}
    info = json.loads((tmp_path / "a" / "iter_0000000" / "run.json").read_text())
    assert info["dtype"] == "bfloat16"
    # an imported checkpoint also holds its configuration as run_config.yaml
    assert yaml.safe_load((tmp_path / "a" / "iter_0000000" / "run_config.yaml").read_text()) == info["config"]
    assert main(["import", "--hf-model", src, "--megatron-path", str(tmp_path / "b"), "--dtype", "fp16",
                 "--torch-dtype", "float16", "--no-progress"]) == 0  # both, agreeing
    assert _stored_dtypes(tmp_path / "b") == {torch.float16}
    out = tmp_path / "out"
    assert main(["export", "--hf-model", src, "--megatron-path", str(tmp_path / "a"), "--hf-path", str(out),
                 "--torch-dtype", "float32", "--no-progress"]) == 0
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}
    assert main(["import", "--hf-model", src, "--megatron-path", str(tmp_path / "c"), "--dtype", "bf16",
                 "--torch-dtype", "float32"]) == 2
    assert "disagree" in _err(capsys)
    with pytest.raises(SystemExit):
        main(["import", "--hf-model", src, "--megatron-path", str(tmp_path / "d"), "--torch-dtype", "bf16"])


def test_hf_revision(hf_checkpoint, tmp_path, capsys, monkeypatch):
    src = str(hf_checkpoint("Llama-3.2-1B"))
    assert main(["import", "--hf-model", src, "--megatron-path", str(tmp_path / "a"), "--hf-revision", "v1"]) == 2
    err = _err(capsys)
    assert "--hf-revision v1" in err and "local folder" in err and src in err
    seen = {}

    def snapshot_download(repo_id, revision=None, **kwargs):  # the hub, offline: the revision reaches it
        seen.update(repo_id=repo_id, revision=revision)
        return src

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert main(["import", "--hf-model", "meta-llama/Llama-3.2-1B", "--hf-revision", "abc123", "--megatron-path",
                 str(tmp_path / "b"), "--no-progress"]) == 0
    assert seen == {"repo_id": "meta-llama/Llama-3.2-1B", "revision": "abc123"}
    assert main(["export", "--hf-revision", "abc123", "--megatron-path", str(tmp_path / "b"), "--hf-path",
                 str(tmp_path / "out")]) == 2
    assert "needs --hf-model" in _err(capsys)


def test_not_strict_export(hf_checkpoint, tmp_path, capsys):
    src = hf_checkpoint("Llama-3.2-1B")
    mb = str(tmp_path / "mb")
    assert main(["import", "--hf-model", str(src), "--megatron-path", mb, "--no-progress"]) == 0
    extra = tmp_path / "extra"
    shutil.copytree(src, extra)
    tensors = load_file(extra / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # what old exports stored
    save_file(tensors, extra / "model.safetensors", metadata={"format": "pt"})
    argv = ["export", "--hf-model", str(extra), "--megatron-path", mb, "--no-progress"]
    assert main([*argv, "--hf-path", str(tmp_path / "a")]) == 2
    assert "rotary_emb.inv_freq" in _err(capsys) and not (tmp_path / "a").exists()
    assert main([*argv, "--hf-path", str(tmp_path / "b"), "--not-strict"]) == 0
    assert "rotary_emb.inv_freq" in capsys.readouterr().err
    written = load_file(tmp_path / "b" / "model.safetensors")
    assert set(written) == set(tensors) - {"model.layers.0.self_attn.rotary_emb.inv_freq"}


def test_check_same_model_strict_and_not(hf_checkpoint, tmp_path):
    from minibridge.bridge import HFBridge
    from minibridge.checkpoint import read_checkpoint

    src = hf_checkpoint("Llama-3.2-1B")
    assert main(["import", "--hf-model", str(src), "--megatron-path", str(tmp_path / "mb"), "--no-progress"]) == 0
    bridge = HFBridge.from_hf_pretrained(src)
    folder, info, stored = read_checkpoint(tmp_path / "mb")
    stored = {k: v for k, v in stored.items() if k != "model.norm.weight"}
    with pytest.raises(CheckpointMismatchError, match="norm.weight.*--not-strict"):
        check_same_model(bridge.config, src, folder, info, stored)
    assert check_same_model(bridge.config, src, folder, info, stored, strict=False) == ["norm.weight"]


TINY = ["train.global_batch_size=2", "train.micro_batch_size=2", "model.seq_length=32", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "scheduler.lr_warmup_iters=0", "model.num_layers=2", "train.train_iters=1"]


def test_export_of_a_run_from_scratch_needs_no_hf_model_and_keeps_its_tokenizer(pydoc_data, tmp_path, capsys):
    from hf_checkpoints import load_hf

    from minibridge.bridge import HFBridge
    from minibridge.conversion import load_megatron_model
    from minibridge.conversion.exporter import bridge_of_checkpoint

    save, out = tmp_path / "run", tmp_path / "hf"
    assert train_main(["--recipe", "llama3_debug_pretrain_config", *TINY, f"model.vocab_size={pydoc_data['vocab_size']}",
                       "dataset.kind=jsonl", f"dataset.data_paths=[{pydoc_data['jsonl']}]",
                       f"dataset.tokenizer={pydoc_data['tokenizer']}", f"checkpoint.save={save}"]) == 0
    assert main(["export", "--megatron-path", str(save), "--hf-path", str(out), "--no-progress"]) == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert (out / "tokenizer.json").read_bytes() == (Path(pydoc_data["tokenizer"]) / "tokenizer.json").read_bytes()
    # the exported folder is the trained model: transformers reads it with our logits
    ours = load_megatron_model(bridge_of_checkpoint(save), save, dtype=torch.float32)[0].eval()
    ids = torch.randint(0, pydoc_data["vocab_size"], (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(load_hf(out)(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)
    assert HFBridge.from_hf_pretrained(out).config.num_layers == 2
    capsys.readouterr()
    assert generate_main(["--hf_model_path", str(out), "--max_new_tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "=== prompt: Hello, how are you?" in printed  # Megatron Bridge's default prompt
    # the run's tokenizer folder gone: the error names it and --tokenizer
    moved = tmp_path / "moved_tokenizer"
    shutil.copytree(pydoc_data["tokenizer"], moved)
    info_path = save / "iter_0000001" / "run.json"
    info = json.loads(info_path.read_text())
    info["config"]["dataset"]["tokenizer"] = str(tmp_path / "gone")
    info_path.write_text(json.dumps(info))
    assert main(["export", "--megatron-path", str(save), "--hf-path", str(tmp_path / "hf2")]) == 2
    err = _err(capsys)
    assert str(tmp_path / "gone") in err and "--tokenizer" in err
    assert main(["export", "--megatron-path", str(save), "--hf-path", str(tmp_path / "hf2"), "--tokenizer", str(moved),
                 "--no-progress"]) == 0
    assert (tmp_path / "hf2" / "tokenizer.json").is_file()


def test_export_of_a_mock_run_warns_that_it_has_no_tokenizer(tmp_path, capsys):
    save, out = tmp_path / "run", tmp_path / "hf"
    assert train_main(["--recipe", "llama3_debug_pretrain_config", *TINY, "model.vocab_size=256",
                       f"checkpoint.save={save}"]) == 0
    capsys.readouterr()
    assert main(["export", "--megatron-path", str(save), "--hf-path", str(out), "--no-progress"]) == 0
    assert "without a tokenizer" in capsys.readouterr().err
    assert (out / "config.json").is_file() and not (out / "tokenizer.json").exists()
    assert generate_main(["--hf_model_path", str(out)]) == 2
    assert "convert export --tokenizer" in _err(capsys)
