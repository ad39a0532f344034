"""Samples exactly as Megatron Core's GPTDataset builds them, and its mock corpus.

Reference: megatron/core/datasets/gpt_dataset.py (GPTDataset._build_document_sample_shuffle_indices,
_build_document_index, _build_shuffle_index, MockGPTLowLevelDataset) and helpers.cpp
(build_sample_idx) of megatron-core 0.19.2; tests/data/megatron_gpt_dataset/ holds samples recorded
from it, which our samples equal token for token.

The unit is one sequence of the low-level dataset (of an indexed dataset: a .idx sequence, which is a
whole document unless preprocessing split sentences). One numpy.random.RandomState(seed) draws, in
this order:

    document index  the split's sequences repeated num_epochs times, shuffled (the final epoch shuffled
                    on its own when it is needed for less than 80% of its samples)
    sample index    sample i covers stream tokens [i*L, i*L + L + 1) of the documents concatenated in
                    document-index order (L = seq_length): windows of L + 1 tokens overlapping by one,
                    so inputs w[:-1] and targets w[1:] train every adjacent pair; the last partial
                    window is dropped, (N*tokens - 1) // L samples in all
    shuffle index   a permutation of the samples; dataset[i] is sample shuffle_index[i]

Rows follow samples.make_row (HF convention, labels aligned with input_ids): input_ids = w[:L], labels
= w[:L] and `final_label` = w[L], the target of the last input, which the shifted labels cannot hold.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import DataError
from .samples import DocumentSource, make_row, parse_split

MOCK_SEQUENCES = 100_000  # MockGPTLowLevelDataset.size
MOCK_MAX_LENGTH = 4096  # MockGPTLowLevelDataset.max_sequence_length (lengths drawn in [1, 4096))
MOCK_SEED = 0  # MockGPTLowLevelDataset.seed, fixed whatever the run's seed
MOCK_SPLIT = "1,1,1"  # BlendedMegatronDatasetConfig replaces any split of mock data by this one
FINAL_EPOCH_THRESHOLD = 0.80  # GPTDataset: a final epoch used below this share is shuffled apart


def megatron_split_ranges(split, n: int) -> list[tuple[int, int] | None]:
    """[begin, end) sequence ranges of train/valid/test as BlendedMegatronDatasetBuilder cuts them:
    book-ends from the running float sum of the normalised split, each rounded times n on its own;
    None for a zero-width share (Megatron builds no dataset for it)."""
    weights = np.asarray(parse_split(split), dtype=np.float64)
    weights = (weights / np.sum(weights)).tolist()  # utils.normalize, float for float
    ends = [0]
    for w in weights:
        ends.append(ends[-1] + w)
    return [(int(round(a * float(n))), int(round(b * float(n)))) if b > a else None
            for a, b in zip(ends[:-1], ends[1:])]


class MockDocuments:
    """Megatron's MockGPTLowLevelDataset: sequence i has a random length L_i (default_rng(0)) and holds
    (1, 2, ..., L_i - 1) % vocab followed by EOD; a learnable pattern, so a mock run's loss falls."""

    def __init__(self, vocab_size: int, eod: int):
        if vocab_size is None or vocab_size <= 0:
            raise DataError(f"mock data: vocab_size must be positive, got {vocab_size!r} "
                            "(pass a tokenizer or vocab_size=)")
        self.vocab_size, self.eod = int(vocab_size), int(eod)
        rng = np.random.default_rng(seed=MOCK_SEED)
        self.lengths = rng.integers(low=1, high=MOCK_MAX_LENGTH, size=MOCK_SEQUENCES, dtype=np.int32)

    def __len__(self) -> int:
        return MOCK_SEQUENCES

    def document_lengths(self) -> np.ndarray:
        return self.lengths

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        n = int(self.lengths[doc])
        full = np.concatenate([(np.arange(n - 1, dtype=np.int64) + 1) % self.vocab_size, [self.eod]])
        return full[start:stop]


class IndexedSequences:
    """An IndexedDataset seen by sequence, the unit Megatron's GPTDataset splits and shuffles."""

    def __init__(self, indexed):
        self.indexed = indexed

    def __len__(self) -> int:
        return len(self.indexed.sequence_lengths)

    def document_lengths(self) -> np.ndarray:
        return self.indexed.sequence_lengths

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.indexed.sequence_tokens(doc, start, stop)


