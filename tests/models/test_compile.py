"""torch.compile as a build option (`to_model(compile=True)`, `model.compile=true` in the trainer): each
block compiled in place, same parameter names, the eager results to rounding (inductor on the CPU).
And one decoder block of each family compiled whole (fullgraph=True) through the Triton custom ops."""

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

from minibridge import AutoBridge
from minibridge.kernels._triton import triton_runs_on
from minibridge.models.common import rope_tables
from minibridge.models.config import ModelConfig, RopeConfig
from minibridge.models.registry import family as family_of

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


BLOCKS = {  # one layer of each family at toy size: GQA; Gemma's is a sliding-window layer with q/k norms
    "llama": dict(family="llama", layer_types=("full_attention",)),
    "gemma3": dict(family="gemma3", hidden_act="gelu_pytorch_tanh", layer_types=("sliding_attention",),
                   sliding_window=6, query_pre_attn_scalar=16, rope=RopeConfig(theta=10_000.0)),
}


DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not triton_runs_on(torch.empty(0)),
                                                        reason="needs Triton's interpreter (TRITON_INTERPRET=1)")),
           pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", list(BLOCKS))
def test_a_block_compiles_to_one_graph_through_the_triton_ops(family, device, monkeypatch):
    """torch.compile(fullgraph=True) raises at any graph break; with backend="aot_eager" AOTAutograd
    traces forward and backward through the Triton ops' fake implementations and registered autograd
    (kernels/minibridge_kernels/custom_ops.py) and runs the graph eagerly (on CPU the kernels
    interpreted): each op is one node of the graph, outputs and gradients are the eager block's."""
    monkeypatch.setenv("MINIBRIDGE_KERNEL_BACKEND", "triton")  # "auto" means the SDPA path on a CPU
    torch._dynamo.reset()
    settings = {k: v for k, v in BLOCKS[family].items() if k not in ("family", "layer_types", "sliding_window")}
    config = ModelConfig(family=family, vocab_size=16, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=16, layer_types=BLOCKS[family]["layer_types"],
                         sliding_window=BLOCKS[family].get("sliding_window"), **settings)
    torch.manual_seed(0)
    block = family_of(family).model_class.block_class(config, 0)
    for p in block.parameters():  # Gemma's norms start at 0 (a weight of one): move every weight off its init
        p.data.add_(torch.randn_like(p) * 0.1)
    block.to(device)
    x = torch.randn(1, 20, 32).to(device)
    rope = rope_tables(config.rope, 16, torch.arange(20, device=device)[None], torch.float32)
    docs = torch.tensor([[0] * 9 + [1] * 11], device=device) if family == "llama" else None

    graphs = []

    def aot_eager_recording(gm, example_inputs):
        graphs.append(gm.code)
        return lookup_backend("aot_eager")(gm, example_inputs)

    results = []
    for run in (block, torch.compile(block, fullgraph=True, backend=aot_eager_recording)):
        block.zero_grad()
        inputs = x.clone().requires_grad_()
        y = run(inputs, rope, docs)
        y.backward(torch.linspace(-1, 1, y.numel(), device=device).view(y.shape))
        results.append([y.detach(), inputs.grad] + [p.grad for p in block.parameters()])
    assert len(graphs) == 1
    for op in ("rms_norm_triton", "rope_triton", "attention_triton"):
        assert f"torch.ops.minibridge.{op}" in graphs[0], f"{op} is not a node of the graph"
    exact = device == "cpu"  # on CPU bit for bit; a GPU may pick other matmul kernels for the traced graph
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6)
