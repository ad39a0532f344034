"""ddp.overlap_grad_reduce: bucket all-reduces launched during the last backward give exactly the
gradients of finalize_grads after backward (same buckets, gloo sums two ranks exactly), for plain DP,
DP x TP (sequence-parallel partial sums stay with finalize_grads), DP x PP (1F1B and interleaved) and
DP x CP; fp32 and bf16_mixed, tied and untied embeddings (their gradients go into main_grad directly),
ZeRO-1 on and off, with gradient accumulation (8 sequences in micro-batches of 2)."""

import pytest

from overlap_workers import overlap_matches
from spawn import run_distributed

ONE_PER_BUCKET = "ddp.bucket_size=1"  # each gradient its own bucket: every readiness signal is needed
LLAMA, GEMMA = "llama3_debug_pretrain_config", "gemma3_debug_pretrain_config"
ZERO1 = "optimizer.use_distributed_optimizer=true"
NO_ZERO1 = "optimizer.use_distributed_optimizer=false"
BF16 = "mixed_precision=bf16_mixed"


def test_dp2_overlap_is_exact():
    run_distributed(overlap_matches, 2, [
        (LLAMA, [ZERO1, ONE_PER_BUCKET]),                 # fp32, untied lm_head, ZeRO-1
        (LLAMA, [NO_ZERO1, BF16, ONE_PER_BUCKET]),        # bf16: lm_head and embedding write main_grad
        (GEMMA, [ZERO1, BF16, ONE_PER_BUCKET]),           # tied table: output layer + lookup in one main_grad
        (LLAMA, [ZERO1, BF16]),                           # the default 25 MB: one bucket
    ])


def test_dp2_times_another_dimension_is_exact():
    """Four ranks, one world, each layout in turn: tp's partial sums, the pipeline's last backward of
    each chunk (tied embedding across stages, interleaved chunks), cp's sum before dp's."""
    run_distributed(overlap_matches, 4, [
        (LLAMA, ["model.tensor_model_parallel_size=2", "model.sequence_parallel=true", BF16, ZERO1, ONE_PER_BUCKET]),
        (GEMMA, ["model.pipeline_model_parallel_size=2", NO_ZERO1, ONE_PER_BUCKET]),
        (GEMMA, ["model.pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size=2", BF16, ZERO1,
                 "model.num_layers=4", ONE_PER_BUCKET]),
        (LLAMA, ["model.context_parallel_size=2", BF16, NO_ZERO1, ONE_PER_BUCKET]),
    ])


def test_torch_runs_post_accumulate_hooks_after_a_backward_that_returns_no_gradient():
    """What GradReducer relies on for the embedding and output weights, whose backwards add into
    main_grad and return None: the weight's post-accumulate hook still runs, after that backward."""
    import torch

    class WritesMainGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight):
            ctx.weight = weight
            return x * weight

        @staticmethod
        def backward(ctx, grad):
            ctx.weight.main_grad += 1.0
            return grad * ctx.weight, None

    weight = torch.nn.Parameter(torch.ones(3))
    weight.main_grad = torch.zeros(3)
    seen = []
    weight.register_post_accumulate_grad_hook(lambda p: seen.append((p.grad, p.main_grad.clone())))
    WritesMainGrad.apply(torch.ones(3, requires_grad=True), weight).sum().backward()
    assert len(seen) == 1 and seen[0][0] is None and torch.equal(seen[0][1], torch.ones(3))


def test_ddp_settings_are_checked_and_the_reducer_needs_the_optimizer_first():
    from types import SimpleNamespace

    import torch

    from minibridge.errors import ConfigError
    from minibridge.parallel.overlap import GradReducer
    from minibridge.recipes import build_config

    for override, says in (("ddp.bucket_size=0", "ddp.bucket_size=0: expected a positive integer"),
                           ("ddp.overlap_grad_reduce=maybe", "ddp.overlap_grad_reduce")):
        with pytest.raises(ConfigError, match=says):
            build_config(LLAMA, overrides=[override]).validate()
    assert build_config(LLAMA, overrides=["ddp.bucket_size=1000"]).ddp.bucket_bytes() == 4000  # fp32 gradients
    dims = SimpleNamespace(config=SimpleNamespace(cp=1), dp=2, tp=1, dp_group=None)
    with pytest.raises(ConfigError, match="parameter weight .*bfloat16.* has no fp32 main_grad yet"):
        GradReducer(torch.nn.Linear(2, 2, dtype=torch.bfloat16), dims)
