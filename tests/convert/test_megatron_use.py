"""Megatron checkpoints wherever minibridge takes one: fine-tuning from Megatron Bridge's own checkpoint starts
at the loss of the same run from the HF folder (architecture from its run_config.yaml); evaluation,
compare and the loader read it under tensor parallelism too; a checkpoint of another model is refused."""

import json
from pathlib import Path

import pytest
import torch

from minibridge import AutoBridge
from minibridge.conversion import load_megatron_model
from minibridge.errors import CheckpointMismatchError
from minibridge.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(__file__).parents[1] / "data" / "megatron"


def _losses(pretrained, save) -> list[float]:
    assert train_main(["--recipe", "llama3_debug_finetune_config", "--pretrained-checkpoint", str(pretrained),
                       "--peft_scheme", "none", "--dataset", "mock", "dataset.tokenizer=null", "train.train_iters=2", "train.global_batch_size=2",
                       "train.micro_batch_size=1", "scheduler.lr_warmup_iters=1", "model.seq_length=32", f"checkpoint.save={save}",
                       "checkpoint.save_interval=100", "train.eval_interval=100"]) == 0
    rows = [json.loads(line) for line in (Path(save) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_finetuning_starts_from_megatron_bridges_checkpoint(tmp_path):
    from_hf = _losses(DATA / "llama" / "hf", tmp_path / "hf")
    from_megatron = _losses(DATA / "llama" / "mcore", tmp_path / "mcore")
    assert len(from_hf) == 2 and from_megatron == from_hf  # the same weights, the same data: the same run


def test_loading_megatron_checkpoints_matches_the_hf_folder(tmp_path):
    for family in ("llama", "gemma3"):
        bridge = AutoBridge.from_hf_pretrained(DATA / family / "hf")
        ours = dict(bridge.to_model_chunks(None, torch.float32)[0].named_parameters())
        loaded = load_megatron_model(bridge, DATA / family / "mcore", dtype=torch.float32)[0]
        for name, param in loaded.named_parameters():
            assert torch.equal(param, ours[name]), (family, name)
    other = AutoBridge.from_hf_pretrained(DATA / "gemma3" / "hf")
    with pytest.raises(CheckpointMismatchError, match="another model"):
        load_megatron_model(other, DATA / "llama" / "mcore")
