"""Pipeline parallelism: stages, and the 1F1B and interleaved 1F1B schedules on point-to-point ops.

Layers are split into `pp * vp` virtual stages. Rank r of the pipeline holds the chunks of stages
r, r + pp, r + 2 pp, ... (Megatron's interleaved assignment; vp = 1 is plain 1F1B). Stage 0 owns
the embedding, the last stage the final norm, the output layer and the loss. Chunks are ordinary
`CausalLM` modules holding some layers under their global names.

The schedules are lists of actions, F(micro-batch, chunk) and B(micro-batch, chunk), in Megatron's
order (forward_backward_pipelining_without_interleaving / _with_interleaving). The executor posts a
receive right before it needs a tensor and sends without waiting (isend), so a schedule whose order
respects the data dependencies cannot deadlock; tags name (micro-batch, stage, direction), so
messages match whatever order they are posted in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from ..errors import LayoutError
from .collectives import record_communication


def stage_layers(num_layers: int, stages: int, layout: list[int] | None = None,
                 account_for_embedding: bool = False, account_for_loss: bool = False) -> list[range]:
    """Global layer indices of each virtual stage: `layout` (layers per stage), or an even split in
    which, as Megatron's account_for_* options say, the embedding and the loss may each count as one
    layer of the first and the last stage (so 126 layers + 2 split over 64 stages)."""
    if layout is None:
        total = num_layers + account_for_embedding + account_for_loss
        if total % stages:
            raise LayoutError(
                f"num_layers={num_layers} (+ embedding/loss when accounted: {total}) is not divisible by "
                f"pp*vp={stages} pipeline stages; give an explicit layout (layers per stage)"
            )
        layout = [total // stages] * stages
        layout[0] -= account_for_embedding
        layout[-1] -= account_for_loss
    if len(layout) != stages or sum(layout) != num_layers or min(layout) < 0 or max(layout) < 1:
        raise LayoutError(f"pipeline layout {list(layout)}: expected {stages} counts summing to {num_layers}")
    starts = [sum(layout[:i]) for i in range(stages)]
    return [range(start, start + count) for start, count in zip(starts, layout)]


def layout_stages(num_layers: int, config) -> list[range]:
    """`stage_layers` for a ParallelConfig."""
    return stage_layers(num_layers, config.pp * config.vp, config.pipeline_layout,
                        config.account_for_embedding, config.account_for_loss)


def chunk_stages(pp: int, vp: int, pp_rank: int) -> list[int]:
    """The virtual stages held by pipeline rank `pp_rank`, chunk by chunk."""
    return [v * pp + pp_rank for v in range(vp)]


def one_f_one_b(num_microbatches: int, pp: int, pp_rank: int) -> list[tuple[str, int, int]]:
    """1F1B: warm-up forwards, then one forward and one backward alternately, then cool-down."""
    m = num_microbatches
    warmup = min(pp - pp_rank - 1, m)
    actions = [("F", i, 0) for i in range(warmup)]
    for i in range(m - warmup):
        actions += [("F", warmup + i, 0), ("B", i, 0)]
    actions += [("B", i, 0) for i in range(m - warmup, m)]
    return actions


def interleaved_1f1b(num_microbatches: int, pp: int, vp: int, pp_rank: int) -> list[tuple[str, int, int]]:
    """Megatron's interleaved schedule: micro-batches go through the vp chunks in groups of pp."""
    m = num_microbatches
    if m % pp:
        raise LayoutError(
            f"the interleaved schedule needs the number of micro-batches ({m}) to be a multiple of pp ({pp})"
        )
    total = m * vp

    def unit(k: int, backward: bool) -> tuple[int, int]:
        group, within = divmod(k, pp * vp)
        chunk = within // pp
        return group * pp + within % pp, (vp - 1 - chunk) if backward else chunk

    warmup = min((pp - pp_rank - 1) * 2 + (vp - 1) * pp, total)
    actions = [("F", *unit(k, False)) for k in range(warmup)]
    for i in range(total - warmup):
        actions += [("F", *unit(warmup + i, False)), ("B", *unit(i, True))]
    actions += [("B", *unit(k, True)) for k in range(total - warmup, total)]
    return actions


def schedule(num_microbatches: int, pp: int, vp: int, pp_rank: int) -> list[tuple[str, int, int]]:
    if num_microbatches < 1:
        raise ValueError(f"the pipeline needs at least one micro-batch, got {num_microbatches}")
    if vp == 1:
        return one_f_one_b(num_microbatches, pp, pp_rank)
    return interleaved_1f1b(num_microbatches, pp, vp, pp_rank)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    targets: torch.Tensor | None = None  # next-token targets (labels already shifted: models.output.shift_labels)
    position_ids: torch.Tensor | None = None
    document_ids: torch.Tensor | None = None


