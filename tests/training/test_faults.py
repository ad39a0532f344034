"""Nothing silent (issue 29, rows 2, 4 and 10): a checkpoint.load that is not a checkpoint, a run whose batches
hold no loss token, and a tokenizer.json of the wrong structure each stop with one line before any step."""

from __future__ import annotations

import json
import shutil

import pytest

from minibridge.errors import ConfigError, DataError
from minibridge.recipes import build_config
from minibridge.training.loop import Trainer

BASE = ["train.global_batch_size=4", "train.micro_batch_size=2", "model.seq_length=32", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "scheduler.lr_warmup_iters=1", "model.vocab_size=256", "train.train_iters=3"]


def trainer(overrides: list[str]) -> Trainer:
    return Trainer(build_config("llama3_debug_pretrain_config", overrides=BASE + overrides))


def test_a_checkpoint_load_that_is_not_a_checkpoint_stops_before_any_work(tmp_path, hf_checkpoint):
    save = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"checkpoint.load=.*/TYPO: .*no such folder.*leave checkpoint.load unset"):
        trainer([f"checkpoint.save={save}", f"checkpoint.load={tmp_path / 'TYPO'}"])
    hf = hf_checkpoint("Llama-3.2-1B")
    with pytest.raises(ConfigError, match=f"is a Hugging Face model folder.*--pretrained-checkpoint {hf}"):
        trainer([f"checkpoint.save={save}", f"checkpoint.load={hf}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a minibridge checkpoint"):
        trainer([f"checkpoint.save={save}", f"checkpoint.load={tmp_path / 'empty'}"])
    assert not (save / "metrics.jsonl").exists()
    # a first run into an empty checkpoint.save (load = save, as recipes set it) starts fresh, then resumes
    first = trainer([f"checkpoint.save={save}", f"checkpoint.load={save}"]).run()
    assert len(first.losses) == 3
    # an explicit checkpoint.load of that run, another save folder: resumed from it (here: nothing left to do)
    other = trainer([f"checkpoint.save={tmp_path / 'other'}", f"checkpoint.load={save}"])
    assert other.step == 3
    other.close()


def test_a_run_whose_answers_are_all_cut_off_stops_before_training(tmp_path, pydoc_data):
    """Every answer starts past seq_length: the data build stops, naming the file and seq_length."""
    rows = [{"prompt": "word " * 60, "completion": "answer"} for _ in range(8)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"long.jsonl \(train\): every conversation's prompt is longer than "
                                        r"seq_length=32"), pytest.warns(UserWarning):
        trainer(["dataset.kind=sft", f"dataset.data_paths=[{data}]", f"dataset.tokenizer={pydoc_data['tokenizer']}",
                 f"model.vocab_size={pydoc_data['vocab_size']}", "dataset.packing=false",
                 f"checkpoint.save={tmp_path / 'run'}"])
    assert not (tmp_path / "run" / "latest_checkpointed_iteration.txt").exists()


def test_a_global_batch_without_loss_tokens_stops_at_its_step(tmp_path):
    """Whatever masked them all (a loss mask, a data bug), such a step would train nothing and log loss 0."""
    run = trainer([f"checkpoint.save={tmp_path / 'run'}"])
    next_global_batch = run.iterator.next_global_batch

    def masked():
        batches = next_global_batch()
        for batch in batches:
            batch.labels[:] = -100
            if batch.final_label is not None:
                batch.final_label[:] = -100
        return batches

    run.iterator.next_global_batch = masked
    with pytest.raises(DataError, match=r"step 1: the global batch of 4 samples from mock data holds no loss token"):
        run.run()
    assert not (tmp_path / "run" / "latest_checkpointed_iteration.txt").exists()


def test_a_tokenizer_json_of_the_wrong_structure_is_one_line(tmp_path, pydoc_data):
    from minibridge.training.data import load_tokenizer

    folder = tmp_path / "tokenizer"
    shutil.copytree(pydoc_data["tokenizer"], folder)
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    with pytest.raises(DataError, match=f"{folder}: no usable tokenizer .*expected an HF tokenizer folder"):
        load_tokenizer(str(folder))


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs: room for the run's logs, not for a checkpoint of the debug model (~10 MB)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"a full disk is simulated with a tmpfs mount, which needs root here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary_file(small_disk):
    import subprocess
    import sys

    save = small_disk / "run"
    cmd = [sys.executable, "-m", "minibridge.train", "--recipe", "llama3_debug_pretrain_config", *BASE,
           f"checkpoint.save={save}", "checkpoint.save_interval=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "No space left on device" in last and "saving checkpoint iter_0000002" in last and str(save) in last, last
    leftovers = [p.name for p in save.rglob("*") if ".tmp" in p.name]
    assert leftovers == [] and not (save / "latest_checkpointed_iteration.txt").exists(), leftovers
    assert (save / "metrics.jsonl").is_file()  # the logs of the steps that ran are kept
