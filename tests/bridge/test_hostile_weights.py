"""Hostile or odd weights (issue 29, rows 6, 7, 9, 10): shapes are checked against the safetensors headers
before anything is allocated, quantized checkpoints and integer / FP8 weights are refused by name, unexpected
tensors are an error in `convert import` as in loading, and NaN/Inf weights warn naming the tensor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minibridge import AutoBridge
from minibridge.conversion.importer import import_checkpoint
from minibridge.errors import CheckpointMismatchError, MissingTensorError, UnsupportedModelError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def folder(hf_checkpoint, tmp_path) -> Path:
    out = tmp_path / "hf"
    shutil.copytree(hf_checkpoint("Llama-3.2-1B"), out)
    return out


def edit_weights(folder: Path, change) -> None:
    (path,) = folder.glob("*.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_huge_config_is_named_before_any_allocation(folder, pydoc_data):
    for file in Path(pydoc_data["tokenizer"]).iterdir():
        shutil.copy(file, folder / file.name)
    edit_config(folder, hidden_size=1_000_000_000, vocab_size=pydoc_data["vocab_size"])
    with pytest.raises(CheckpointMismatchError, match=r"model.embed_tokens.weight' has shape \[256, 96\], expected "
                                                      r"\[512, 1000000000\]"):
        AutoBridge.from_hf_pretrained(folder).to_model()  # 1.2 TB if it were allocated first
    proc = subprocess.run([sys.executable, "-m", "minibridge.generate", "--hf_model_path", str(folder), "--prompt", "a"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "expected [512, 1000000000]" in proc.stderr and "Traceback" not in proc.stderr


def test_a_quantized_checkpoint_is_refused_by_name(folder, tmp_path):
    edit_config(folder, quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]})
    with pytest.raises(UnsupportedModelError, match="quantization_config \\(quant_method 'fp8'\\)"):
        import_checkpoint(folder, tmp_path / "out", progress=False)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int64])
def test_integer_or_fp8_weights_are_refused(folder, tmp_path, dtype):
    name = "model.layers.0.mlp.up_proj.weight"
    edit_weights(folder, lambda t: t.update({name: t[name].to(dtype)}))
    for action in (lambda: import_checkpoint(folder, tmp_path / "out", progress=False),
                   lambda: AutoBridge.from_hf_pretrained(folder).to_model()):
        with pytest.raises(CheckpointMismatchError, match=f"{name}' is {str(dtype).removeprefix('torch.')}; "
                                                          "expected a float16, bfloat16 or float32 weight"):
            action()


def test_an_unexpected_tensor_is_an_error_in_import_as_in_loading(folder, tmp_path):
    edit_weights(folder, lambda t: t.update({"lm_head.bias": torch.zeros(256)}))
    for action in (lambda: import_checkpoint(folder, tmp_path / "out", progress=False),
                   lambda: AutoBridge.from_hf_pretrained(folder).to_model()):
        with pytest.raises(MissingTensorError, match="lm_head.bias"):
            action()
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_warn_naming_the_tensor(folder, tmp_path):
    name = "model.layers.1.self_attn.o_proj.weight"

    def poison(tensors):
        tensors[name][3, 5] = float("nan")

    edit_weights(folder, poison)
    with pytest.warns(UserWarning, match=f"{name}' holds NaN or Inf"):
        AutoBridge.from_hf_pretrained(folder).to_model(progress=False)
    with pytest.warns(UserWarning, match=f"{name}' holds NaN or Inf"):
        import_checkpoint(folder, tmp_path / "out", progress=False)
