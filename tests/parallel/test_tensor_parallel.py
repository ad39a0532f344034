"""TP in {1, 2, 4} with and without sequence parallelism, DP in {1, 2}: same logits, loss, gradients
and five AdamW steps as one process, for Llama and Gemma (one KV head, so TP > KV heads replicates it).
The vocabularies (250, 318) are divisible by neither 4 nor (for 250) 4: padding is exercised."""

import pytest

from spawn import run_distributed
from tp_workers import check_export_and_provider
from tp_workers import check_layouts


@pytest.fixture(scope="module")
def folders(hf_checkpoint):
    return {
        "llama": str(hf_checkpoint("Llama-3.2-1B", vocab_size=250)),  # tied, GQA 8/2
        "llama_untied_bias": str(hf_checkpoint("Meta-Llama-3-8B", vocab_size=250, attention_bias=True, mlp_bias=True)),
        "gemma": str(hf_checkpoint("gemma-3-1b-it", vocab_size=318)),  # MQA, T=16 > window 8
    }


def test_world_of_2(folders):
    cases = [dict(folder=folders[f], tp=2, sequence_parallel=sp) for f in folders for sp in (False, True)]
    cases += [dict(folder=folders[f], tp=1, sequence_parallel=False) for f in ("llama", "gemma")]
    cases += [dict(folder=folders["gemma"], tp=1, sequence_parallel=False, zero=True)]
    run_distributed(check_layouts, 2, cases)


def test_world_of_4(folders):
    cases = [dict(folder=folders[f], tp=4, sequence_parallel=sp) for f in ("llama", "gemma") for sp in (False, True)]
    cases += [dict(folder=folders[f], tp=2, sequence_parallel=True) for f in ("llama_untied_bias", "gemma")]
    cases += [dict(folder=folders["llama"], tp=2, sequence_parallel=False, zero=True)]
    run_distributed(check_layouts, 4, cases)


@pytest.mark.slow
def test_world_of_8(folders):
    cases = [dict(folder=folders[f], tp=4, sequence_parallel=True) for f in ("llama", "gemma")]
    run_distributed(check_layouts, 8, cases)


def test_sharded_export_matches_single_process_files_and_provider(folders, tmp_path):
    run_distributed(check_export_and_provider, 4, folders["gemma"], str(tmp_path))
    single, tp = tmp_path / "single" / "model.safetensors", tmp_path / "tp" / "model.safetensors"
    assert single.read_bytes() == tp.read_bytes()