def num_epochs_for(num_samples: int | None, tokens_per_epoch: int, seq_length: int) -> int:
    """GPTDataset._get_num_epochs: one epoch without a request, else enough for num_samples windows."""
    if num_samples is None:
        return 1
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                         separate_final_epoch: bool) -> np.ndarray:
    """_build_document_index: the documents num_epochs times, shuffled in place by `rng`."""
    if not separate_final_epoch or num_epochs == 1:
        index = np.tile(np.asarray(documents), num_epochs).astype(np.int32)
        rng.shuffle(index)
        return index
    first = build_document_index(documents, num_epochs - 1, rng, False)
    return np.concatenate([first, build_document_index(documents, 1, rng, False)])


def build_sample_index(lengths: np.ndarray, document_index: np.ndarray, seq_length: int) -> np.ndarray:
    """helpers.cpp build_sample_idx (drop_last_partial_sequence, add_extra_token_to_sequence), in numpy.

    Row i is (position in document_index, token offset) of stream token i*L: the document whose tokens
    [cum[d], cum[d + 1]) hold it (an empty document never does); row 0 is (0, 0) as in the C++ loop."""
    sizes = np.asarray(lengths, dtype=np.int64)[document_index]
    cum = np.concatenate([[0], np.cumsum(sizes)])
    num_samples = (int(cum[-1]) - 1) // seq_length
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    docs = np.searchsorted(cum, starts, side="right") - 1
    index = np.stack([docs, starts - cum[docs]], axis=1)
    index[0] = 0
    return index


def build_shuffle_index(num_samples: int, total: int, rng: np.random.RandomState) -> np.ndarray:
    """_build_shuffle_index: [0, num_samples) shuffled, then [num_samples, total) shuffled apart."""
    dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total:
        return first
    last = np.arange(num_samples, total, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate([first, last])


class MegatronGPTDataset:
    """GPTDataset's samples of `documents` (sequence ids of `source`); see the module docstring.

    num_samples: None for one epoch, else at least that many samples (more epochs, as Megatron).
    packing: positions and document ids restart at every sequence start and no label crosses into a
    new sequence (samples.make_row), instead of one causal row as Megatron's default."""

    orders_itself = True  # the shuffle index is the order: DataIterator does not reshuffle

    def __init__(self, source: DocumentSource, documents: np.ndarray, seq_length: int, *, seed: int,
                 packing: bool, pad_id: int, name: str, num_samples: int | None = None):
        self.source, self.seq_length, self.packing, self.pad_id, self.name = source, seq_length, packing, pad_id, name
        self.lengths = np.asarray(source.document_lengths())
        documents = np.asarray(documents, dtype=np.int64)
        tokens_per_epoch = int(self.lengths[documents].sum())
        if tokens_per_epoch == 0:
            raise DataError(f"{name}: empty dataset (no tokens in the {len(documents)} sequences of this split)")
        if tokens_per_epoch < seq_length + 1:
            raise DataError(f"{name}: {tokens_per_epoch} tokens in the {len(documents)} sequences of this split; "
                            f"a sample needs seq_length + 1 = {seq_length + 1} (use less seq_length or more data)")
        epochs = num_epochs_for(num_samples, tokens_per_epoch, seq_length)
        separate_final_epoch = False
        if epochs > 1:
            before_final = ((epochs - 1) * tokens_per_epoch - 1) // seq_length
            per_epoch = (tokens_per_epoch - 1) // seq_length
            separate_final_epoch = num_samples - before_final < int(FINAL_EPOCH_THRESHOLD * per_epoch)
        rng = np.random.RandomState(seed)
        self.document_index = build_document_index(documents, epochs, rng, separate_final_epoch)
        self.sample_index = build_sample_index(self.lengths, self.document_index, seq_length)
        total = len(self.sample_index) - 1
        self.shuffle_index = build_shuffle_index(before_final if separate_final_epoch else total, total, rng)

    def __len__(self) -> int:
        return len(self.shuffle_index)

    def window(self, index: int) -> list[np.ndarray]:
        """The seq_length + 1 tokens of dataset[index], one array per sequence they come from."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: sample {index} out of range (0..{len(self) - 1})")
        d, offset = (int(v) for v in self.sample_index[int(self.shuffle_index[index])])
        need, parts = self.seq_length + 1, []
        while need > 0:
            doc = int(self.document_index[d])
            part = self.source.tokens(doc, offset, min(int(self.lengths[doc]), offset + need))
            if len(part):
                parts.append(part)
            need, offset, d = need - len(part), 0, d + 1
        return parts

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = make_row([(p, None) for p in self.window(index)], self.seq_length + 1, self.pad_id, self.packing)
        sample = {key: value[:-1] for key, value in row.items()}
        sample["final_label"] = row["labels"][-1]
        return sample
