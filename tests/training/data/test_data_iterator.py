"""DataIterator: deterministic order, epochs, dp sharding, and save/restore (also across a dp change)."""

import json

import pytest
import torch
from data_helpers import IdDataset

from minibridge.training.data import Batch, DataError, DataIterator, build_datasets


def ids(batches):
    """Sample ids of a list of micro-batches, in order."""
    return [int(x) for b in batches for x in b.input_ids[:, 0]]


def make(n=20, **kw):
    kw = {"global_batch_size": 8, "micro_batch_size": 2, "dp_rank": 0, "dp_size": 1, **kw}
    return DataIterator(IdDataset(n), **kw)


def test_shapes_and_micro_batch_count():
    it = make(dp_size=2, dp_rank=1)
    batches = it.next_global_batch()
    assert it.num_micro_batches == 2 and len(batches) == 2
    assert all(isinstance(b, Batch) and b.input_ids.shape == (2, 3) for b in batches)
    assert all(getattr(b, f).dtype == torch.long for b in batches
               for f in ("input_ids", "labels", "position_ids", "document_ids"))


def test_order_is_deterministic_and_epochs_reshuffle():
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    first = [ids(a.next_global_batch()) for _ in range(5)]  # 40 samples = 2 epochs of 20
    assert first == [ids(b.next_global_batch()) for _ in range(5)]
    assert first != [ids(c.next_global_batch()) for _ in range(5)]
    flat = sum(first, [])
    assert sorted(flat[:20]) == list(range(20)) and sorted(flat[20:40]) == list(range(20))
    assert flat[:20] != flat[20:40]  # epoch 1 uses seed + 1
    assert ids(make(shuffle=False).next_global_batch()) == list(range(8))


def test_dp_shards_are_contiguous_slices_of_the_global_batch():
    single = make()
    ranks = [make(dp_size=4, micro_batch_size=1, dp_rank=r) for r in range(4)]
    for _ in range(6):
        assert sum((ids(r.next_global_batch()) for r in ranks), []) == ids(single.next_global_batch())


def test_state_restores_the_uninterrupted_sequence():
    run = make(dp_size=2, dp_rank=1, seed=9)
    for _ in range(3):
        run.next_global_batch()
    state = json.loads(json.dumps(run.state_dict()))
    assert state["consumed_global_batches"] == 3 and state["consumed_samples"] == 24
    resumed = make(dp_size=2, dp_rank=1, seed=123)  # the saved seed wins
    resumed.load_state_dict(state)
    for _ in range(4):
        assert ids(resumed.next_global_batch()) == ids(run.next_global_batch())


def test_restore_after_dp_changes_from_2_to_1():
    ranks = [make(dp_size=2, dp_rank=r, seed=4) for r in range(2)]
    for _ in range(2):
        for r in ranks:
            r.next_global_batch()
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict()
    single = make(dp_size=1, micro_batch_size=4, seed=4)
    single.load_state_dict(state)
    for _ in range(5):
        assert ids(single.next_global_batch()) == sum((ids(r.next_global_batch()) for r in ranks), [])


def test_real_batches_resume_identically():
    train, _ = build_datasets("mock", seq_length=16, vocab_size=97, num_mock_samples=30)
    run = DataIterator(train, global_batch_size=4, micro_batch_size=2, dp_rank=0, dp_size=1)
    run.next_global_batch()
    resumed = DataIterator(train, global_batch_size=4, micro_batch_size=2, dp_rank=0, dp_size=1)
    resumed.load_state_dict(run.state_dict())
    for x, y in zip(run.next_global_batch(), resumed.next_global_batch()):
        assert all(torch.equal(getattr(x, f), getattr(y, f)) for f in ("input_ids", "labels", "position_ids"))


def test_num_loss_tokens_counts_shifted_targets():
    labels = torch.tensor([[5, -100, 7, 8], [-100, -100, -100, 9]])
    batch = Batch(labels.clone(), labels, torch.zeros_like(labels), torch.zeros_like(labels))
    assert batch.num_loss_tokens() == 3  # label 5 at column 0 is never a target


def test_bad_arguments():
    with pytest.raises(DataError, match=r"global_batch_size=10 is not divisible by micro_batch_size=2 x dp_size=3"):
        make(global_batch_size=10, micro_batch_size=2, dp_size=3)
    with pytest.raises(DataError, match=r"dp_rank=2 must be an int in \[0, dp_size=2\)"):
        make(dp_size=2, dp_rank=2)
    with pytest.raises(DataError, match="micro_batch_size must be a positive int, got 0"):
        make(micro_batch_size=0)
    with pytest.raises(DataError, match="empty dataset"):
        make(n=0)


def test_bad_state():
    it = make()
    state = it.state_dict()
    with pytest.raises(DataError, match="saved for a dataset of 20 samples, this one has 21"):
        make(n=21).load_state_dict(state)
    with pytest.raises(DataError, match="key 'consumed_samples' missing"):
        it.load_state_dict({k: v for k, v in state.items() if k != "consumed_samples"})
    with pytest.raises(DataError, match="key 'seed' missing or not int"):
        it.load_state_dict({**state, "seed": "x"})
