"""Rank-side checks of pipeline parallelism against the single-process model (fp32)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from spawn import assert_grads_match, check_each

from minibridge import AutoBridge
from minibridge.models.output import shift_labels
from minibridge.parallel import ParallelConfig, finalize_grads, initialize
from minibridge.parallel.pipeline import MicroBatch, PipelineExecutor

BATCH, SEQ = 4, 16


def check_pipeline(folder, pp, vp=1, tp=1, microbatches=4):
    g = torch.Generator().manual_seed(7)
    bridge = AutoBridge.from_hf_pretrained(folder)
    ids = torch.randint(0, bridge.config.vocab_size, (BATCH * microbatches // BATCH * 2, SEQ), generator=g)
    reference = bridge.to_model(dtype=torch.float32, progress=False)
    tokens = (ids[:, 1:] >= 0).sum()
    ref_loss = reference(ids, labels=ids, loss_reduction="sum") / tokens
    ref_loss.backward()

    dims = initialize(ParallelConfig(tp=tp, pp=pp, vp=vp, sequence_parallel=tp > 1))
    chunks = bridge.to_model(parallel=dims, dtype=torch.float32, progress=False)
    chunks = chunks if isinstance(chunks, list) else [chunks]
    rows = slice(dims.dp_rank * len(ids) // dims.dp, (dims.dp_rank + 1) * len(ids) // dims.dp)
    local = ids[rows]
    per = len(local) // microbatches
    batches = [MicroBatch(local[i * per:(i + 1) * per], targets=shift_labels(local[i * per:(i + 1) * per])) for i in range(microbatches)]
    loss = PipelineExecutor(chunks, dims).run(batches, lambda batch, summed: summed / tokens) / tokens.item()
    if dims.dp > 1:
        t = torch.tensor(loss)
        dist.all_reduce(t, group=dims.dp_group)
        loss = t.item()
    assert abs(loss - ref_loss.item()) < 1e-5, (loss, ref_loss.item())
    from minibridge.parallel.data import finalize_pipeline_grads

    for chunk in chunks:
        finalize_grads(chunk, dims, average_dp=False)
    finalize_pipeline_grads(chunks, dims)
    for chunk in chunks:
        assert_grads_match(chunk, reference)


def check_cases(cases):
    check_each(check_pipeline, cases)


def check_pipeline_export(folder, pp, vp, tp, out_root):
    """Export from this layout's chunks equals the source checkpoint's tensors, byte for byte."""
    dims = initialize(ParallelConfig(tp=tp, pp=pp, vp=vp))
    bridge = AutoBridge.from_hf_pretrained(folder)
    chunks = bridge.to_model(parallel=dims, progress=False)
    bridge.save_hf_pretrained(chunks, f"{out_root}/pp{pp}vp{vp}tp{tp}", progress=False)
