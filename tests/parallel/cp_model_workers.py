"""Rank-side checks of context parallelism in the model: loss and every gradient equal one process."""

from __future__ import annotations

import torch
import torch.distributed as dist
from spawn import assert_grads_match, check_each

from minibridge import AutoBridge
from minibridge.models.output import shift_labels
from minibridge.parallel import ParallelConfig, finalize_grads, initialize
from minibridge.parallel.context import split_batch_for_context_parallel


def check_context(folder, cp, tp=1, seq=48):
    bridge = AutoBridge.from_hf_pretrained(folder)
    ids = torch.randint(0, bridge.config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, 5:9] = -100
    tokens = (labels[:, 1:] != -100).sum()
    reference = bridge.to_model(dtype=torch.float32, progress=False)
    ref_loss = reference(ids, labels=labels, loss_reduction="sum") / tokens
    ref_loss.backward()

    dims = initialize(ParallelConfig(tp=tp, cp=cp, sequence_parallel=tp > 1))
    model = bridge.to_model(parallel=dims, dtype=torch.float32, progress=False)
    local_ids, targets, positions = split_batch_for_context_parallel(ids, shift_labels(labels), None, cp, dims.cp_rank)
    loss = model.loss(model.hidden_states(local_ids, positions), targets, "sum") / tokens
    loss.backward()
    finalize_grads(model, dims, average_dp=False)
    total = loss.detach().clone()
    dist.all_reduce(total, group=dims.cp_group)
    assert abs(total.item() - ref_loss.item()) < 1e-5, (total.item(), ref_loss.item())
    assert_grads_match(model, reference)


def check_cases(cases):
    check_each(check_context, cases)
