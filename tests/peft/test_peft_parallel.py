"""Tensor-parallel adapters (column: replicated A, sharded B; row: sharded A, replicated B; KV heads
split or replicated) match one process in initial values, logits, loss, gradients, exported adapter
files and merged weights, with and without sequence parallelism, for LoRA and DoRA; pipeline stages
export and import their share of an adapter folder. (Training under TP, PP and CP: test_peft_training.)"""

import pytest
import torch
from peft_workers import check_tp_cases
from safetensors.torch import load_file
from spawn import run_distributed


@pytest.fixture(scope="module")
def folders(hf_checkpoint):
    return {"llama": str(hf_checkpoint("Llama-3.2-1B")),  # GQA 8/2: KV heads split over tp=2
            "llama_bias": str(hf_checkpoint("Meta-Llama-3-8B", attention_bias=True, mlp_bias=True)),
            "gemma": str(hf_checkpoint("gemma-3-1b-it"))}  # one KV head: replicated over tp=2


def test_tp2_adapters_match_one_process(folders, tmp_path):
    cases = [dict(folder=folders["llama"], scheme=s, tp=2, sequence_parallel=sp, out_dir=str(tmp_path / "llama"))
             for s in ("lora", "dora") for sp in (False, True)]
    cases += [dict(folder=folders["llama_bias"], scheme="dora", tp=2, sequence_parallel=True, out_dir=str(tmp_path / "bias")),
              dict(folder=folders["gemma"], scheme="lora", tp=2, sequence_parallel=True, out_dir=str(tmp_path / "gemma")),
              dict(folder=folders["gemma"], scheme="dora", tp=2, sequence_parallel=False, out_dir=str(tmp_path / "gemma"))]
    run_distributed(check_tp_cases, 2, cases, dict(folder=folders["gemma"], out_dir=str(tmp_path / "pp")))
    pairs = sorted(tmp_path.glob("*/tp-*"))  # the pp case writes tp-pp / single-pp
    assert len(pairs) == len(cases) + 1
    for tp_dir in pairs:
        single = tp_dir.parent / tp_dir.name.replace("tp-", "single-", 1)
        a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (tp_dir, single))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=lambda m: f"{tp_dir.name} {key}: {m}")
