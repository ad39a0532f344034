"""Samples and mock data as Megatron Core's GPTDataset / MockGPTLowLevelDataset, against fixtures that
megatron-core 0.19.2 recorded (tests/data/megatron_gpt_dataset/make_fixtures.py), token for token."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minibridge.training.data import DataError, DataIterator, build_datasets, collate
from minibridge.training.data.megatron_gpt import (MOCK_SEQUENCES, MegatronGPTDataset, MockDocuments,
                                                   build_sample_index, megatron_split_ranges)

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "megatron_gpt_dataset"
META = json.loads((FIXTURES / "settings.json").read_text())
INDEXED = [name for name, s in META["settings"].items() if not s["mock"]]


def build(setting: dict, **kwargs):
    sizes = setting["sizes"] or [None, None, None]
    return build_datasets("mock" if setting["mock"] else "indexed", seq_length=setting["seq_length"],
                          data_paths=None if setting["mock"] else [FIXTURES / "corpus"], split=setting["split"],
                          seed=setting["seed"], packing=False, vocab_size=1000, num_train_samples=sizes[0],
                          num_valid_samples=sizes[1] or None, **kwargs)


def windows(ds, count: int) -> np.ndarray:
    """Each sample's seq_length + 1 tokens: input_ids then final_label (Megatron: tokens, then labels[-1])."""
    rows = [np.append(ds[i]["input_ids"].numpy(), int(ds[i]["final_label"])) for i in range(count)]
    return np.stack(rows)


def test_fixture_corpus_is_what_our_writer_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    make_fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_fixtures)
    make_fixtures.write_corpus(tmp_path / "corpus")
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"corpus{ext}").read_bytes() == (FIXTURES / f"corpus{ext}").read_bytes()
    assert META["megatron_core"] == "0.19.2"


@pytest.mark.parametrize("name", INDEXED)
def test_indexed_samples_equal_megatron_gpt_dataset(name):
    setting, recorded = META["settings"][name], np.load(FIXTURES / f"{name}.npz")
    train, valid = build(setting)
    for split, ds in (("train", train), ("valid", valid)):
        if split not in setting["lengths"]:
            assert ds is None
            continue
        assert len(ds) == setting["lengths"][split]
        np.testing.assert_array_equal(ds.document_index, recorded[f"{split}_document_index"])
        np.testing.assert_array_equal(ds.sample_index, recorded[f"{split}_sample_index"])
        np.testing.assert_array_equal(ds.shuffle_index, recorded[f"{split}_shuffle_index"])
        np.testing.assert_array_equal(windows(ds, len(ds)), recorded[f"{split}_tokens"])


def test_fixtures_cover_both_final_epoch_branches():
    """Multi-epoch fixtures: one shuffles its final epoch apart (each epoch but the last holds every
    sequence epochs - 1 times in the document index's head), one shuffles all epochs together."""
    apart = []
    for name in ("indexed_L32_seed5_3epochs", "indexed_L8_seed3_2epochs"):
        train, _ = build(META["settings"][name])
        sequences = np.unique(train.document_index)
        epochs = len(train.document_index) // len(sequences)
        head = train.document_index[: len(sequences) * (epochs - 1)]
        assert epochs > 1
        apart.append(bool(np.all(np.bincount(head, minlength=sequences.max() + 1)[sequences] == epochs - 1)))
    assert apart == [True, False]


def test_mock_samples_equal_megatron_mock_gpt_dataset():
    setting = META["settings"]["mock_L64_seed1234"]
    recorded = np.load(FIXTURES / "mock_L64_seed1234.npz")
    train, valid = build(setting)
    assert (len(train), len(valid)) == (setting["lengths"]["train"], setting["lengths"]["valid"])
    for split, ds in (("train", train), ("valid", valid)):
        expected = recorded[f"{split}_tokens"]
        np.testing.assert_array_equal(windows(ds, len(expected)), expected)


def test_mock_documents_follow_megatrons_formula():
    docs = MockDocuments(vocab_size=50, eod=49)
    lengths = np.random.default_rng(0).integers(1, 4096, size=100_000, dtype=np.int32)
    np.testing.assert_array_equal(docs.document_lengths(), lengths)
    assert len(docs) == MOCK_SEQUENCES
    for i in (0, 1, 7, 99_999):
        n = int(lengths[i])
        np.testing.assert_array_equal(docs.tokens(i), np.append((np.arange(n - 1) + 1) % 50, 49))
        np.testing.assert_array_equal(docs.tokens(i, 3, 9), np.append((np.arange(n - 1) + 1) % 50, 49)[3:9])
    train, valid = build_datasets("mock", seq_length=16, vocab_size=50)
    assert train[0]["input_ids"].max() < 50 and len(train) > 100_000  # one epoch of a third of the sequences
    with pytest.raises(DataError, match="vocab_size must be positive"):
        build_datasets("mock", seq_length=16)


