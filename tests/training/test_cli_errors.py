"""Every command line turns a bad input into one line naming it, and exit code 2: no tracebacks for a
missing data path, a missing run.json, a truncated shard, a tokenizer larger than the model, another
model on resume, a context past max_position_embeddings, a full disk during an export."""

import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from minibridge.convert import main as convert_main
from minibridge.train import main as train_main
from minibridge.training.data.preprocess import main as preprocess_main

RECIPE = ["--recipe", "llama3_debug_pretrain_config"]
BASE = ["train.global_batch_size=4", "train.micro_batch_size=2", "model.seq_length=32", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "scheduler.lr_warmup_iters=0", "model.vocab_size=256", "model.num_layers=2"]


def one_line_error(capsys, *expected):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(e in err for e in expected), err
    return err


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A 2-step run saved at step 2 (copied per test before it is damaged)."""
    folder = tmp_path_factory.mktemp("saved")
    assert train_main(RECIPE + BASE + ["train.train_iters=2", f"checkpoint.save={folder}"]) == 0
    return folder


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_data_path(tmp_path, capsys):
    missing = tmp_path / "no" / "such_prefix"
    assert train_main(RECIPE + BASE + ["train.train_iters=1", "dataset.kind=indexed",
                                       f"dataset.data_paths=[{missing}]", f"checkpoint.save={tmp_path / 'run'}"]) == 2
    one_line_error(capsys, str(missing))


def test_missing_run_json_and_truncated_shard_on_resume(saved_run, tmp_path, capsys):
    resume = RECIPE + BASE + ["train.train_iters=3"]
    save = _copy(saved_run, tmp_path / "a")
    (save / "iter_0000002" / "run.json").unlink()
    assert train_main(resume + [f"checkpoint.save={save}"]) == 2
    one_line_error(capsys, str(save / "iter_0000002" / "run.json"), "missing")
    save = _copy(saved_run, tmp_path / "b")
    shard = save / "iter_0000002" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert train_main(resume + [f"checkpoint.save={save}"]) == 2
    one_line_error(capsys, str(shard), "truncated")


def test_size_mismatch_on_resume_names_the_tensor(saved_run, tmp_path, capsys):
    save = _copy(saved_run, tmp_path / "c")
    wider = RECIPE + BASE + ["train.train_iters=3", "model.hidden_size=64", "model.intermediate_size=128"]
    assert train_main(wider + [f"checkpoint.save={save}"]) == 2
    one_line_error(capsys, "model.config.hidden_size: 128 in the checkpoint, 64 in this run")
    run_json = save / "iter_0000002" / "run.json"  # a run.json without its config: the shapes tell
    info = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({k: v for k, v in info.items() if k != "config"}))
    assert train_main(wider + [f"checkpoint.save={save}"]) == 2
    one_line_error(capsys, "model.embed_tokens.weight has shape [256, 128] in the checkpoint but [256, 64]")


def test_tokenizer_larger_than_the_model(pydoc_data, tmp_path, capsys):
    assert pydoc_data["vocab_size"] > 256
    assert train_main(RECIPE + BASE + ["train.train_iters=1", "dataset.kind=jsonl",
                                       f"dataset.data_paths=[{pydoc_data['jsonl']}]",
                                       f"dataset.tokenizer={pydoc_data['tokenizer']}",
                                       f"checkpoint.save={tmp_path / 'run'}"]) == 2
    one_line_error(capsys, pydoc_data["jsonl"], "outside the model's vocabulary of 256", pydoc_data["tokenizer"])


def test_seq_length_past_the_checkpoint_positions(hf_checkpoint, tmp_path, capsys):
    short = hf_checkpoint("Llama-3.2-1B", max_position_embeddings=32)
    capsys.readouterr()
    assert train_main(["--recipe", "llama3_debug_finetune_config", "--pretrained-checkpoint", str(short),
                       "--peft_scheme", "none", "model.seq_length=64", "dataset.tokenizer=null",
                       f"checkpoint.save={tmp_path / 'run'}"]) == 2
    one_line_error(capsys, "model.seq_length=64", "max_position_embeddings=32", "RoPE scaling")


def test_preprocess_missing_input(tmp_path, pydoc_data, capsys):
    missing = tmp_path / "missing.jsonl"
    assert preprocess_main(["--input", str(missing), "--output-prefix", str(tmp_path / "out"),
                            "--tokenizer", pydoc_data["tokenizer"]]) == 2
    one_line_error(capsys, str(missing))


def _full_disk(limit_bytes):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return limit


def test_export_on_a_full_disk_names_the_file_and_leaves_nothing(hf_checkpoint, tmp_path, capsys):
    src = hf_checkpoint("Llama-3.2-1B")
    mb, out = tmp_path / "mb", tmp_path / "out"
    assert convert_main(["import", "--hf-model", str(src), "--megatron-path", str(mb), "--no-progress"]) == 0
    proc = subprocess.run([sys.executable, "-m", "minibridge.convert", "export", "--hf-model", str(src),
                           "--megatron-path", str(mb), "--hf-path", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300, preexec_fn=_full_disk(100_000))
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err and "model.safetensors" in err and "File too large" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["mb"]  # no output, no temporary folder left
    # an existing output names the command-line flag
    out.mkdir()
    (out / "x").write_text("x")
    capsys.readouterr()
    assert convert_main(["export", "--hf-model", str(src), "--megatron-path", str(mb), "--hf-path", str(out),
                         "--no-progress"]) == 2
    one_line_error(capsys, str(out), "--overwrite")


def test_tracebacks_on_request_and_for_bugs(tmp_path):
    args = [sys.executable, "-m", "minibridge.train", *RECIPE, "train.train_iters=0"]
    quiet = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and "train.train_iters=0" in quiet.stderr
    loud = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MINIBRIDGE_TRACEBACK": "1"})
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr
