"""`python -m minibridge.compare`: an identical model, a checkpoint with one altered layer, TP=2 vs one
process, and bad inputs."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from eval_workers import run_commands
from spawn import run_distributed

from minibridge.compare import main

PROMPT = "The quick brown fox jumps over the lazy dog, and then"
LAYERS = 4


@pytest.fixture(scope="module")
def lm_folder(hf_checkpoint, pydoc_data, tmp_path_factory):
    """lm_folder(name, **overrides): a tiny HF checkpoint with pydoc's 512-token tokenizer beside its weights."""
    def build(name, **overrides):
        folder = tmp_path_factory.mktemp("compare") / name
        shutil.copytree(hf_checkpoint(name, vocab_size=pydoc_data["vocab_size"], **overrides), folder)
        for file in Path(pydoc_data["tokenizer"]).iterdir():
            shutil.copy(file, folder / file.name)
        return folder
    return build


@pytest.fixture(scope="module")
def llama(lm_folder):
    return lm_folder("Llama-3.2-1B", num_hidden_layers=LAYERS)


def compare(tmp_path, name, *argv):
    out = tmp_path / f"{name}.json"
    code = main([*argv, "--prompt", PROMPT, "--json", str(out)])
    return code, json.loads(out.read_text())


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_identical_model_agrees(tmp_path, llama, lm_folder, family, one_thread, capsys):
    """Gemma: 7 layers, sliding window 8 < the prompt's length, tied output."""
    folder, layers = (llama, LAYERS) if family == "llama" else (lm_folder("gemma-3-1b-it"), 7)
    code, got = compare(tmp_path, "same", "--hf-model", str(folder), "--per-layer", "--dtype", "fp32", "--top-k", "3")
    assert code == 0 and got["ok"]
    assert got["max_abs_diff"] < 1e-4 and got["cosine_min"] > 1 - 1e-6
    assert got["top1_agreement"] == 1.0 and got["topk_overlap"] == 1.0 and got["top_k"] == 3
    assert len(got["layers"]) == layers and got["first_diverging_layer"] is None and got["positions"] > 8
    assert all(d["relative"] < 1e-5 for d in got["layers"]) and got["layers"][-1]["with_final_norm"]
    out = capsys.readouterr().out
    assert "cosine similarity per position: min" in out and "every layer within tolerance 0.0001" in out


def test_altered_layer_is_named(tmp_path, llama, one_thread, capsys):
    """Layer 2's down_proj scaled by 1.5 in a minibridge checkpoint: the per-layer check names layer 2."""
    from minibridge.conversion import import_checkpoint

    altered = tmp_path / "altered"
    shutil.copytree(llama, altered)
    weights = load_file(altered / "model.safetensors")
    weights["model.layers.2.mlp.down_proj.weight"] *= 1.5
    save_file(weights, altered / "model.safetensors", metadata={"format": "pt"})
    ckpt = import_checkpoint(str(altered), tmp_path / "ckpt", progress=False)
    code, got = compare(tmp_path, "altered", "--hf-model", str(llama), "--megatron-path", str(ckpt), "--per-layer")
    assert got["first_diverging_layer"] == 2 and code == 1
    assert [d["relative"] < got["tolerance"] for d in got["layers"]] == [True, True, False, False]
    assert got["max_abs_diff"] > 1e-3
    assert "first layer whose relative difference exceeds 0.0001: layer 2" in capsys.readouterr().out


def test_tp2_equals_one_process(tmp_path, llama):
    argv = ["--hf-model", str(llama), "--per-layer", "--prompt", PROMPT]
    run_commands("compare", [[*argv, "--json", str(tmp_path / "one.json")]])
    run_distributed(run_commands, 2, "compare", [[*argv, "--tp", "2", "--json", str(tmp_path / "tp2.json")]])
    one, tp2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "tp2"))
    assert tp2["tp"] == 2 and tp2["ok"] and tp2["top1_agreement"] == 1.0
    assert tp2["max_abs_diff"] < 1e-4 and tp2["cosine_min"] == pytest.approx(one["cosine_min"], abs=1e-6)
    for a, b in zip(one["layers"], tp2["layers"]):
        assert b["max_abs"] < 1e-4 and abs(a["max_abs"] - b["max_abs"]) < 1e-4


def test_bad_inputs_give_clear_errors(tmp_path, llama, hf_checkpoint, capsys):
    assert main(["--hf-model", str(tmp_path / "missing")]) == 2
    assert "missing: not a model folder" in capsys.readouterr().err
    assert main(["--hf-model", str(llama), "--megatron-path", str(tmp_path / "nockpt")]) == 2
    assert "nockpt: no such folder" in capsys.readouterr().err
    assert main(["--hf-model", str(hf_checkpoint("Llama-3.2-1B"))]) == 2  # no tokenizer files
    assert "no usable tokenizer" in capsys.readouterr().err
    assert main(["--hf-model", str(llama), "--pp", "2"]) == 2
    assert "--pp 2" in capsys.readouterr().err
    assert main(["--hf-model", str(llama), "--top-k", "0"]) == 2
    assert "--top-k 0" in capsys.readouterr().err
