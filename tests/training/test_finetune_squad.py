"""The seed document's fine-tuning commands on SQuAD, as Megatron Bridge runs them: `torchrun --nproc-per-node=2
-m minibridge.train --pretrained-checkpoint CKPT --recipe gemma3_..._finetune_config --peft_scheme lora
train.global_batch_size=... checkpoint.save=DIR`, with a tiny checkpoint (the debug recipe takes its
architecture) and a local SQuAD-shaped dataset (the rows of tests/data/megatron_bridge_presets, rendered there
by Megatron Bridge's own code). Also: no data and no network stops before any work; mock only when asked."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minibridge import AutoBridge
from minibridge.recipes.gemma import DEBUG_ARCH
from minibridge.train import resolved_config
from minibridge.training.command_line import parse_run_recipe
from minibridge.training.data import HFSource, build_datasets, load_tokenizer, pydoc_corpus, train_tokenizer

datasets = pytest.importorskip("datasets")
FIXTURE = json.loads((Path(__file__).parents[1] / "data/megatron_bridge_presets/presets.json").read_text())
SQUAD = FIXTURE["presets"]["squad"]
SMALL = ["train.micro_batch_size=2", "model.seq_length=128", "train.eval_interval=null", "logger.tensorboard_dir=null",
         "scheduler.lr_warmup_iters=2"]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Gemma 3 HF folder carrying its tokenizer, and a SQuAD-shaped dataset saved with save_to_disk."""
    root = tmp_path_factory.mktemp("squad")
    tokenizer_dir = train_tokenizer(pydoc_corpus(), root / "tokenizer", vocab_size=1024)
    vocab = len(load_tokenizer(str(tokenizer_dir)))
    bridge = AutoBridge.from_config(DEBUG_ARCH.replace(vocab_size=vocab))
    model = bridge.to_model(dtype=torch.float32, progress=False, seed=1)
    ckpt = Path(bridge.save_hf_pretrained(model, root / "gemma", progress=False))
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, ckpt / f.name)
    datasets.Dataset.from_list([case["row"] for case in SQUAD] * 40).save_to_disk(str(root / "squad"))
    return {"ckpt": str(ckpt), "squad": str(root / "squad"), "root": root}


def torchrun(args, env_extra=None, nproc=2, timeout=900):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={port}",
           "-m", "minibridge.train", *args]
    env = {**os.environ, **OFFLINE, **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("scheme, lr", [("lora", "3e-3"), ("none", "1e-3")], ids=["lora", "full"])
def test_seed_command_trains_on_squad_formatted_samples(setup, tmp_path, scheme, lr):
    """The seed document's LoRA command and its full fine-tuning one (--peft_scheme none), scaled down."""
    save = tmp_path / "run"
    args = ["--pretrained-checkpoint", setup["ckpt"], "--recipe", "gemma3_debug_finetune_config", "--peft_scheme",
            scheme, "train.global_batch_size=8", f"checkpoint.save={save}", "--dataset", "squad",
            f"dataset.hf_path={setup['squad']}", "train.train_iters=20", f"optimizer.lr={lr}", *SMALL]
    proc = torchrun(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 20 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert "tokenizing squad" in proc.stderr and "ETA" in proc.stderr

    # the samples the run trained on: the same config and data build, the tokenized rows from its cache
    config = resolved_config(parse_run_recipe(args))[1]
    d = config.dataset
    tokenizer = load_tokenizer(setup["ckpt"])
    train, valid = build_datasets("hf", seq_length=config.model.seq_length, tokenizer=tokenizer, seed=config.train.seed,
                                  packing=d.packing, hf_source=HFSource.from_config(d), cache_dir=save / "data_cache")
    assert (len(train), len(valid)) == (72, 8)  # SQuAD's validation: 10% of train, as Megatron Bridge
    first = train[0]
    ids, labels = first["input_ids"].tolist(), first["labels"].tolist()
    renders = []
    for case in SQUAD:
        prompt = tokenizer(case["prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(case["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        renders.append((prompt, answer))
    prompt, answer = next(r for r in renders if ids[: len(r[0]) + len(r[1])] == r[0] + r[1])
    n = len(prompt) + len(answer)
    assert labels[:n] == [-100] * len(prompt) + answer and set(labels[n:]) == {-100}  # loss on the answer only
    assert tokenizer.decode(answer[:-1]) == SQUAD[renders.index((prompt, answer))]["completion"]


def test_full_finetuning_on_mock_data_says_so_first(setup, tmp_path):
    """One process is enough here (the message is rank 0's, before any work); the torchrun path is above."""
    args = ["--pretrained-checkpoint", setup["ckpt"], "--recipe", "gemma3_debug_finetune_config",
            "--peft_scheme", "none", "train.global_batch_size=4", "train.train_iters=1", f"checkpoint.save={tmp_path}",
            "--dataset", "mock", *SMALL]
    proc = subprocess.run([sys.executable, "-m", "minibridge.train", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **OFFLINE})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith("dataset.kind=mock: training on MOCK data")


def test_finetuning_without_data_or_network_stops_before_any_work(setup, tmp_path):
    """The recipe's SQuAD default cannot be had offline with an empty HF cache: one line, exit 2, nothing built."""
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "minibridge.train", "--pretrained-checkpoint", setup["ckpt"], "--recipe",
           "gemma3_debug_finetune_config", f"checkpoint.save={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "cannot load Hugging Face dataset 'rajpurkar/squad'" in line
    assert "dataset.hf_path=" in line and "dataset.data_paths=" in line and "--dataset" in line
    assert "lora:" not in proc.stdout and not (tmp_path / "run" / "metrics.jsonl").exists()
    dry = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, timeout=300, env=env)
    assert dry.returncode == 0 and "preset: squad" in dry.stdout  # --dry-run never touches the dataset
