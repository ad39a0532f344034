"""Tensor-parallel layers: vocab-parallel embedding and output, row-parallel linear, parallel regions.

The model code stays single-device. The TP pass (`plan.py`) shrinks parameters to their local blocks
and switches a few modules to the subclasses below (same parameters, same names):

- `TensorParallelRegion` wraps a sublayer (attention, MLP; plan.parallel_region makes the subclass) between its two collectives: on the way in,
  `copy_to_region` (or, with sequence parallelism, the all-gather of the sequence shards); on the way
  out, the all-reduce of the row-parallel partial sums (or the reduce-scatter back to sequence shards).
  One collective pair per sublayer, as Megatron's fused QKV / fc1 layers give, even though q, k, v,
  gate and up stay separate column-parallel linears that share the gathered input.
- `RowParallelLinear` skips its bias; the region adds it once, after the reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.common import Embedding, lookup
from ..models.output import IGNORE_INDEX, OutputHead
from .collectives import (
    all_reduce_,
    copy_to_region,
    gather_from_last_dim,
    gather_from_sequence,
    reduce_from_region,
    reduce_scatter_sequence,
)


class TensorParallelRegion:
    """Mixin for a sublayer whose first linears are column-parallel and whose last is row-parallel."""

    row_name: str
    tp_group = None
    sequence_parallel = False

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        g = self.tp_group
        x = gather_from_sequence(x, g) if self.sequence_parallel else copy_to_region(x, g)
        out = super().forward(x, *args, **kwargs)
        out = reduce_scatter_sequence(out, g) if self.sequence_parallel else reduce_from_region(out, g)
        bias = getattr(self, self.row_name).bias
        return out if bias is None else out + bias


class RowParallelLinear(nn.Linear):
    """x @ W_local^T: a partial sum over this rank's input features. The bias is added by the region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class VocabParallelEmbedding(Embedding):
    """Rows [vocab_start, vocab_start + local rows) of the (padded) table; tokens outside give zeros,
    and the sum over ranks (or its reduce-scatter into sequence shards) completes the lookup."""

    vocab_start = 0
    tp_group = None
    sequence_parallel = False

    def lookup(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tp = torch.distributed.get_world_size(self.tp_group)
        if self.sequence_parallel and input_ids.shape[1] % tp:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} is not divisible by tp={tp} (sequence parallelism splits it)"
            )
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_embeddings)
        out, table = lookup(local.masked_fill(outside, 0), self.weight, self.padding_idx)
        out = out.masked_fill(outside[..., None], 0.0)  # also stops the gradient to row 0 from them
        if self.sequence_parallel:
            return reduce_scatter_sequence(out, self.tp_group), table
        return reduce_from_region(out, self.tp_group), table


class VocabParallelHead(OutputHead):
    """Output layer over a vocab-sharded weight: logits stay sharded for the loss, which never
    gathers them; `logits()` gathers them (for inspection and tests) and drops the padding."""

    def __init__(self, tp_group, vocab_start: int, vocab_size: int, sequence_parallel: bool):
        self.tp_group = tp_group
        self.vocab_start = vocab_start
        self.vocab_size = vocab_size
        self.sequence_parallel = sequence_parallel

    def _local_logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        g = self.tp_group
        hidden = gather_from_sequence(hidden, g) if self.sequence_parallel else copy_to_region(hidden, g)
        return F.linear(hidden, weight)

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return gather_from_last_dim(self._local_logits(hidden, weight), self.tp_group)[..., : self.vocab_size]

    def loss(self, hidden, weight, targets, reduction: str = "mean"):
        logits = self._local_logits(hidden, weight)
        losses = vocab_parallel_cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), self.vocab_start, self.vocab_size, self.tp_group
        )
        return losses.sum() if reduction == "sum" else losses.sum() / (targets != IGNORE_INDEX).sum()


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Megatron's cross entropy over vocab shards: three all-reduces of (tokens,)-sized vectors
    (max, target logit, sum of exponentials) instead of gathering (tokens, vocab) logits."""

    @staticmethod
    def forward(ctx, logits, target, vocab_start, vocab_size, group, ignore_index):
        ctx.input_dtype = logits.dtype
        logits = logits.float()
        columns = vocab_start + torch.arange(logits.shape[-1], device=logits.device)
        if bool((columns >= vocab_size).any()):  # vocabulary padding never wins the softmax
            logits = logits.masked_fill(columns >= vocab_size, torch.finfo(logits.dtype).min)
        top = logits.max(dim=-1).values
        all_reduce_(top, group, torch.distributed.ReduceOp.MAX)
        logits = logits - top[:, None]
        local_target = target - vocab_start
        mine = (local_target >= 0) & (local_target < logits.shape[-1])
        index = local_target.clamp(0, logits.shape[-1] - 1)
        target_logit = logits.gather(1, index[:, None]).squeeze(1) * mine
        all_reduce_(target_logit, group)
        exp = logits.exp_()
        sum_exp = exp.sum(dim=-1)
        all_reduce_(sum_exp, group)
        valid = target != ignore_index
        ctx.save_for_backward(exp.div_(sum_exp[:, None]), index, mine, valid)
        return (sum_exp.log() - target_logit) * valid

    @staticmethod
    def backward(ctx, grad):
        softmax, index, mine, valid = ctx.saved_tensors
        grad_logits = softmax
        grad_logits[torch.arange(len(index), device=index.device), index] -= mine.float()
        grad_logits *= (grad * valid)[:, None]
        return grad_logits.to(ctx.input_dtype), None, None, None, None, None


def vocab_parallel_cross_entropy(logits, target, vocab_start, vocab_size, group, ignore_index=-100):
    """Per-token losses (zero where ignored) from vocab-sharded logits (tokens, local vocab)."""
    return _VocabParallelCrossEntropy.apply(logits, target, vocab_start, vocab_size, group, ignore_index)
