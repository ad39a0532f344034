"""FSDP2 applied on the meta model (build_model(fsdp=...)): each rank allocates only its dp shards and
reads the HF weights straight into them. The row windows the loaders use (one process), then tp=2 x
FSDP2 dp=2 ranks: every parameter a dp shard holding exactly its rows of the HF tensor (DoRA adapters
as one process initialises them), what was allocated about 1/dp of the TP-local model, and a DoRA run
from a minibridge checkpoint under that layout matching one process's losses."""

import json
import math

import pytest
import torch

from fsdp_workers import sharded_build, train
from spawn import run_distributed

from minibridge import AutoBridge
from minibridge.bridge.safetensors_io import read_tensor
from minibridge.bridge.sharded_io import read_block
from minibridge.parallel import ParallelConfig, ParallelDims
from minibridge.parallel.parallelize import build_model
from minibridge.parallel.sharding import take_block
from minibridge.recipes.llama import DEBUG_ARCH as LLAMA_DEBUG

# vocabulary 251: padded to 252 rows under tp=2, so a dp shard of the last block holds a padding row,
# and 126 rows split 63 / 63 while the 2 x 64 hidden rows and the 251 rows of tp=1 split unevenly over dp=3
ARCH = LLAMA_DEBUG.replace(vocab_size=251, num_layers=2, hidden_size=64, layer_types=None)
TINY = ["model.num_layers=2", "model.hidden_size=64", "model.vocab_size=251", "model.seq_length=32",
        "train.global_batch_size=8", "train.micro_batch_size=2", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "optimizer.clip_grad=0.5", "scheduler.lr_warmup_iters=2",
        "scheduler.lr_decay_iters=20", "checkpoint.save=null", "dataset.kind=mock", "train.train_iters=3",
        "dataset.tokenizer=null", "peft.dim=4", "peft.alpha=8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    bridge = AutoBridge.from_config(ARCH)
    folder = tmp_path_factory.mktemp("fsdp_meta") / "llama"
    return str(bridge.save_hf_pretrained(bridge.to_model(dtype=torch.float32, progress=False, seed=3), folder,
                                         progress=False))


@pytest.mark.parametrize("tp", [1, 2])
def test_row_windows_read_and_cut_the_rows_of_each_block(base, tp):
    bridge = AutoBridge.from_hf_pretrained(base)
    for rank in range(tp):
        dims = ParallelDims(ParallelConfig(tp=tp), tp, rank, 1)
        chunks = build_model(bridge.config, dims, meta=True)
        specs = chunks.specs
        for name, param in chunks.named_parameters():
            info = bridge.folder.tensors[bridge.mapping.to_hf(name)]
            full, spec = read_tensor(info), specs.get(name)
            block = take_block(full, spec)
            assert tuple(block.shape) == tuple(param.shape), name
            rows = param.shape[0]
            for dp in (2, 3):
                step = math.ceil(rows / dp)
                for first in range(0, rows, step):
                    window = (first, min(first + step, rows))
                    out = torch.full((window[1] - first, *param.shape[1:]), float("nan"))
                    read_block(info, out, spec, window)
                    assert torch.equal(out, block[first:window[1]]), (name, tp, rank, window)
                    assert torch.equal(take_block(full, spec, window), out), (name, tp, rank, window)


def close(got: list[list[float]], want: list[list[float]], what) -> None:
    assert len(got) == len(want), (what, got, want)
    for step, (g, w) in enumerate(zip(got, want)):
        assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(g, w)), (what, step, g, w)


def test_fsdp_on_meta_allocates_and_loads_only_dp_shards(base, tmp_path):
    checkpoint = AutoBridge.import_ckpt(base, tmp_path / "imported", progress=False)
    reference = train("llama3_debug_finetune_config", base, "dora", TINY)
    run = ("llama3_debug_finetune_config", str(checkpoint), "dora",
           TINY + ["dist.use_torch_fsdp2=true", "model.tensor_model_parallel_size=2"])
    out = tmp_path / "losses.json"
    run_distributed(sharded_build, 4, base, str(checkpoint), run, str(out))
    (losses,) = json.loads(out.read_text())
    close(losses, reference, "dora from a minibridge checkpoint under tp=2 x fsdp dp=2")
