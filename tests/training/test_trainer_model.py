"""The trainer makes its model the one way (training/model.py: `build_model`, then the loader of its source
from minibridge.loading) and never through HFBridge: with HFBridge unusable it still builds and trains from
scratch, from an HF folder (with LoRA adapters) and from a checkpoint, and its weights are those of
`AutoBridge.to_model`, the public path."""

import pytest
import torch

from minibridge import AutoBridge
from minibridge.bridge import HFBridge
from minibridge.conversion import load_megatron_model
from minibridge.errors import CheckpointMismatchError
from minibridge.recipes import build_config
from minibridge.recipes.llama import DEBUG_ARCH
from minibridge.training.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = ["train.global_batch_size=4", "train.micro_batch_size=2", "model.seq_length=32", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "scheduler.lr_warmup_iters=1", "dataset.tokenizer=null", "dataset.kind=mock",
        "train.train_iters=2", "model.vocab_size=256"]


def _refuse(*args, **kwargs):
    raise AssertionError("the trainer went through HFBridge to make its model")


def test_the_trainer_builds_and_trains_without_hfbridge(tmp_path, monkeypatch):
    bridge = AutoBridge.from_config(DEBUG_ARCH.replace(vocab_size=256))
    base = bridge.save_hf_pretrained(bridge.to_model(dtype=torch.float32, progress=False, seed=3), tmp_path / "hf",
                                     progress=False)
    public = dict(AutoBridge.from_hf_pretrained(base).to_model(dtype=torch.float32, progress=False).named_parameters())
    fresh = dict(bridge.to_model(dtype=torch.float32, progress=False, seed=1234).named_parameters())
    AutoBridge.import_ckpt(base, tmp_path / "ckpt", progress=False)
    monkeypatch.setattr(HFBridge, "__init__", _refuse)

    runs = {"scratch": ("llama3_debug_pretrain_config", None, None, ["train.seed=1234"], fresh),
            "lora": ("llama3_debug_finetune_config", str(base), "lora", ["peft.dim=4"], public),
            "checkpoint": ("llama3_debug_finetune_config", str(tmp_path / "ckpt"), "none", [], public)}
    for key, (recipe, source, scheme, overrides, expected) in runs.items():
        save = f"checkpoint.save={tmp_path / key}"
        trainer = Trainer(build_config(recipe, source, scheme, BASE + overrides + [save]))
        got = {n: p for n, p in trainer.model.named_parameters() if ".lora_" not in n}
        assert got.keys() == expected.keys(), key
        assert all(torch.equal(p, expected[n]) for n, p in got.items()), key
        assert any(".lora_" in n for n, _ in trainer.model.named_parameters()) == (scheme == "lora")
        assert len(trainer.run().losses) == 2
    monkeypatch.undo()  # the adapters of the LoRA run load onto their base (AutoBridge: the same loaders), no other
    merged = load_megatron_model(AutoBridge.from_hf_pretrained(base), tmp_path / "lora", dtype=torch.float32)
    assert merged[0].embed_tokens.weight.shape == public["embed_tokens.weight"].shape
    with pytest.raises(CheckpointMismatchError, match="needs the weights of their base model"):
        load_megatron_model(AutoBridge.from_config(bridge.config), tmp_path / "lora")
