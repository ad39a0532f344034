"""Model features the trainer relies on: packed documents, recomputation, the chunked fused loss."""

import pytest
import torch

from minibridge import AutoBridge
from minibridge.models.output import ChunkedOutputHead, OutputHead


@pytest.fixture(params=["Llama-3.2-1B", "gemma-3-1b-it"])
def model(request, hf_checkpoint):
    return AutoBridge.from_hf_pretrained(hf_checkpoint(request.param)).to_model(dtype=torch.float32, progress=False)


def test_packed_documents_never_see_each_other(model):
    """Two documents packed in one row give the logits each gets alone (positions reset, no cross attention)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 200, (1, 13), generator=g), torch.randint(0, 200, (1, 11), generator=g)
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(13), torch.arange(11)])[None]
    documents = torch.cat([torch.zeros(13), torch.ones(11)]).long()[None]
    with torch.no_grad():
        out = model(packed, position_ids=positions, document_ids=documents)
        torch.testing.assert_close(out[:, :13], model(a))
        torch.testing.assert_close(out[:, 13:], model(b))
        # without the document mask the second document does see the first
        assert (model(packed, position_ids=positions)[:, 13:] - model(b)).abs().max() > 1e-3


@pytest.mark.parametrize("granularity", ["selective", "full"])
def test_recomputation_gives_the_same_loss_and_gradients(model, granularity):
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_recompute(granularity)
    model(ids, labels=ids).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=lambda m: f"{name}: {m}")
    with pytest.raises(ValueError, match="recompute granularity 'some'"):
        model.set_recompute("some")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# a chunk that does not divide the 48 tokens; one chunk; chunks of 3 softmax parts (20 tokens -> 18)
@pytest.mark.parametrize("chunk,part", [(7, None), (1000, None), (20, 6)])
def test_chunked_head_matches_plain_head(hf_checkpoint, dtype, chunk, part):
    model = AutoBridge.from_hf_pretrained(hf_checkpoint("gemma-3-1b-it")).to_model(dtype=dtype, progress=False)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, 3:9] = -100
    losses, grads = [], []
    for head in (OutputHead(), ChunkedOutputHead(chunk_tokens=chunk, part_tokens=part)):
        model.head = head
        model.zero_grad()
        loss = model(ids, labels=labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.float().clone() for n, p in model.named_parameters()})
        assert abs(model(ids, labels=labels, loss_reduction="sum").item() - loss.item() * (labels[:, 1:] != -100).sum().item()) < 1e-3
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(losses[1], losses[0], **tol)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], **tol, msg=lambda m: f"{name}: {m}")


def test_chunks_are_whole_softmax_parts_and_sized_by_the_output_dtype():
    weight = torch.empty(1000, 8, dtype=torch.bfloat16)
    assert ChunkedOutputHead(2 * 1000 * 50).token_counts(weight) == (50, 50)  # 50 tokens of bf16 logits
    assert ChunkedOutputHead(2 * 1000 * 50).token_counts(weight.float()) == (25, 25)  # fp32: half as many
    assert ChunkedOutputHead(chunk_tokens=20, part_tokens=6).token_counts(weight) == (18, 6)
    assert ChunkedOutputHead(chunk_tokens=4, part_tokens=6).token_counts(weight) == (4, 4)
