"""Helpers of the data-pipeline tests (a uniquely named module: tests folders have no __init__.py)."""

import json

import numpy as np
import torch


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def identity_seed(n: int) -> int:
    """A seed whose permutation of n documents is the identity, so expected rows keep file order."""
    return next(s for s in range(10_000) if (np.random.default_rng(s).permutation(n) == np.arange(n)).all())


class ListSource:
    """An in-memory document source with explicit token lists."""

    def __init__(self, docs):
        self.docs = [np.asarray(d, dtype=np.int64) for d in docs]

    def __len__(self):
        return len(self.docs)

    def document_lengths(self):
        return np.array([len(d) for d in self.docs], dtype=np.int64)

    def tokens(self, doc, start=0, stop=None):
        return self.docs[doc][start:stop]


class IdDataset:
    """Sample i is a row filled with i, so batches show which samples they hold."""

    def __init__(self, n, seq_length=3):
        self.n, self.seq_length = n, seq_length

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        row = torch.full((self.seq_length,), i, dtype=torch.long)
        return {"input_ids": row, "labels": row.clone(), "position_ids": torch.arange(self.seq_length),
                "document_ids": torch.zeros(self.seq_length, dtype=torch.long)}


def rows(dataset):
    return [{k: v.tolist() for k, v in dataset[i].items()} for i in range(len(dataset))]
