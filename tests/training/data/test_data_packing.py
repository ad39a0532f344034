"""Row layout against hand-built expectations: packing masks, plain GPT windows, splits, blending, mock."""

import numpy as np
import pytest
from data_helpers import IdDataset, ListSource, identity_seed, rows

from minibridge.training.data import BlendedDataset, DataError, MockDataset, WindowDataset, build_datasets
from minibridge.training.data.samples import blend_indices, split_ranges

DOCS = [[11, 12, 13], [21, 22], [31, 32, 33, 34, 35]]  # 10 tokens, windows of 4 -> 3 rows, last padded
PAD = 0


def windows(packing, docs=DOCS):
    return WindowDataset(ListSource(docs), np.arange(len(docs)), 4, seed=identity_seed(len(docs)),
                         packing=packing, pad_id=PAD, name="test")


def test_packed_windows_keep_documents_apart():
    assert rows(windows(packing=True)) == [
        {"input_ids": [11, 12, 13, 21], "labels": [-100, 12, 13, -100],
         "position_ids": [0, 1, 2, 0], "document_ids": [0, 0, 0, 1]},
        # 22 ends document B (continued from row 0); a row's first label is never used by the shifted loss
        {"input_ids": [22, 31, 32, 33], "labels": [-100, -100, 32, 33],
         "position_ids": [0, 0, 1, 2], "document_ids": [0, 1, 1, 1]},
        # padding is a document of its own with no loss
        {"input_ids": [34, 35, PAD, PAD], "labels": [-100, 35, -100, -100],
         "position_ids": [0, 1, 0, 1], "document_ids": [0, 0, 1, 1]},
    ]


def test_unpacked_windows_are_plain_causal_rows():
    assert rows(windows(packing=False)) == [
        {"input_ids": [11, 12, 13, 21], "labels": [11, 12, 13, 21],
         "position_ids": [0, 1, 2, 3], "document_ids": [0, 0, 0, 0]},
        {"input_ids": [22, 31, 32, 33], "labels": [22, 31, 32, 33],
         "position_ids": [0, 1, 2, 3], "document_ids": [0, 0, 0, 0]},
        {"input_ids": [34, 35, PAD, PAD], "labels": [34, 35, -100, -100],
         "position_ids": [0, 1, 2, 3], "document_ids": [0, 0, 0, 0]},
    ]


def test_documents_are_shuffled_by_seed_and_empty_ones_skipped():
    docs = [[1], [], [2, 2], [3, 3, 3], [4]]
    a = WindowDataset(ListSource(docs), np.arange(5), 4, seed=7, packing=True, pad_id=0, name="t")
    b = WindowDataset(ListSource(docs), np.arange(5), 4, seed=7, packing=True, pad_id=0, name="t")
    assert rows(a) == rows(b)
    assert sorted(a.order.tolist()) == [0, 2, 3, 4]  # the empty document is dropped
    stream = [t for i in a.order for t in docs[i]]
    assert [x for r in rows(a) for x, d in zip(r["input_ids"], r["document_ids"])][: len(stream)] == stream
    orders = {tuple(WindowDataset(ListSource(docs), np.arange(5), 4, seed=s, packing=True, pad_id=0,
                                  name="t").order) for s in range(20)}
    assert len(orders) > 1


def test_empty_split_is_an_error():
    with pytest.raises(DataError, match=r"t: empty dataset \(no tokens in the 2 documents"):
        WindowDataset(ListSource([[], []]), np.arange(2), 4, seed=0, packing=True, pad_id=0, name="t")


def test_split_ranges_follow_megatron_rounding():
    assert split_ranges("969,30,1", 1000) == [(0, 969), (969, 999), (999, 1000)]
    assert split_ranges("969,30,1", 10) == [(0, 10), (10, 10), (10, 10)]
    assert split_ranges("98/2/0", 100) == [(0, 98), (98, 100), (100, 100)]
    assert split_ranges([1, 1], 5) == [(0, 3), (3, 5), (5, 5)]  # round(2.5)=2, round(5)=5: drift goes to train
    for bad in ("a,b", "1,2,3,4", "-1,2", "0,0,0"):
        with pytest.raises(DataError, match="split"):
            split_ranges(bad, 10)


def test_blend_proportions_hold_at_every_prefix():
    weights = [0.5, 0.3, 0.2]
    owner, rank = blend_indices(weights, 1000)
    counts = np.zeros(3)
    for n, d in enumerate(owner, start=1):
        counts[d] += 1
        assert np.all(np.abs(counts - n * np.array(weights)) <= 1.0), (n, counts)
    for d in range(3):  # each dataset's samples come in order 0, 1, 2, ...
        assert rank[owner == d].tolist() == list(range(int((owner == d).sum())))


def test_blended_dataset_draws_by_weight_and_wraps_small_datasets():
    small, large = IdDataset(10), IdDataset(90)
    blend = BlendedDataset([small, large], [0.5, 0.5])
    assert len(blend) == 100
    firsts = [blend[i]["input_ids"][0].item() for i in range(100)]
    from_small = firsts[0::2]  # equal weights alternate, dataset 0 first on ties
    assert from_small == [i % 10 for i in range(50)]
    assert firsts[1::2] == list(range(50))


def test_blended_indexed_datasets(tmp_path):
    from minibridge.training.data import IndexedDatasetWriter

    for name, base in (("a", 100), ("b", 200)):
        with IndexedDatasetWriter(tmp_path / name, np.int32) as w:
            for d in range(40):
                w.add_document(np.full(8, base + d))
    train, valid = build_datasets("indexed", seq_length=8, data_paths=[tmp_path / "a", tmp_path / "b"],
                                  blend_weights=[3, 1], split="90,10,0", sample_layout="legacy")
    sources = [train[i]["input_ids"][0].item() // 100 for i in range(len(train))]
    assert len(train) == 72 and sources.count(1) == 54 and sources.count(2) == 18
    assert len(valid) == 8 and valid[0]["input_ids"][0].item() >= 136  # validation = documents 36..39


def test_mock_is_deterministic_and_packs():
    train, valid = build_datasets("mock", seq_length=32, vocab_size=50, num_mock_samples=40, seed=3,
                                  sample_layout="legacy")
    again, _ = build_datasets("mock", seq_length=32, vocab_size=50, num_mock_samples=40, seed=3,
                              sample_layout="legacy")
    other, _ = build_datasets("mock", seq_length=32, vocab_size=50, num_mock_samples=40, seed=4,
                              sample_layout="legacy")
    assert len(train) == 40 and len(valid) == 1  # 40 * 30/969 rounds to 1
    assert rows(train) == rows(again) and rows(train) != rows(other)
    assert rows(valid)[0] != rows(train)[0]
    for r in rows(train):
        assert max(r["input_ids"]) < 50
        starts = [t for t in range(32) if t == 0 or r["document_ids"][t] != r["document_ids"][t - 1]]
        assert all(r["position_ids"][t] == 0 and r["labels"][t] == -100 for t in starts)
    assert any(max(r["document_ids"]) > 0 for r in rows(train))
    plain = MockDataset(3, 8, 50, seed=0, packing=False)
    assert all(r["document_ids"] == [0] * 8 and r["position_ids"] == list(range(8)) for r in rows(plain))


def test_mock_needs_a_vocabulary_and_samples():
    with pytest.raises(DataError, match="vocab_size"):
        build_datasets("mock", seq_length=8)
    with pytest.raises(DataError, match="empty dataset"):
        build_datasets("mock", seq_length=8, vocab_size=10, num_mock_samples=0, sample_layout="legacy")
