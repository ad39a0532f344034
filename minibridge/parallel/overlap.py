"""Data-parallel gradient reduction overlapped with backward (Megatron's `ddp.overlap_grad_reduce`).

`finalize_grads` all-reduces every gradient after the whole backward. A `GradReducer` instead
launches each bucket's all-reduce (`async_op=True`) as soon as every gradient in it is final for the
step, while backward goes on computing the earlier layers, and `finalize_grads(..., reducer=)` waits
for them before clipping and the optimizer. As in torch DDP's Reducer and Megatron's
DistributedDataParallel, the buckets are those of finalize_grads (`data.bucket_indices`: parameters
in registration order, ~25 MB each) launched in reverse order, always in that order on every rank
(a bucket that is ready early waits for the ones before it), so collectives match across ranks.

When is a gradient final? Only in the last backward of the step: `arm()` is called before it (the
last micro-batch; under pipeline parallelism the chunk's last backward of the schedule), earlier
micro-batches only accumulate, like DDP's no_sync. Then:
  - a post-accumulate-grad hook, registered after the optimizer's (which moves a bf16 `.grad` into
    the fp32 `main_grad`: hooks run in registration order), marks the parameter ready;
  - backwards that add into `main_grad` themselves (models.common's embedding lookup, models.output's
    fused output layer + loss) return None for the weight, and torch still runs the weight's
    AccumulateGrad node, and so its post-accumulate hooks, after that backward: the same hook marks
    them (the optimizer's hook sees `.grad` None there; test_overlap pins this torch behaviour);
  - anything never marked (a parameter outside this backward's graph) is launched by `finish()`.
Under context parallelism a bucket is summed over cp, then over dp, as finalize_grads does: the dp
all-reduce of a bucket starts when the next bucket is launched (or in finish), after its cp one.

Exactness: each all-reduce sums the same flat buffer as finalize_grads would, so with gloo the
numbers are identical. Gradients that are tp partial sums (sequence-parallel norms, replicated KV
heads) are left to finalize_grads (`data.late_reduced`), which sums them over tp first; with more
than two dp ranks their buckets differ from finalize_grads' and may round differently (1 ulp).

Why not torch DDP: its Reducer reduces the bf16 `.grad` of each micro-batch (we sum fp32 `main_grad`
once per step), never sees the gradients written into `main_grad` directly, and cannot tell the last
backward of a pipeline schedule; finalize_grads still accepts a DDP-wrapped model.
Memory: each bucket keeps a flat fp32 copy of its gradients between steps (one more copy of the
covered gradients, 4 B per parameter; allocating it in every backward cost page faults there).
Megatron avoids the copy by making the gradients themselves views of the bucket buffers.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .collectives import record_communication
from .data import BUCKET_BYTES, bucket_indices, flatten, grad_of, late_reduced, unflatten_into
from .dims import ParallelDims


class _Bucket:
    def __init__(self, names: list[str], params: list[torch.nn.Parameter]):
        self.names, self.params = names, params
        self.buffer = None  # the flat copy, kept between steps: no allocation (page faults) in backward
        self.reset()

    def reset(self):
        self.waiting = set(range(len(self.params)))  # members not final yet in this step
        self.grads, self.flat, self.work, self.stage = [], None, None, 0


class GradReducer:
    """Overlapped cp/dp gradient reduction for one model chunk; build it after the optimizer."""

    def __init__(self, model: torch.nn.Module, dims: ParallelDims, average: bool = True,
                 bucket_bytes: int = BUCKET_BYTES):
        self.stages = []  # (group, scale) in finalize_grads' order: cp, then dp
        if dims.config.cp > 1:
            self.stages.append((dims.cp_group, 1.0 / dims.config.cp if average else 1.0))
        if dims.dp > 1:
            self.stages.append((dims.dp_group, 1.0 / dims.dp if average else 1.0))
        late = late_reduced(model, dims)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n not in late]
        for n, p in named:
            if p.dtype != torch.float32 and not hasattr(p, "main_grad"):
                raise ConfigError(f"GradReducer: parameter {n} ({p.dtype}) has no fp32 main_grad yet; build the "
                                  f"optimizer (minibridge.training.optimizer.MixedPrecisionAdamW) first")
        # sizes of the fp32 gradients (a bf16 parameter's main_grad is fp32 too)
        groups = bucket_indices([p.numel() * 4 for _, p in named], bucket_bytes) if self.stages else []
        # launch order: backward produces the last parameters' gradients first
        self.buckets = [_Bucket([named[i][0] for i in idx], [named[i][1] for i in idx]) for idx in reversed(groups)]
        self.names = {n for b in self.buckets for n in b.names}
        self.armed, self.launched = False, 0
        self.launched_in_backward = 0  # buckets the last step's backward launched (the rest: finish's fallback)
        for b, bucket in enumerate(self.buckets):
            for i, p in enumerate(bucket.params):
                p.register_post_accumulate_grad_hook(partial(self._ready, b, i))

    def arm(self) -> None:
        """The next backward is this chunk's last of the step: its gradients are final after it."""
        self.armed = bool(self.buckets)

    def _ready(self, b: int, i: int, param: torch.Tensor) -> None:
        if not self.armed:
            return
        self.buckets[b].waiting.discard(i)
        while self.launched < len(self.buckets) and not self.buckets[self.launched].waiting:
            self._launch(self.launched)
            self.launched += 1

    def _start_stage(self, bucket: _Bucket) -> None:
        group, _ = self.stages[bucket.stage]
        record_communication("all_reduce", bucket.flat)
        bucket.work = dist.all_reduce(bucket.flat, group=group, async_op=True)

    def _next_stage(self, bucket: _Bucket) -> None:
        """Wait for the bucket's current all-reduce, scale it, and start the next one (cp -> dp)."""
        bucket.work.wait()
        scale = self.stages[bucket.stage][1]
        if scale != 1.0:
            bucket.flat.mul_(scale)
        bucket.stage += 1
        if bucket.stage < len(self.stages):
            self._start_stage(bucket)

    def _launch(self, b: int) -> None:
        bucket = self.buckets[b]
        bucket.grads = [g for g in map(grad_of, bucket.params) if g is not None]
        if not bucket.grads:
            bucket.stage = len(self.stages)  # nothing to reduce (no member got a gradient)
            return
        numel = sum(g.numel() for g in bucket.grads)
        if bucket.buffer is None or bucket.buffer.numel() != numel:
            bucket.buffer = torch.empty(numel, dtype=torch.float32, device=bucket.grads[0].device)
        bucket.flat = flatten(bucket.grads, out=bucket.buffer)
        self._start_stage(bucket)
        if len(self.stages) > 1:  # earlier buckets' cp sums are (nearly) done: start their dp sums
            for earlier in self.buckets[:b]:
                if earlier.stage == 0 and earlier.flat is not None:
                    self._next_stage(earlier)

    def finish(self) -> None:
        """Launch what backward left (fallback, in order), wait for everything, copy the sums back."""
        self.armed, self.launched_in_backward = True, self.launched
        while self.launched < len(self.buckets):
            self._launch(self.launched)
            self.launched += 1
        for bucket in self.buckets:
            while bucket.stage < len(self.stages):
                self._next_stage(bucket)
            if bucket.flat is not None:
                unflatten_into(bucket.flat, bucket.grads)
            bucket.reset()
        self.armed, self.launched = False, 0


def grad_reducers(chunks, dims: ParallelDims, average: bool = True, bucket_bytes: int = BUCKET_BYTES,
                  overlap: bool = True) -> list[GradReducer | None]:
    """A GradReducer per pipeline chunk; None for each when `overlap` is off or no gradient crosses
    ranks (dp = cp = 1): finalize_grads then reduces everything after backward."""
    if not overlap or (dims.dp == 1 and dims.config.cp == 1):
        return [None] * len(chunks)
    return [GradReducer(chunk, dims, average, bucket_bytes) for chunk in chunks]


def arm_chunk(reducers: list[GradReducer | None], chunk: int) -> None:
    """Before chunk's last backward of the step (PipelineExecutor.run's before_last_backward)."""
    if reducers[chunk] is not None:
        reducers[chunk].arm()
