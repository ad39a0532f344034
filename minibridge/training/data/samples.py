"""Fixed-length training samples: row assembly, GPT-style windows, blending, splits and mock data.

Every dataset here yields dicts of four LongTensors of exactly `seq_length` tokens:

    input_ids     the tokens
    labels        aligned with input_ids (HF convention: the model shifts, logits[t] predicts
                  labels[t + 1]); -100 where no loss is taken
    position_ids  RoPE positions
    document_ids  0, 1, 2, ... per document within the row; attention must stay within one id

Packing (packing=True) keeps documents apart: positions restart at 0 at every document start, each
document gets its own id, and the label of a document's first token is -100 so the last token of the
previous document is never trained to predict it. Without packing the row is one causal sequence
(positions 0..T-1, one id), as in Megatron's default GPT dataset (no reset_position_ids/attention_mask).
Padding fills the tail of a row with the pad id and label -100; with packing it forms its own document.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .errors import DataError

IGNORE_INDEX = -100


@runtime_checkable
class SequenceDataset(Protocol):
    """What build_datasets returns: indexable samples of exactly seq_length tokens."""

    seq_length: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]: ...


class DocumentSource(Protocol):
    """A corpus of tokenized documents (IndexedDataset, JsonlTextSource)."""

    def __len__(self) -> int: ...

    def document_lengths(self) -> np.ndarray: ...

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray: ...


def make_row(pieces: Sequence[tuple[np.ndarray, np.ndarray | None]], seq_length: int, pad_id: int,
             packing: bool) -> dict[str, torch.Tensor]:
    """Lay out `pieces` (tokens, loss mask or None for "all tokens") left to right and pad to seq_length."""
    ids = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.full(seq_length, IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros(seq_length, dtype=np.int64)
    documents = np.zeros(seq_length, dtype=np.int64)
    o = 0
    for k, (tokens, loss) in enumerate(pieces):
        n = len(tokens)
        if o + n > seq_length:
            raise DataError(f"row overflow: pieces total more than seq_length={seq_length} tokens")
        ids[o : o + n] = tokens
        target = np.array(tokens, dtype=np.int64)
        if loss is not None:
            target[~np.asarray(loss, dtype=bool)] = IGNORE_INDEX
        if packing:
            target[:1] = IGNORE_INDEX  # no prediction across the boundary into this document
            positions[o : o + n] = np.arange(n)
            documents[o : o + n] = k
        else:
            positions[o : o + n] = np.arange(o, o + n)
        labels[o : o + n] = target
        o += n
    if packing:
        positions[o:] = np.arange(seq_length - o)
        documents[o:] = len(pieces)
    else:
        positions[o:] = np.arange(o, seq_length)
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions), "document_ids": torch.from_numpy(documents)}


def parse_split(split) -> list[float]:
    """Megatron's split string "969,30,1" (or "98/2/0", or a sequence) -> normalised train/valid/test."""
    parts = re.split(r"[,/]", split) if isinstance(split, str) else list(split)
    try:
        weights = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise DataError(f"split {split!r}: expected up to three numbers like '969,30,1'") from None
    if not 1 <= len(weights) <= 3 or any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise DataError(f"split {split!r}: expected one to three non-negative numbers with a positive sum")
    weights += [0.0] * (3 - len(weights))
    return [w / sum(weights) for w in weights]


def split_ranges(split, n: int) -> list[tuple[int, int]]:
    """[begin, end) document ranges of train/valid/test, rounded like Megatron's get_split_indices
    (cumulative rounding, any rounding excess taken off the boundaries so the last one is n)."""
    bounds = [0]
    for w in parse_split(split):
        bounds.append(bounds[-1] + int(round(w * n)))
    excess = bounds[-1] - n
    bounds = [0] + [b - excess for b in bounds[1:]]
    bounds = [min(max(b, 0), n) for b in bounds]
    return [(bounds[i], bounds[i + 1]) for i in range(3)]