class PipelineExecutor:
    """Runs one global batch through this rank's chunks with the schedule of its layout.

    `run` returns the sum over micro-batches of the last stage's token-summed losses, made available on
    every pipeline rank; each micro-batch backpropagates `normalize(batch, summed_loss)` (the training
    loop's normalisation: per token of the global batch, or per micro-batch as Megatron's default).
    """

    def __init__(self, chunks: list, dims):
        self.chunks, self.dims = chunks, dims
        self.pp, self.vp = dims.pp, len(chunks)
        self.stages = self.pp * self.vp
        self.pp_ranks = dist.get_process_group_ranks(dims.pp_group) if self.pp > 1 else [dims.rank]
        self.stage_of = chunk_stages(self.pp, self.vp, dims.pp_rank)
        self.timeline: list[tuple[str, float, float]] = []  # (action, start, end), for the bubble benchmark
        self.wait_time = 0.0  # seconds spent waiting for a neighbour during the last run

    def _peer(self, stage: int) -> int:
        return self.pp_ranks[stage % self.pp]

    def _tag(self, direction: int, mb: int, stage: int) -> int:
        return (mb * self.stages + stage) * 2 + direction

    def _send(self, tensor: torch.Tensor, stage: int, tag: int):
        record_communication("p2p", tensor)
        self.pending.append(dist.isend(tensor.contiguous(), self._peer(stage), tag=tag))

    def _recv(self, shape, dtype, stage: int, tag: int) -> torch.Tensor:
        import time

        buffer = torch.empty(shape, dtype=dtype, device=self.dims.device)
        start = time.perf_counter()
        dist.irecv(buffer, self._peer(stage), tag=tag).wait()
        self.wait_time += time.perf_counter() - start  # idle: what the bubble benchmark subtracts
        return buffer

    def _hidden_shape(self, batch: MicroBatch):
        seq = batch.input_ids.shape[1]
        if self.dims.sequence_parallel:
            seq //= self.dims.tp
        return (batch.input_ids.shape[0], seq, self.chunks[0].config.hidden_size)

    def _forward(self, mb: int, v: int):
        chunk, stage, batch = self.chunks[v], self.stage_of[v], self.batches[mb]
        hidden = None
        if not chunk.is_first:
            hidden = self._recv(self._hidden_shape(batch), self.dtype, stage - 1, self._tag(0, mb, stage))
            hidden.requires_grad_()
        out = chunk.hidden_states(batch.input_ids, batch.position_ids, batch.document_ids, hidden)
        if chunk.is_last:
            summed = chunk.loss(out, batch.targets, "sum")
            self.loss_sum += summed.detach().double().cpu()
            out = summed if self.normalize is None else self.normalize(batch, summed)
        else:
            self._send(out.detach(), stage + 1, self._tag(0, mb, stage + 1))
        if not self.forward_only:
            self.saved[(mb, v)] = (hidden, out)

    def _backward(self, mb: int, v: int):
        chunk, stage = self.chunks[v], self.stage_of[v]
        hidden, out = self.saved.pop((mb, v))
        if chunk.is_last:
            out.backward()
        else:
            grad = self._recv(out.shape, out.dtype, stage + 1, self._tag(1, mb, stage))
            out.backward(grad)
        if not chunk.is_first:
            self._send(hidden.grad, stage - 1, self._tag(1, mb, stage - 1))

    def run(self, batches: list[MicroBatch], normalize: Callable[[MicroBatch, torch.Tensor], torch.Tensor] | None
            = None, timed: bool = False, forward_only: bool = False, before_last_backward=None) -> float:
        """One global batch; `forward_only` (evaluation, under no_grad) runs every forward in order.
        `before_last_backward(v)` is called before chunk v's last backward of the schedule (after it
        the chunk's gradients are final: parallel.overlap.GradReducer.arm)."""
        import time

        self.batches, self.normalize, self.forward_only = batches, normalize, forward_only
        self.dtype = next(self.chunks[0].parameters()).dtype
        self.saved, self.pending, self.timeline, self.wait_time = {}, [], [], 0.0
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        if forward_only:
            actions = [("F", mb, v) for mb in range(len(batches)) for v in range(self.vp)]
        else:
            actions = schedule(len(batches), self.pp, self.vp, self.dims.pp_rank)
        last = {v: i for i, (kind, _, v) in enumerate(actions) if kind == "B"}
        for i, (kind, mb, v) in enumerate(actions):
            if before_last_backward is not None and last.get(v) == i:
                before_last_backward(v)
            start = time.perf_counter()
            (self._forward if kind == "F" else self._backward)(mb, v)
            if timed:
                self.timeline.append((f"{kind}{mb}.{v}", start, time.perf_counter()))
        for work in self.pending:
            work.wait()
        loss = self.loss_sum
        if self.pp > 1:  # the last stage's loss, for every pipeline rank to log
            loss = loss.clone()
            dist.broadcast(loss, src=self.pp_ranks[-1], group=self.dims.pp_group)
        return loss.item()
