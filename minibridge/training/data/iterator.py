"""Batches and the deterministic, resumable, data-parallel sample order.

The order is defined once for all ranks, in global samples: the stream s = 0, 1, 2, ... visits epoch
e = s // N (N = len(dataset)) at position s % N of permutation(N) drawn with seed + e (or in order when
shuffle=False, the default for datasets that order themselves: Megatron-style samples, whose shuffle
index is the order Megatron's sampler reads). Global batch g is stream samples [g*G, (g+1)*G) (G = global_batch_size); dp rank r takes
the contiguous slice [r*G/dp, (r+1)*G/dp) of it and cuts it into micro-batches. The whole state is
therefore the number of consumed samples, which stays valid when dp_size (or the micro-batch size)
changes between a save and a resume: dp ranks' slices concatenated in rank order are the dp=1 batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .errors import DataError
from .samples import IGNORE_INDEX, SequenceDataset


@dataclass
class Batch:
    """One micro-batch; all LongTensor (B, T)."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # aligned with input_ids (the model shifts); -100 = no loss
    position_ids: torch.Tensor  # restart at 0 at each packed document
    document_ids: torch.Tensor  # 0, 1, 2, ... per document in a row; attention stays within one id
    # (B,) target of each row's last token, from Megatron-style (seq_length + 1)-token windows
    # (megatron_gpt); None: the last token predicts nothing, as with HF-convention labels alone
    final_label: torch.Tensor | None = None

    def num_loss_tokens(self) -> int:
        """Targets the shifted loss uses: labels[:, 1:] (label 0 of a row predicts nothing), and
        final_label, the last position's target, where the rows carry one."""
        tail = 0 if self.final_label is None else int((self.final_label != IGNORE_INDEX).sum())
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum()) + tail

    def check_vocabulary(self, vocab_size: int, source: str) -> None:
        """Every token id indexes the model's embedding (an id past it would fail deep in the forward)."""
        low, high = int(self.input_ids.min()), int(self.input_ids.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise DataError(f"{source}: a batch holds token id {bad}, outside the model's vocabulary of {vocab_size} "
                            f"ids (model.config.vocab_size); the data was tokenized with another tokenizer: use the "
                            f"model's tokenizer, or a model whose vocabulary covers this one")

    def to(self, device, non_blocking: bool = False) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: v if v is None else v.to(device, non_blocking=non_blocking) for k, v in moved.items()})


def collate(samples: list[dict[str, torch.Tensor]]) -> Batch:
    """Stack samples into a Batch; final_label only when every sample has one."""
    names = [f.name for f in fields(Batch) if f.name != "final_label" or all(f.name in s for s in samples)]
    return Batch(**{name: torch.stack([s[name] for s in samples]) for name in names})


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class DataIterator:
    """This dp rank's micro-batches of successive global batches; see the module docstring."""

    STATE_VERSION = 1

    def __init__(self, dataset: SequenceDataset, *, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, seed: int = 1234, shuffle: bool | None = None):
        gbs = _positive_int("global_batch_size", global_batch_size)
        mbs = _positive_int("micro_batch_size", micro_batch_size)
        dp = _positive_int("dp_size", dp_size)
        if gbs % (mbs * dp):
            raise DataError(
                f"global_batch_size={gbs} is not divisible by micro_batch_size={mbs} x dp_size={dp} "
                f"= {mbs * dp}"
            )
        if isinstance(dp_rank, bool) or not isinstance(dp_rank, (int, np.integer)) or not 0 <= dp_rank < dp:
            raise DataError(f"dp_rank={dp_rank!r} must be an int in [0, dp_size={dp})")
        if len(dataset) == 0:
            raise DataError("DataIterator: empty dataset (0 samples)")
        self.dataset = dataset
        self.global_batch_size, self.micro_batch_size = gbs, mbs
        self.dp_rank, self.dp_size = int(dp_rank), dp
        # shuffle=None: reshuffle each epoch unless the dataset's order is already shuffled and is
        # the reference order (Megatron-style samples: its sampler reads them in order)
        if shuffle is None:
            shuffle = not getattr(dataset, "orders_itself", False)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.consumed_samples = 0
        self._epoch, self._order = -1, None

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per global batch on each rank (the gradient-accumulation steps)."""
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    @property
    def epoch(self) -> int:
        return self.consumed_samples // len(self.dataset)

    def _dataset_index(self, s: int) -> int:
        n = len(self.dataset)
        epoch, pos = divmod(s, n)
        if not self.shuffle:
            return pos
        if epoch != self._epoch:
            self._order = np.random.default_rng(self.seed + epoch).permutation(n)
            self._epoch = epoch
        return int(self._order[pos])

    def next_global_batch(self) -> list[Batch]:
        per_rank = self.global_batch_size // self.dp_size
        first = self.consumed_samples + self.dp_rank * per_rank
        indices = [self._dataset_index(first + k) for k in range(per_rank)]
        self.consumed_samples += self.global_batch_size
        mbs = self.micro_batch_size
        return [collate([self.dataset[i] for i in indices[m : m + mbs]]) for m in range(0, per_rank, mbs)]

    def __iter__(self):
        return self

    def __next__(self) -> list[Batch]:
        return self.next_global_batch()

    def state_dict(self) -> dict:
        """JSON-able; in global samples, so it is the same on every dp rank."""
        return {
            "version": self.STATE_VERSION,
            "consumed_samples": self.consumed_samples,
            "consumed_global_batches": self.consumed_samples // self.global_batch_size,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dataset_length": len(self.dataset),
        }

    def load_state_dict(self, state: dict, resized: str | None = None) -> None:
        """Resume where `state` was saved. The saved seed and shuffle define the order and win over
        the constructor's; the dataset must have the same length (else it is different data), unless
        `resized` says why it was rebuilt for another number of samples (the same data, more or fewer
        Megatron epochs): the run then continues at the same consumed-sample count."""
        if not isinstance(state, dict):
            raise DataError(f"data iterator state must be a dict, got {type(state).__name__}")
        for key, kind in (("consumed_samples", int), ("seed", int), ("shuffle", bool), ("dataset_length", int)):
            if not isinstance(state.get(key), kind):
                raise DataError(f"data iterator state: key {key!r} missing or not {kind.__name__} "
                                f"(got {state.get(key)!r})")
        if state.get("version", self.STATE_VERSION) != self.STATE_VERSION:
            raise DataError(f"data iterator state: version {state['version']!r}, expected {self.STATE_VERSION}")
        if state["dataset_length"] != len(self.dataset) and resized is None:
            raise DataError(f"data iterator state was saved for a dataset of {state['dataset_length']} "
                            f"samples, this one has {len(self.dataset)}: the data, split, seq_length or "
                            "seed changed, so the order cannot be resumed")
        if state["consumed_samples"] < 0:
            raise DataError(f"data iterator state: consumed_samples={state['consumed_samples']} is negative")
        self.consumed_samples = state["consumed_samples"]
        self.seed, self.shuffle = state["seed"], state["shuffle"]
        self._epoch, self._order = -1, None