class WindowDataset:
    """GPT-style samples over a document source: the documents `documents`, shuffled by `seed`, are
    concatenated and cut into consecutive seq_length windows (the last one padded). A window holds
    the tail of one document, whole documents and the head of the next, kept apart when packing."""

    def __init__(self, source: DocumentSource, documents: np.ndarray, seq_length: int, *, seed: int,
                 packing: bool, pad_id: int, name: str):
        order = np.asarray(documents, dtype=np.int64)
        order = order[np.random.default_rng(seed).permutation(len(order))]
        lengths = np.asarray(source.document_lengths(), dtype=np.int64)[order]
        keep = lengths > 0
        self.source, self.order = source, order[keep]
        self.seq_length, self.packing, self.pad_id, self.name = seq_length, packing, pad_id, name
        self._start = np.concatenate([[0], np.cumsum(lengths[keep])])  # token offset of each document
        total = int(self._start[-1])
        if total == 0:
            raise DataError(f"{name}: empty dataset (no tokens in the {len(documents)} documents of this split)")
        self._len = -(-total // seq_length)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self._len:
            raise IndexError(f"{self.name}: sample {index} out of range (0..{self._len - 1})")
        pos = index * self.seq_length
        stop = min(pos + self.seq_length, int(self._start[-1]))
        d = int(np.searchsorted(self._start, pos, side="right")) - 1
        pieces = []
        while pos < stop:
            begin = int(self._start[d])
            end = min(int(self._start[d + 1]), stop)
            pieces.append((self.source.tokens(int(self.order[d]), pos - begin, end - begin), None))
            pos, d = end, d + 1
        return make_row(pieces, self.seq_length, self.pad_id, self.packing)


def blend_indices(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, sample index within it) for `size` blended samples.

    Dataset d's j-th sample is due at "time" (j + 1/2) / w_d; merging all datasets by due time
    (Webster/Sainte-Lague apportionment) keeps the count of every dataset in every prefix of n samples
    within about one sample of n * w_d, like Megatron's greedy error-minimising blend, but vectorised.
    Ties go to the lower dataset index, so the order is fully deterministic."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    due, owner, rank = [], [], []
    for d, wd in enumerate(w):
        if wd <= 0:
            continue
        count = int(np.ceil(wd * size)) + 1
        j = np.arange(count)
        due.append((j + 0.5) / wd)
        owner.append(np.full(count, d))
        rank.append(j)
    due, owner, rank = np.concatenate(due), np.concatenate(owner), np.concatenate(rank)
    pick = np.lexsort((owner, due))[:size]
    return owner[pick], rank[pick]


class BlendedDataset:
    """Samples drawn from several datasets in proportion to weights (see blend_indices). Its length
    is the sum of theirs; a dataset asked for more samples than it has wraps around."""

    def __init__(self, datasets: Sequence[SequenceDataset], weights: Sequence[float]):
        self.datasets = list(datasets)
        self.seq_length = self.datasets[0].seq_length
        size = sum(len(d) for d in self.datasets)
        self.dataset_index, self.sample_index = blend_indices(weights, size)
        self.orders_itself = all(getattr(d, "orders_itself", False) for d in self.datasets)

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"blended dataset: sample {index} out of range (0..{len(self) - 1})")
        ds = self.datasets[int(self.dataset_index[index])]
        return ds[int(self.sample_index[index]) % len(ds)]


class MockDataset:
    """sample_layout="legacy" mock data: deterministic random tokens for CPU debugging: sample i depends only on (seed, offset + i). With packing,
    each row is cut into 1-4 random documents so the masking path is exercised too."""

    def __init__(self, num_samples: int, seq_length: int, vocab_size: int, *, seed: int, packing: bool,
                 offset: int = 0):
        if num_samples <= 0:
            raise DataError(f"mock data: empty dataset (num_samples={num_samples})")
        if vocab_size is None or vocab_size <= 0:
            raise DataError(f"mock data: vocab_size must be positive, got {vocab_size!r} "
                            "(pass a tokenizer or vocab_size=)")
        self.num_samples, self.seq_length, self.vocab_size = num_samples, seq_length, vocab_size
        self.seed, self.packing, self.offset = seed, packing, offset  # offset: validation draws apart

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"mock data: sample {index} out of range (0..{self.num_samples - 1})")
        rng = np.random.default_rng([self.seed, self.offset + index])
        ids = rng.integers(0, self.vocab_size, self.seq_length, dtype=np.int64)
        cuts = [0, self.seq_length]
        if self.packing and self.seq_length > 1:
            k = int(rng.integers(0, min(3, self.seq_length - 1) + 1))
            cuts = [0, *sorted(rng.choice(np.arange(1, self.seq_length), k, replace=False)), self.seq_length]
        pieces = [(ids[a:b], None) for a, b in zip(cuts[:-1], cuts[1:])]
        return make_row(pieces, self.seq_length, 0, self.packing)
