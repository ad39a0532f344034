"""Runs longer than their data: the trainer builds Megatron-style samples for train_iters x
global_batch_size (more epochs, drawn as Megatron draws them), and a resumed run may ask for more."""

import numpy as np

from minibridge.recipes import build_config
from minibridge.training.data import IndexedDatasetWriter
from minibridge.training.data.megatron_gpt import IndexedSequences, MegatronGPTDataset
from minibridge.training.data.indexed import IndexedDataset
from minibridge.training.loop import Trainer

SEQ, GBS = 16, 4


def small_corpus(tmp_path) -> str:
    """12 sequences, 230 tokens: 14 windows of 16 + 1 tokens per epoch, fewer than a 10-step run reads."""
    prefix = str(tmp_path / "corpus")
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for length in rng.integers(5, 35, size=12):
            writer.add_document(rng.integers(1, 200, size=int(length)))
    return prefix


def overrides(prefix, save, iters):
    return ["dataset.kind=indexed", f"dataset.data_paths=[{prefix}]", "dataset.split=100,0,0",
            f"model.seq_length={SEQ}", f"train.global_batch_size={GBS}", "train.micro_batch_size=2",
            f"train.train_iters={iters}", "train.eval_interval=null", "model.vocab_size=256",
            "logger.tensorboard_dir=null", f"checkpoint.save={save}", "checkpoint.save_interval=100"]


def test_the_trainer_builds_megatrons_epochs_and_resumes_a_longer_run(tmp_path, capsys):
    prefix = small_corpus(tmp_path)
    one_epoch = MegatronGPTDataset(IndexedSequences(IndexedDataset(prefix)), np.arange(12), SEQ, seed=1234,
                                   packing=True, pad_id=0, name="corpus")
    assert len(one_epoch) < 10 * GBS
    trainer = Trainer(build_config("llama3_debug_pretrain_config", overrides=overrides(prefix, tmp_path / "a", 10)))
    try:
        wanted = MegatronGPTDataset(IndexedSequences(IndexedDataset(prefix)), np.arange(12), SEQ, seed=1234,
                                    packing=True, pad_id=0, name="corpus", num_samples=10 * GBS)
        assert len(trainer.train_data) == len(wanted) >= 10 * GBS > len(one_epoch)
        assert (trainer.train_data.shuffle_index == wanted.shuffle_index).all()
    finally:
        trainer.close()

    first = Trainer(build_config("llama3_debug_pretrain_config", overrides=overrides(prefix, tmp_path / "b", 3))).run()
    assert len(first.losses) == 3
    longer = Trainer(build_config("llama3_debug_pretrain_config", overrides=overrides(prefix, tmp_path / "b", 10)))
    assert "the training data was rebuilt for train.train_iters x train.global_batch_size = 40" in capsys.readouterr().out
    assert longer.step == 3 and longer.iterator.consumed_samples == 3 * GBS
    assert len(longer.run().losses) == 7
