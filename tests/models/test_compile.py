"""torch.compile as a build option (`to_model(compile=True)`, `model.compile=true` in the trainer): each
block compiled in place, same parameter names, the eager results to rounding (inductor on the CPU)."""

import pytest
import torch

from minibridge import AutoBridge

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compiled_blocks_give_the_eager_loss_and_gradients(hf_checkpoint):
    bridge = AutoBridge.from_hf_pretrained(hf_checkpoint("Llama-3.2-1B"))
    eager = bridge.to_model(dtype=torch.float32, progress=False)
    compiled = bridge.to_model(dtype=torch.float32, progress=False, compile=True)
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in compiled.layers.values())
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for model in (eager, compiled):
        loss = model(ids, labels=ids)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
