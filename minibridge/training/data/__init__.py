"""The training data pipeline: datasets of fixed-length samples and their data-parallel iterator.

    # samples as Megatron Core's GPTDataset (sample_layout="legacy": minibridge's earlier windows)
    train, valid = build_datasets("indexed", seq_length=4096, data_paths=[prefix_a, prefix_b],
                                  blend_weights=[0.7, 0.3], tokenizer=tokenizer_dir)
    it = DataIterator(train, global_batch_size=64, micro_batch_size=2, dp_rank=r, dp_size=dp)
    for batch in it.next_global_batch(): ...          # Batch(input_ids, labels, position_ids, document_ids)

Hugging Face datasets: build_datasets("hf", hf_source=HFSource(path, preset="squad"), ...), hf.py, presets.py.
Preprocess JSONL (or an HF dataset, --hf-dataset) into Megatron's .bin/.idx with `python -m minibridge.training.data.preprocess`.
"""

from .build import KINDS, build_datasets, check_data
from .errors import CorruptIndexError, DataError
from .hf import HFSource
from .indexed import IndexedDataset, IndexedDatasetWriter
from .iterator import Batch, DataIterator, collate
from .megatron_gpt import MegatronGPTDataset, MockDocuments
from .samples import IGNORE_INDEX, BlendedDataset, MockDataset, SequenceDataset, WindowDataset, make_row
from .sft import SFTDataset, SFTSource
from .tokenizer import load_tokenizer, pydoc_corpus, train_tokenizer

__all__ = [
    "Batch", "BlendedDataset", "CorruptIndexError", "DataError", "DataIterator", "HFSource", "IGNORE_INDEX",
    "IndexedDataset", "IndexedDatasetWriter", "KINDS", "MegatronGPTDataset", "MockDataset", "MockDocuments",
    "SFTDataset", "SFTSource",
    "SequenceDataset", "WindowDataset", "build_datasets", "check_data", "collate", "load_tokenizer", "make_row",
    "pydoc_corpus", "train_tokenizer",
]
