"""The forward machinery of one rank: data batches -> micro-batches -> summed token losses.

Shared by the training step, `Trainer.validate` and `python -m minibridge.eval`, so evaluation sees
exactly the micro-batches, targets and layout (TP/SP/PP/CP/DP) training does. Losses are always
token sums: a mean over a set of batches is (sum of every token's NLL) / (number of loss tokens),
whatever the micro-batch split, so any layout reproduces a single process. What a training micro-batch
backpropagates is `loss_normalizer`'s: Megatron-Core's two rules (model.calculate_per_token_loss).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..models.output import IGNORE_INDEX, shift_labels
from ..parallel.collectives import all_reduce_
from ..parallel.context import split_batch_for_context_parallel
from ..parallel.pipeline import MicroBatch, PipelineExecutor
from ..errors import ConfigError
from .data import DataIterator
from .progress import perplexity


@dataclass
class LossSums:
    """Token-summed NLL over evaluated batches, summed over every rank that holds part of them."""

    loss_sum: float  # sum of per-token NLL (nats)
    tokens: int  # loss tokens (targets != -100)
    samples: int  # sequences
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        """Token-weighted mean NLL (nan without any loss token)."""
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)


class ModelForward:
    """This rank's model chunks under `dims`; `data_source` names the data in error messages."""

    def __init__(self, chunks, dims, data_source: str):
        self.chunks, self.dims, self.data_source = chunks, dims, data_source
        self.pipeline = PipelineExecutor(chunks, dims) if dims.pp > 1 else None

    def micro_batch(self, batch) -> MicroBatch:
        """A data batch on this rank's device, its labels shifted into targets (once, on the whole
        sequence); under context parallelism, this cp rank's share."""
        batch.check_vocabulary(self.chunks.config.vocab_size, self.data_source)
        b = batch.to(self.dims.device)
        targets = shift_labels(b.labels)
        if b.final_label is not None:  # Megatron-style (seq_length + 1)-token windows: the last input's target
            targets[:, -1] = b.final_label
        packed = bool((b.document_ids != 0).any())
        if self.dims.cp == 1:
            return MicroBatch(b.input_ids, targets, b.position_ids, b.document_ids if packed else None)
        if packed:
            raise ConfigError("packed documents (dataset.packing=true, or an SFT dataset's packed rows) with "
                              "model.context_parallel_size > 1 are not supported yet; set one of them off")
        ids, targets, positions = split_batch_for_context_parallel(b.input_ids, targets, b.position_ids,
                                                                   self.dims.cp, self.dims.cp_rank)
        return MicroBatch(ids, targets, positions, None)

    def micro_batches(self, batches) -> list[MicroBatch]:
        return [self.micro_batch(b) for b in batches]

    def forward(self, batch, reduction: str) -> torch.Tensor:
        """Loss of one batch through the whole model on this rank (pp == 1)."""
        return self.loss(self.micro_batch(batch), reduction)

    def loss(self, b: MicroBatch, reduction: str) -> torch.Tensor:
        model = self.chunks[0]
        return model.loss(model.hidden_states(b.input_ids, b.position_ids, b.document_ids), b.targets, reduction)

    def loss_normalizer(self, per_token: bool, tokens: torch.Tensor, micro_batches: int
                        ) -> Callable[[MicroBatch, torch.Tensor], torch.Tensor]:
        """What a micro-batch backpropagates, from its summed NLL, as Megatron-Core's forward_step_calc_loss
        and gradient reduction have it. Every reduction here sums over dp and cp, so Megatron's average over
        them becomes a division by their size. `tokens`: the global batch's loss tokens; `micro_batches`:
        this rank's count of them.
          per_token=True   sum / tokens                    (calculate_per_token_loss=True)
          per_token=False  sum / n / M / (dp x cp)         (the default; n: the micro-batch's loss tokens on
                                                            this rank, at least 1; Megatron divides in this order)
        """
        if per_token:
            total = tokens.clamp(min=1).to(self.dims.device)
            return lambda batch, summed: summed / total
        ranks = self.dims.dp * self.dims.config.cp

        def mean_of_micro_batch(batch: MicroBatch, summed: torch.Tensor) -> torch.Tensor:
            own = (batch.targets != IGNORE_INDEX).sum().clamp(min=1)
            return summed / own / micro_batches / ranks

        return mean_of_micro_batch

    def global_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the data-parallel ranks (each holds other sequences)."""
        return all_reduce_(value, self.dims.dp_group) if self.dims.dp > 1 else value

    def sequence_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a per-rank partial (loss) over the cp ranks that share the sequences, then over dp."""
        if self.dims.cp > 1:
            all_reduce_(value, self.dims.cp_group)
        return self.global_sum(value)

    @torch.no_grad()
    def evaluate(self, iterator: DataIterator, iters: int,
                 progress: Callable[[int, int, LossSums], None] | None = None) -> LossSums:
        """Summed NLL over `iters` global batches of `iterator` (forward only; the pipeline runs its
        forward_only path). `progress(done, iters, sums_so_far_on_this_rank)` is called after each."""
        total = torch.zeros((), dtype=torch.float64)
        tokens = torch.zeros((), dtype=torch.float64)
        samples = torch.zeros((), dtype=torch.float64)
        start = time.perf_counter()
        for i in range(iters):
            batches = iterator.next_global_batch()
            tokens += sum(b.num_loss_tokens() for b in batches)
            samples += sum(b.input_ids.shape[0] for b in batches)
            if self.pipeline is not None:
                total += self.pipeline.run(self.micro_batches(batches), forward_only=True)
            else:
                for batch in batches:
                    total += self.forward(batch, "sum").double().cpu()
            if progress is not None:
                progress(i + 1, iters, LossSums(total.item(), int(tokens), int(samples), time.perf_counter() - start))
        total, tokens, samples = self.sequence_sum(total), self.global_sum(tokens), self.global_sum(samples)
        return LossSums(total.item(), int(tokens.item()), int(samples.item()), time.perf_counter() - start)

