"""Record the samples of Megatron Core's GPTDataset and MockGPTDataset, for tests/training/data/test_megatron_gpt.py.

Two steps, in two environments (the tests then need neither megatron-core nor this script):

    # 1. the corpus, written by minibridge's own writer (repo venv)
    .venv/bin/python tests/data/megatron_gpt_dataset/make_fixtures.py corpus
    # 2. Megatron's samples of it (a venv with megatron-core 0.19.2; its cp311 wheel carries the compiled
    #    helpers and works on Python 3.11 despite Requires-Python >= 3.12):
    #    python3.11 -m venv /tmp/mcore-venv && /tmp/mcore-venv/bin/pip install torch==2.13.0 numpy packaging triton
    #    /tmp/mcore-venv/bin/pip install --no-deps --ignore-requires-python megatron-core==0.19.2
    /tmp/mcore-venv/bin/python tests/data/megatron_gpt_dataset/make_fixtures.py record

Step 2 writes SETTING.npz per setting of SETTINGS (tokens: every sample's seq_length + 1 tokens, i.e.
Megatron's tokens followed by the last label; document_index, sample_index, shuffle_index) and
settings.json (the settings, megatron-core's version, the dataset lengths).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PREFIX = HERE / "corpus"  # corpus.bin / corpus.idx
VOCAB = 1000
MOCK_VOCAB = 1000
MOCK_SAMPLES = 40  # first samples recorded of each mock split (a mock epoch has ~100k sequences)

# name: (seq_length, seed, split, num_samples per split or None for one epoch, mock)
SETTINGS = {
    "indexed_L16_seed1234": (16, 1234, "969,30,1", None, False),
    "indexed_L7_seed42_split80": (7, 42, "80,20,0", None, False),
    "indexed_L32_seed5_3epochs": (32, 5, "90,10,0", [260, 20, 0], False),  # separate final epoch
    "indexed_L8_seed3_2epochs": (8, 3, "100,0,0", [1600, 0, 0], False),  # final epoch shuffled jointly
    "mock_L64_seed1234": (64, 1234, "9999,8,2", None, True),
}


def corpus_documents() -> list[tuple[np.ndarray, list[int]]]:
    """60 documents of 1..120 tokens; every fifth one cut into two or three sequences (sentences)."""
    rng = np.random.default_rng(2024)
    docs = []
    for d in range(60):
        tokens = rng.integers(0, VOCAB, int(rng.integers(1, 121)))
        cuts = [len(tokens)]
        if d % 5 == 0 and len(tokens) >= 3:
            a = sorted(rng.choice(np.arange(1, len(tokens)), min(2, len(tokens) - 1), replace=False))
            cuts = list(np.diff([0, *a, len(tokens)]))
        docs.append((tokens, [int(c) for c in cuts]))
    return docs


def write_corpus(prefix: Path) -> None:
    from minibridge.training.data import IndexedDatasetWriter

    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for tokens, sequences in corpus_documents():
            writer.add_document(tokens, sequences)


class Tokenizer:
    """What GPTDataset asks of a tokenizer: no pad (so -1, no real token is masked), EOD = vocab - 1."""

    def __init__(self, vocab_size):
        self.vocab_size, self.eod = vocab_size, vocab_size - 1
        self.unique_identifiers = {"class": "Tokenizer", "vocab_size": vocab_size}  # for the cache hash


def record() -> None:
    import megatron.core
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    meta = {"megatron_core": megatron.core.__version__, "settings": {}}
    for name, (seq_length, seed, split, sizes, mock) in SETTINGS.items():
        with tempfile.TemporaryDirectory() as cache:
            config = GPTDatasetConfig(
                random_seed=seed, sequence_length=seq_length, blend=None if mock else ([str(PREFIX)], None),
                split=split, tokenizer=Tokenizer(MOCK_VOCAB if mock else VOCAB), reset_position_ids=False,
                reset_attention_mask=False, eod_mask_loss=False, path_to_cache=cache)
            cls = MockGPTDataset if mock else GPTDataset
            built = BlendedMegatronDatasetBuilder(cls, sizes or [None, None, None], lambda: True, config).build()
        arrays, lengths = {}, {}
        for split_name, ds in zip(("train", "valid"), built):
            if ds is None:
                continue
            count = min(len(ds), MOCK_SAMPLES) if mock else len(ds)
            rows = []
            for i in range(count):
                sample = ds[i]
                rows.append(np.concatenate([sample["tokens"].numpy(), sample["labels"][-1:].numpy()]))
            arrays[f"{split_name}_tokens"] = np.stack(rows).astype(np.int32)
            if not mock:
                arrays[f"{split_name}_document_index"] = np.asarray(ds.document_index)
                arrays[f"{split_name}_sample_index"] = np.asarray(ds.sample_index)
                arrays[f"{split_name}_shuffle_index"] = np.asarray(ds.shuffle_index)
            lengths[split_name] = len(ds)
        np.savez_compressed(HERE / f"{name}.npz", **arrays)
        meta["settings"][name] = {"seq_length": seq_length, "seed": seed, "split": split, "sizes": sizes,
                                  "mock": mock, "lengths": lengths}
        print(name, lengths)
    (HERE / "settings.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step == "corpus":
        write_corpus(PREFIX)
    elif step == "record":
        record()
    else:
        sys.exit("usage: make_fixtures.py corpus|record")
