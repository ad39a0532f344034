"""Lean by default: the model's own loss is the fused chunked one, the embedding backward adds into
the gradient that is already there (the tied output layer's, or the fp32 main_grad) without a dense copy,
and the gated MLP product keeps two tensors for backward instead of three."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minibridge import AutoBridge
from minibridge.models import common
from minibridge.models.output import LOSS_CHUNK_BYTES, ChunkedOutputHead, OutputHead
from minibridge.training.optimizer import MixedPrecisionAdamW


class StockEmbedding(nn.Embedding):
    """torch's own embedding backward (a dense gradient that autograd adds to the output layer's)."""

    def lookup(self, input_ids):
        return self(input_ids), None


def _model(hf_checkpoint, name, dtype=torch.float32):
    return AutoBridge.from_hf_pretrained(hf_checkpoint(name)).to_model(dtype=dtype, progress=False)


def _grads(model, ids, labels):
    model.zero_grad()
    loss = model(ids, labels=labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _batch(vocab):
    ids = torch.randint(1, vocab, (2, 24), generator=torch.Generator().manual_seed(5))
    labels = ids.clone()
    labels[1, :7] = -100
    ids[0, 3] = 0  # Gemma's pad token: its row gets no gradient from the input side
    return ids, labels


@pytest.mark.parametrize("name", ["gemma-3-1b-it", "Llama-3.2-1B", "Meta-Llama-3-8B"])  # tied, tied, untied
def test_fused_loss_and_in_place_embedding_gradient_are_the_defaults(hf_checkpoint, name, monkeypatch):
    model = _model(hf_checkpoint, name)
    assert isinstance(model.head, ChunkedOutputHead) and model.head.chunk_bytes == LOSS_CHUNK_BYTES
    ids, labels = _batch(model.config.vocab_size)
    loss, grads = _grads(model, ids, labels)
    with torch.no_grad():  # evaluation takes the same chunks without computing gradients
        torch.testing.assert_close(model(ids, labels=labels), loss, rtol=1e-6, atol=0)
    # the reference: transformers' shape of the computation, plain head and stock embedding
    model.head = OutputHead()
    model.embed_tokens.__class__ = StockEmbedding
    ref_loss, ref_grads = _grads(model, ids, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")
    if model.config.tie_word_embeddings:  # the embedding rows were added into the output layer's gradient
        model.head, model.embed_tokens.__class__ = ChunkedOutputHead(chunk_tokens=7), common.Embedding
        backward, seen = common._TableLookup.backward, []

        def spy(ctx, grad_hidden, grad_table):
            seen.append(grad_table is not None)  # the output layer's gradient came to be added into
            return backward(ctx, grad_hidden, grad_table)

        monkeypatch.setattr(common._TableLookup, "backward", staticmethod(spy))
        _grads(model, ids, labels)
        assert seen == [True]


@pytest.mark.parametrize("name", ["gemma-3-1b-it", "Meta-Llama-3-8B"])  # tied, untied
def test_embedding_rows_go_straight_into_the_fp32_main_grad(hf_checkpoint, name, monkeypatch):
    """Mixed precision: bf16 parameters, fp32 main_grad accumulated over two micro-batches, against the
    stock embedding backward (a dense bf16 gradient added to the output layer's before the fp32 add)."""
    model = _model(hf_checkpoint, name, torch.bfloat16)
    ids, labels = _batch(model.config.vocab_size)
    optimizer = MixedPrecisionAdamW(model, lr=1e-3)
    weight = model.embed_tokens.weight
    main_grads, seen = [], []
    backward = common._TableLookup.backward

    def spy(ctx, grad_hidden, grad_table):
        seen.append(grad_table is None)  # the fused loss added the output layer's gradient into main_grad
        return backward(ctx, grad_hidden, grad_table)

    monkeypatch.setattr(common._TableLookup, "backward", staticmethod(spy))
    for embedding in (common.Embedding, StockEmbedding):
        model.embed_tokens.__class__ = embedding
        optimizer.zero_grad()
        for _ in range(2):
            model(ids, labels=labels).backward()
        assert weight.grad is None and weight.main_grad.dtype == torch.float32
        main_grads.append(weight.main_grad.clone())
    torch.testing.assert_close(main_grads[0], main_grads[1], rtol=2e-2, atol=2e-2 * main_grads[1].abs().max().item())
    assert seen == [True, True]


def _saved_count(fn):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn()
    return out, len(saved)


@pytest.mark.parametrize("gelu", [False, True], ids=["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_product_matches_autograd_bit_for_bit_and_saves_less(gelu, dtype):
    gen = torch.Generator().manual_seed(0)
    gate, up, grad = (torch.randn(64, 96, generator=gen).to(dtype) for _ in range(3))
    gate.requires_grad_(), up.requires_grad_()
    act = (lambda g: F.gelu(g, approximate="tanh")) if gelu else F.silu
    ref, ref_saved = _saved_count(lambda: act(gate) * up)
    out, saved = _saved_count(lambda: common.gated_product(gate, up, gelu))
    assert torch.equal(out, ref) and (saved, ref_saved) == (2, 3)
    for mine, theirs in zip(torch.autograd.grad(out, (gate, up), grad), torch.autograd.grad(ref, (gate, up), grad)):
        assert torch.equal(mine, theirs)
    with torch.no_grad():
        assert torch.equal(common.gated_product(gate, up, gelu), ref)


def test_the_research_path_loads_no_checkpoint_machinery_and_no_triton(hf_checkpoint):
    """`from minibridge import AutoBridge`, load, forward + backward: neither torch.distributed.checkpoint
    (with DTensor, ~50 MB resident) nor, on a CPU-only torch, Triton (~70 MB) is imported."""
    import os
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from minibridge import AutoBridge\n"
            f"model = AutoBridge.from_hf_pretrained({str(hf_checkpoint('Llama-3.2-1B'))!r}).to_model(progress=False)\n"
            "ids = torch.randint(0, model.config.vocab_size, (1, 8))\n"
            "model(ids, labels=ids).backward()\n"
            "cpu_only = not (torch.version.cuda or getattr(torch.version, 'hip', None))\n"
            "print(sorted(m for m in ('torch.distributed.checkpoint', 'torch.distributed.tensor') if m in sys.modules),\n"
            "      cpu_only and 'triton' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split("\n")[0] == "[] False", out
