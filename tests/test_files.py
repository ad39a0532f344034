"""Outputs are never half-written and killed writers' leftovers are cleaned: temporary names carry the
writer's host and pid, and only the temporaries of dead processes are removed."""

import os
import subprocess
import sys

import pytest
import torch

from minibridge import AutoBridge
from minibridge.files import atomic_folder, clean_stale_temporaries, temporary_sibling, write_atomic


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    final = tmp_path / "out"
    mine = temporary_sibling(final)
    assert mine.name.endswith(f"-{os.getpid()}") and mine.parent == tmp_path
    host = mine.name.split(".tmp-")[1].rsplit("-", 1)[0]
    dead, legacy, alive = (tmp_path / f".out.tmp-{host}-{dead_pid()}", tmp_path / f".out.tmp-{dead_pid()}",
                           tmp_path / f".out.tmp-{host}-{os.getppid()}")
    other_host, old = tmp_path / f".out.tmp-elsewhere-{dead_pid()}", tmp_path / f".out.old-{host}-{dead_pid()}"
    unrelated = tmp_path / f".output.tmp-{host}-{dead_pid()}"
    for folder in (dead, legacy, alive, other_host, old, unrelated):
        folder.mkdir()
    assert sorted(clean_stale_temporaries(final)) == sorted([dead, legacy, old])
    assert all(p.exists() for p in (alive, other_host, unrelated))


def test_an_export_cleans_the_leftovers_of_a_killed_export(tmp_path):
    from minibridge.recipes.llama import DEBUG_ARCH

    bridge = AutoBridge.from_config(DEBUG_ARCH.replace(vocab_size=256))
    model = bridge.to_model(dtype=torch.float32, progress=False)
    leftover = tmp_path / f".hf.tmp-{dead_pid()}"  # what a killed export of older versions left
    (leftover / "model.safetensors").parent.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    bridge.save_hf_pretrained(model, tmp_path / "hf", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_atomic_outputs_vanish_on_failure_and_name_the_overwrite_flag(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "x") as tmp:
            (tmp / "half").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_folder(tmp_path / "x"):
            pass
    write_atomic(tmp_path / "a.txt", "one")
    assert (tmp_path / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "x"]
