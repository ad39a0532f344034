"""The optimizer step inside backward: the same update as torch's AdamW stepped after backward, with
no gradient left over, a tied weight stepped once, a parameter larger than a slice stepped slice by slice."""

import pytest
import torch

from minibridge import AutoBridge
from minibridge.training.step_in_backward import StepInBackward


def _train(folder, make_optimizer, steps=3):
    model = AutoBridge.from_hf_pretrained(folder).to_model(dtype=torch.bfloat16, progress=False)
    optimizer = make_optimizer(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    leftover = []
    for _ in range(steps):
        model(ids, labels=ids).backward()
        leftover.append(sum(p.grad is not None for p in model.parameters()))
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer, leftover


def test_same_update_as_adamw_after_backward_and_no_gradient_kept(hf_checkpoint):
    folder = hf_checkpoint("Llama-3.2-1B")  # tied embedding and output layer
    settings = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    want, _, _ = _train(folder, lambda m: torch.optim.AdamW(m.parameters(), **settings))
    got, optimizer, leftover = _train(folder, lambda m: StepInBackward(m.parameters(), torch.optim.AdamW, **settings))
    for (name, a), b in zip(want.named_parameters(), got.parameters()):
        assert torch.equal(a, b), name
    assert leftover == [0, 0, 0]
    tied = got.embed_tokens.weight
    ((_, inner),) = optimizer.optimizers[tied]
    assert inner.state[tied]["step"].item() == 3  # once per backward, not per use
    optimizer.set_lr(0.0)
    before = [p.detach().clone() for p in got.parameters()]
    ids = torch.randint(0, got.config.vocab_size, (2, 16))
    got(ids, labels=ids).backward()
    assert all(torch.equal(a, b) for a, b in zip(before, got.parameters()))  # lr 0 (weight decay is lr-scaled)


@pytest.mark.parametrize("fused", [False, True])
def test_a_parameter_larger_than_a_slice_is_stepped_slice_by_slice_to_the_same_bits(hf_checkpoint, fused):
    """Slices of 1000 elements (the tied 256 x 96 embedding: 25, the last of 576), where the default slice is
    4M elements: every parameter as torch's AdamW (its default single-tensor loop, and fused) leaves it."""
    folder = hf_checkpoint("Llama-3.2-1B")
    settings = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    want, _, _ = _train(folder, lambda m: torch.optim.AdamW(m.parameters(), **settings))
    got, optimizer, leftover = _train(
        folder, lambda m: StepInBackward(m.parameters(), torch.optim.AdamW, slice_size=1000, **settings))
    for (name, a), b in zip(want.named_parameters(), got.parameters()):
        assert torch.equal(a, b), name
    assert leftover == [0, 0, 0]
    tied = got.embed_tokens.weight
    pieces = optimizer.optimizers[tied]
    assert [piece.stop - piece.start for piece, _ in pieces] == [1000] * 24 + [576]
    for piece, inner in pieces:
        (view,) = inner.param_groups[0]["params"]
        assert view.data_ptr() == tied.view(-1)[piece].data_ptr() and view.grad is None
        assert inner.state[view]["step"].item() == 3