def test_windows_overlap_by_one_token_and_drop_the_partial_tail():
    lengths = np.array([5, 0, 4, 6], dtype=np.int32)  # 15 tokens; an empty sequence is skipped
    index = build_sample_index(lengths, np.arange(4, dtype=np.int32), seq_length=4)
    assert index.tolist() == [[0, 0], [0, 4], [2, 3], [3, 3]]  # (15 - 1) // 4 = 3 samples: 0, 4, 8 (end 12)
    source = type("S", (), {"document_lengths": lambda self: lengths,
                            "tokens": lambda self, d, a=0, b=None: (np.arange(15)[[0, 0, 5, 9][d]:][:lengths[d]])[a:b],
                            "__len__": lambda self: 4})()
    ds = MegatronGPTDataset(source, np.arange(4), 4, seed=0, packing=False, pad_id=0, name="toy")
    stream = np.concatenate([source.tokens(int(d)) for d in ds.document_index])  # documents in shuffled order
    expected = [stream[k * 4 : k * 4 + 5].tolist() for k in ds.shuffle_index]  # the last 2 tokens: dropped
    assert len(ds) == 3 and windows(ds, 3).tolist() == expected
    sample = ds[0]
    assert sample["labels"].tolist() == sample["input_ids"].tolist() and sample["position_ids"].tolist() == [0, 1, 2, 3]


def test_the_last_token_of_a_window_is_trained():
    ds, _ = build_datasets("indexed", seq_length=16, data_paths=[FIXTURES / "corpus"], split="1,0,0", seed=1,
                           packing=False)
    batch = collate([ds[0], ds[1]])
    assert batch.final_label.tolist() == [int(ds[0]["final_label"]), int(ds[1]["final_label"])]
    assert batch.num_loss_tokens() == 2 * 16  # every input has a target, Megatron's w[1:]
    assert batch.to("cpu").final_label.tolist() == batch.final_label.tolist()
    legacy, _ = build_datasets("indexed", seq_length=16, data_paths=[FIXTURES / "corpus"], split="1,0,0", seed=1,
                               sample_layout="legacy")
    old = collate([legacy[0]])
    assert old.final_label is None and old.num_loss_tokens() == 15 and old.to("cpu").final_label is None


def test_packing_keeps_sequences_apart_in_the_megatron_layout():
    ds, _ = build_datasets("indexed", seq_length=64, data_paths=[FIXTURES / "corpus"], split="1,0,0", seed=2,
                           packing=True)
    plain, _ = build_datasets("indexed", seq_length=64, data_paths=[FIXTURES / "corpus"], split="1,0,0", seed=2,
                              packing=False)
    found = False
    for i in range(len(ds)):
        s = ds[i]
        assert s["input_ids"].tolist() == plain[i]["input_ids"].tolist()
        starts = torch.nonzero(s["document_ids"][1:] != s["document_ids"][:-1]).flatten() + 1
        for t in starts.tolist():
            found = True
            assert s["position_ids"][t] == 0 and s["labels"][t] == -100
    assert found


def test_the_iterator_keeps_megatrons_sample_order():
    ds, _ = build_datasets("indexed", seq_length=8, data_paths=[FIXTURES / "corpus"], split="1,0,0", seed=3)
    it = DataIterator(ds, global_batch_size=4, micro_batch_size=2, dp_rank=0, dp_size=1, seed=3)
    first = torch.cat([b.input_ids for b in it.next_global_batch()])
    assert first.tolist() == [ds[i]["input_ids"].tolist() for i in range(4)]
    assert it.state_dict()["shuffle"] is False
    assert DataIterator(ds, global_batch_size=4, micro_batch_size=2, dp_rank=0, dp_size=1, shuffle=True).shuffle


def test_megatron_split_and_bad_layout():
    # book-ends rounded one by one (Megatron's builder), not minibridge's legacy cumulative rounding
    assert megatron_split_ranges("969,30,1", 10) == [(0, 10), (10, 10), (10, 10)]
    assert megatron_split_ranges("1,1,1", 100_000) == [(0, 33333), (33333, 66667), (66667, 100000)]
    assert megatron_split_ranges("80,20", 5) == [(0, 4), (4, 5), None]
    with pytest.raises(DataError, match=r"sample_layout='disjoint': expected one of \['megatron', 'legacy'\]"):
        build_datasets("mock", seq_length=8, vocab_size=10, sample_layout="disjoint")
    with pytest.raises(DataError, match=r"corpus \(train\): \d+ tokens .* a sample needs seq_length \+ 1"):
        build_datasets("indexed", seq_length=100_000, data_paths=[FIXTURES / "corpus"], split="1,0,0")


def test_a_debug_recipe_learns_megatron_mock_data(tmp_path):
    """Mock data is learnable now ((1, 2, 3, ...) % vocab then EOD): the loss of a short run falls
    (on the legacy uniform random tokens it cannot: 6.949 -> 6.961 over 10 steps)."""
    from minibridge.recipes import build_config
    from minibridge.training.loop import Trainer

    config = build_config("llama3_debug_pretrain_config", overrides=[
        "train.train_iters=16", "train.global_batch_size=4", "train.micro_batch_size=4", "model.seq_length=64",
        "model.vocab_size=256", "train.eval_interval=null", "logger.tensorboard_dir=null", "optimizer.lr=3e-3",
        "scheduler.lr_warmup_iters=2", f"checkpoint.save={tmp_path}", "checkpoint.save_interval=1000"])
    assert config.dataset.kind == "mock" and config.dataset.sample_layout == "megatron"
    losses = Trainer(config).run().losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.4, losses
