"""Pipeline parallelism: 1F1B and interleaved schedules give the single-process loss and gradients."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibridge.parallel.pipeline import interleaved_1f1b, one_f_one_b, stage_layers
from spawn import run_distributed
from pp_workers import check_cases


@pytest.fixture(scope="module")
def folders(hf_checkpoint):
    return {
        "llama": str(hf_checkpoint("Llama-3.2-1B", num_hidden_layers=8)),  # tied embeddings
        "llama_untied": str(hf_checkpoint("Meta-Llama-3-8B", num_hidden_layers=4)),
        "gemma": str(hf_checkpoint("gemma-3-1b-it", num_hidden_layers=8)),  # tied, local and global layers
    }


def test_schedules_run_every_unit_once_and_in_dependency_order():
    for pp, vp, m in ((2, 1, 4), (4, 1, 3), (2, 2, 4), (4, 2, 8)):
        for rank in range(pp):
            actions = one_f_one_b(m, pp, rank) if vp == 1 else interleaved_1f1b(m, pp, vp, rank)
            forwards = [(mb, v) for kind, mb, v in actions if kind == "F"]
            backwards = [(mb, v) for kind, mb, v in actions if kind == "B"]
            assert sorted(forwards) == sorted(backwards) == sorted((mb, v) for mb in range(m) for v in range(vp))
            for unit in backwards:  # a backward comes after its own forward
                assert actions.index(("F", *unit)) < actions.index(("B", *unit))
    with pytest.raises(ValueError, match=r"micro-batches \(3\) to be a multiple of pp \(2\)"):
        interleaved_1f1b(3, 2, 2, 0)


def test_stage_layers():
    assert stage_layers(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert stage_layers(5, 2, layout=[3, 2]) == [range(0, 3), range(3, 5)]
    with pytest.raises(ValueError, match=r"num_layers=5 \(\+ embedding/loss when accounted: 5\) is not divisible by pp\*vp=2"):
        stage_layers(5, 2)
    # Llama 3.1 405B finetune: 126 layers + embedding + loss over pp 8 x vp 8 = 64 stages
    stages = stage_layers(126, 64, account_for_embedding=True, account_for_loss=True)
    assert len(stages[0]) == len(stages[-1]) == 1 and all(len(s) == 2 for s in stages[1:-1])
    assert stages[-1] == range(125, 126)


def test_pp2_vp1_and_vp2(folders):
    cases = [dict(folder=folders[f], pp=2, vp=vp) for f in folders for vp in (1, 2)]
    run_distributed(check_cases, 2, cases)


def test_pp4_and_tp2_pp2(folders):
    cases = [dict(folder=folders[f], pp=4, vp=vp) for f in ("llama", "gemma") for vp in (1, 2)]
    cases += [dict(folder=folders[f], pp=2, tp=2) for f in ("llama", "gemma")]
    run_distributed(check_cases, 4, cases)


def test_tp2_pp2_dp2(folders):
    run_distributed(check_cases, 8, [dict(folder=folders["gemma"], pp=2, tp=2, vp=2)])


LAYOUTS = [(4, 4, 1, 1), (4, 2, 2, 2), (4, 2, 1, 2), (2, 2, 2, 1), (2, 2, 4, 1), (4, 4, 2, 1)]  # world, pp, vp, tp


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(LAYOUTS), st.sampled_from(["gemma-3-1b-it", "Llama-3.2-1B", "Meta-Llama-3-8B"]))
def test_export_from_pipeline_layouts_is_byte_identical(hf_checkpoint, tmp_path_factory, layout, name):
    """A random PP/VP/TP layout exports exactly the source checkpoint's bytes (bf16 source, 8 layers)."""
    from pp_workers import check_pipeline_export
    from safetensors.torch import load_file

    world, pp, vp, tp = layout
    folder = hf_checkpoint(name, dtype=torch.bfloat16, num_hidden_layers=8)
    out_root = tmp_path_factory.mktemp("export")
    run_distributed(check_pipeline_export, world, str(folder), pp, vp, tp, str(out_root))
    source = load_file(folder / "model.safetensors")
    out = load_file(out_root / f"pp{pp}vp{vp}tp{tp}" / "model.safetensors")
    assert sorted(out) == sorted(source)
    for key in source:
        assert torch.equal(out[key].view(torch.uint8), source[key].view(torch.uint8)), (layout, key)
