"""The optimizer keys of checkpoints: torch's layout (`optim.state.<fqn>.<entry>`, nested for
dcp_to_torch_save), and checkpoints written before it (`optim.<fqn>.<entry>`) still resume."""

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp

from minibridge.bridge.loading import init_fresh_weights
from minibridge.checkpoint import BlockSavePlanner, SafeFileSystemReader, load_checkpoint, save_checkpoint
from minibridge.checkpoint.blocks import legacy_key, torch_layout, training_state
from minibridge.models import ModelConfig
from minibridge.parallel.parallelize import build_model
from minibridge.training.optimizer import MixedPrecisionAdamW

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is")  # one process, no process group

TINY = ModelConfig(family="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                   num_kv_heads=1, head_dim=4)


def _trained(seed: int):
    """A bf16 model and its optimizer after one step on random gradients (masters, moments, step)."""
    chunks = build_model(TINY, dtype=torch.bfloat16)
    init_fresh_weights(chunks, seed=seed)
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
    optim_keys = {k for k in stored if k.startswith("optim.")}
    assert optim_keys == {f"optim.state.{n}.{e}" for n in optimizer.named_state()
                          for e in ("step", "exp_avg", "exp_avg_sq", "master")}
    fresh, fresh_optimizer = _trained(2)
    load_checkpoint(tmp_path / "iter_0000001", fresh, fresh_optimizer)
    _same_state(fresh_optimizer, optimizer)
    nested = torch_layout(training_state(model, optimizer))
    assert set(nested) == {"model", "optim"} and set(nested["optim"]) == {"state"}


def test_checkpoint_with_the_earlier_optimizer_keys_still_loads(tmp_path):
    model, optimizer = _trained(1)
    folder = tmp_path / "iter_0000001"
    legacy = {legacy_key(k): v for k, v in training_state(model, optimizer).items()}
    assert any(k.startswith("optim.layers.") for k in legacy) and not any(k.startswith("optim.state.") for k in legacy)
    dcp.save(legacy, checkpoint_id=str(folder), planner=BlockSavePlanner())
    (folder / "run.json").write_text(json.dumps({"iteration": 1}))
    fresh, fresh_optimizer = _trained(2)
    load_checkpoint(folder, fresh, fresh_optimizer)
    _same_state(fresh_optimizer, optimizer)
    for (name, p), q in zip(fresh.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
