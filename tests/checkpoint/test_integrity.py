"""Checkpoint integrity (issue 29, row 8): a crc32 per stored item, written at save time and verified as items
are read; flipped bytes stop a resume naming the tensor and the file, and the NaN stop names the newest
checkpoint whose bytes verify."""

from __future__ import annotations

import json

import pytest
import torch

from minibridge.checkpoint import SafeFileSystemReader, last_intact_checkpoint
from minibridge.checkpoint.integrity import CHECKSUMS_FILE
from minibridge.errors import CorruptCheckpointError
from minibridge.recipes import build_config
from minibridge.training.loop import Trainer

BASE = ["train.global_batch_size=4", "train.micro_batch_size=2", "model.seq_length=32", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "scheduler.lr_warmup_iters=1", "model.vocab_size=256",
        "checkpoint.save_interval=2"]


def run(save, iters: int):
    return Trainer(build_config("llama3_debug_pretrain_config", overrides=BASE + [
        f"checkpoint.save={save}", f"train.train_iters={iters}"])).run()


def flip(folder, name_part: str, value: bytes = b"\xff" * 8) -> str:
    """Overwrite 8 bytes in the middle of the stored item of the first tensor whose name holds `name_part`."""
    metadata = SafeFileSystemReader(str(folder)).read_metadata()
    index, info = next((i, s) for i, s in metadata.storage_data.items() if name_part in i.fqn)
    with open(folder / info.relative_path, "r+b") as f:
        f.seek(info.offset + info.length - 64)  # inside the tensor's bytes, before the zip's directory
        f.write(value)
    return index.fqn


def test_every_saved_item_has_a_checksum(tmp_path, one_thread):
    run(tmp_path, 2)
    folder = tmp_path / "iter_0000002"
    stored = json.loads((folder / CHECKSUMS_FILE).read_text())
    metadata = SafeFileSystemReader(str(folder)).read_metadata()
    assert stored["algorithm"] == "zlib.crc32"
    assert set(stored["items"]) == {f"{s.relative_path}@{s.offset}" for s in metadata.storage_data.values()}


def test_flipped_bytes_stop_the_resume_naming_tensor_and_file(tmp_path, one_thread):
    run(tmp_path, 2)
    name = flip(tmp_path / "iter_0000002", "model.layers.1.mlp")
    with pytest.raises(CorruptCheckpointError, match=rf"iter_0000002/__0_0.distcp: the bytes of '{name}' .* do not "
                                                     r"match their checksum"):
        run(tmp_path, 4)


def test_the_nan_stop_names_the_newest_checkpoint_that_verifies(tmp_path, one_thread):
    """Steps 1-4 save iter_2 and iter_4; then iter_4's bytes rot on disk (NaNs written into a tensor) and step 5
    diverges: the stop names iter_2, and iter_4 is refused by the next resume."""
    from minibridge.training.progress import NonFiniteLossError

    nan = torch.full((2,), float("nan")).numpy().tobytes()
    trainer = Trainer(build_config("llama3_debug_pretrain_config", overrides=BASE + [
        f"checkpoint.save={tmp_path}", "train.train_iters=6"]))
    loss_of = trainer.forward.loss

    def diverging(micro_batch, reduction):
        if trainer.step < 4:
            return loss_of(micro_batch, reduction)
        flip(tmp_path / "iter_0000004", "model.embed", value=nan)
        return loss_of(micro_batch, reduction) * float("nan")

    trainer.forward.loss = diverging
    with pytest.raises(NonFiniteLossError, match="iter_0000002"):
        trainer.run()
    assert last_intact_checkpoint(tmp_path) == tmp_path / "iter_0000002"
    with pytest.raises(CorruptCheckpointError, match="iter_0000004.*'model.embed"):
        run(tmp_path, 6)
