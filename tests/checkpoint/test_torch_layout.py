"""The optimizer keys of checkpoints: torch's layout (`optim.state.<fqn>.<entry>` and `optim.param_groups`,
nested for dcp_to_torch_save; what torch's set_optimizer_state_dict takes), and checkpoints written before it
(`optim.<fqn>.<entry>`, no param_groups) still resume."""

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp

from minibridge.loading.fresh import initialize_fresh
from minibridge.checkpoint import BlockSavePlanner, SafeFileSystemReader, load_checkpoint, save_checkpoint
from minibridge.checkpoint.blocks import check_param_groups, legacy_key, torch_layout, training_state
from minibridge.errors import CheckpointMismatchError
from minibridge.models import ModelConfig
from minibridge.parallel.parallelize import build_model
from minibridge.training.optimizer import MixedPrecisionAdamW

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is")  # one process, no process group

TINY = ModelConfig(family="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                   num_kv_heads=1, head_dim=4)


def _trained(seed: int):
    """A bf16 model and its optimizer after one step on random gradients (masters, moments, step)."""
    chunks = build_model(TINY, dtype=torch.bfloat16)
    initialize_fresh(chunks, seed=seed)
    optimizer = MixedPrecisionAdamW(chunks[0], lr=1e-2)
    torch.manual_seed(seed)
    for p in chunks[0].parameters():
        p.main_grad.normal_()
    optimizer.step()
    return chunks[0], optimizer


def _same_state(a, b) -> None:
    state_a, state_b = a.named_state(), b.named_state()
    assert set(state_a) == set(state_b) and state_a
    for name, entries in state_a.items():
        assert set(entries) == {"step", "exp_avg", "exp_avg_sq", "master"}
        for key, value in entries.items():
            assert torch.equal(value, state_b[name][key]), (name, key)


def test_saved_in_torch_layout_and_resumed(tmp_path):
    model, optimizer = _trained(1)
    save_checkpoint(tmp_path, 1, model, optimizer, {})
    stored = SafeFileSystemReader(str(tmp_path / "iter_0000001")).read_metadata().state_dict_metadata
    state_keys = {k for k in stored if k.startswith("optim.state.")}
    assert state_keys == {f"optim.state.{n}.{e}" for n in optimizer.named_state()
                          for e in ("step", "exp_avg", "exp_avg_sq", "master")}
    group_keys = {k for k in stored if k.startswith("optim.") and k not in state_keys}
    assert {"optim.param_groups.0.params", "optim.param_groups.0.lr", "optim.param_groups.1.wd_mult"} <= group_keys
    fresh, fresh_optimizer = _trained(2)
    load_checkpoint(tmp_path / "iter_0000001", fresh, fresh_optimizer)
    _same_state(fresh_optimizer, optimizer)
    nested = torch_layout(training_state(model, optimizer))
    assert set(nested) == {"model", "optim"} and set(nested["optim"]) == {"state", "param_groups"}


def test_torch_tools_read_the_optimizer(tmp_path):
    """dcp_to_torch_save in a plain process gives torch's optimizer state dict, which torch's own
    set_optimizer_state_dict loads into a torch.optim.AdamW: the same moments and settings, and its next
    step equals ours."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    chunks = build_model(TINY, dtype=torch.float32)  # fp32: the parameters are their own masters, as in torch
    initialize_fresh(chunks, seed=3)
    model = chunks[0]
    ours = MixedPrecisionAdamW(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    torch.manual_seed(3)
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    ours.step()
    save_checkpoint(tmp_path, 1, model, ours, {})
    dcp_to_torch_save(tmp_path / "iter_0000001", tmp_path / "whole.pt")
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    groups = whole["optim"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and groups[0]["betas"] == (0.9, 0.95)
    assert sorted(n for g in groups for n in g["params"]) == sorted(n for n, _ in model.named_parameters())

    twin = build_model(TINY, dtype=torch.float32)[0]
    twin.load_state_dict(whole["model"])
    theirs = torch.optim.AdamW([{"params": [p for n, p in twin.named_parameters() if n in g["params"]]}
                                for g in groups], lr=1e-2)
    set_optimizer_state_dict(twin, theirs, optim_state_dict=whole["optim"])
    assert theirs.param_groups[0]["betas"] == (0.9, 0.95) and theirs.param_groups[1]["weight_decay"] == 0.0
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        p.grad, q.grad = grads[n].clone(), grads[n].clone()
    ours.step()
    theirs.step()
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, q), n


def test_param_groups_that_do_not_fit_the_run_are_named(tmp_path):
    model, optimizer = _trained(1)
    save_checkpoint(tmp_path, 1, model, optimizer, {})
    folder = tmp_path / "iter_0000001"
    groups = optimizer.named_param_groups()
    stored = {f"optim.param_groups.{i}.{k}": v for i, g in enumerate(groups) for k, v in g.items()}
    check_param_groups(folder, stored, groups)
    swapped = {**stored, "optim.param_groups.0.wd_mult": 0.0}
    with pytest.raises(CheckpointMismatchError, match="param group with wd_mult 0.0 in the checkpoint but 1.0"):
        check_param_groups(folder, swapped, groups)
    lost = {**stored, "optim.param_groups.1.params": []}
    with pytest.raises(CheckpointMismatchError, match=f"do not hold {groups[1]['params'][0]!r}"):
        check_param_groups(folder, lost, groups)


def test_checkpoint_with_the_earlier_optimizer_keys_still_loads(tmp_path):
    model, optimizer = _trained(1)
    folder = tmp_path / "iter_0000001"
    legacy = {legacy_key(k): v for k, v in training_state(model, optimizer).items() if "param_groups" not in k}
    assert any(k.startswith("optim.layers.") for k in legacy) and not any(k.startswith("optim.state.") for k in legacy)
    dcp.save(legacy, checkpoint_id=str(folder), planner=BlockSavePlanner())
    (folder / "run.json").write_text(json.dumps({"iteration": 1}))
    fresh, fresh_optimizer = _trained(2)
    load_checkpoint(folder, fresh, fresh_optimizer)
    _same_state(fresh_optimizer, optimizer)
    for (name, p), q in zip(fresh.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
