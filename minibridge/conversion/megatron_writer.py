"""HF folder -> Megatron-Core `torch_dist` checkpoint (`convert import --format megatron`), the inverse of
checkpoint/megatron_weights.py, laid out as Megatron Bridge 0.6 / Megatron-Core 0.19 write it (tests/data/megatron):

    <out>/latest_checkpointed_iteration.txt, latest_train_state.pt
    <out>/iter_0000000/.metadata, __0_0.distcp      DCP, written by torch.distributed.checkpoint
    <out>/iter_0000000/metadata.json                {"sharded_backend": "torch_dist", "sharded_backend_version": 1}
    <out>/iter_0000000/run_config.yaml              model: the provider's fields (bridge/megatron_config.py)
    <out>/iter_0000000/train_state.pt, tokenizer/   step 0; the HF folder's tokenizer files

Keys and placement come from checkpoint/megatron_names.py: layer tensors stacked under one key with a leading
layer axis, one chunk per layer (linear_fc1: two, gate and up, as Megatron-Core's factory stores it);
per layer a pickled `[None]` for each linear's `_extra_state` (no FP8 state) and one `common_state`
item ({checkpoint_version 3.0, iteration, content_metadata}), which its loader asks for. Each chunk is
read from the safetensors when DCP writes it, so memory is bounded by one layer's chunk (q, k and v
of a layer for linear_qkv). The vocabulary may be padded with zero rows to a multiple of
`make_vocab_size_divisible_by` (should_pad_vocab, as Megatron-Core pads it for tensor parallelism).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from tqdm.auto import tqdm

from ..bridge import HFBridge
from ..bridge.hf_folder import tokenizer_files
from ..loading.hf import check_hf_folder, warn_if_not_finite
from ..bridge.safetensors_io import read_tensor
from ..checkpoint import LATEST, BlockSavePlanner, LazyBlock, iteration_dir
from ..checkpoint.blocks import LazyChunks
from ..checkpoint.names import RUN_CONFIG_FILE
from ..checkpoint.megatron import BACKEND, MARKER
from ..errors import ConfigError
from ..files import atomic_folder, write_atomic
from ..models import whole_model_shapes
from ..parallel.parallelize import build_model
from ..bridge.megatron_config import run_config_model
from ..checkpoint.megatron_names import EXTRA_STATE, LAYER_PREFIX, TABLES, fuse_qkv

ITERATION = 0
COMMON_STATE = "common_state/shard_0_1"  # Megatron-Core's ShardedObject("common_state", (1,), (0,)) key
# what Megatron-Core 0.19 keeps there for a model-only save (Megatron Bridge's save_megatron_model)
COMMON = {"checkpoint_version": 3.0, "iteration": ITERATION,
          "content_metadata": {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}}
# Megatron Bridge's TrainState at step 0 (train_state.pt; latest_train_state.pt names the iteration)
TRAIN_STATE = {"step": 0, "consumed_train_samples": 0, "skipped_train_samples": 0, "consumed_valid_samples": 0,
               "floating_point_operations_so_far": 0.0, "do_train": False, "do_valid": False, "do_test": False}


def padded_vocab(vocab: int, divisible_by: int | None) -> int:
    """Megatron's calculate_padded_vocab_size at tp=1: up to a multiple of divisible_by."""
    if not divisible_by:
        return vocab
    if divisible_by < 1:
        raise ConfigError(f"make_vocab_size_divisible_by={divisible_by}: expected a positive integer")
    return -(-vocab // divisible_by) * divisible_by


def megatron_state(bridge: HFBridge, dtype: torch.dtype, divisible_by: int | None, bar) -> dict:
    """The DCP state of the Megatron checkpoint of `bridge`'s HF folder: lazy chunks and pickled items."""
    c = bridge.config
    shapes = whole_model_shapes(c)
    rows: dict[str, list[tuple[str, str]]] = {}  # Megatron key -> its (name pattern, kind), in row order
    for local, key, kind in TABLES[c.family]:
        if local.replace("{i}", "0") in shapes:
            rows.setdefault(key, []).append((local, kind))
    tensors = bridge.folder.tensors

    def reader(names: list[str], kinds: list[str], pad_to: int | None = None, layer: bool = False):
        def read():
            parts = {}
            for name, kind in zip(names, kinds):
                info = tensors[bridge.mapping.to_hf(name)]
                parts[kind] = read_tensor(info).to(dtype)
                warn_if_not_finite(info, parts[kind])
            out = fuse_qkv(parts, c) if "q" in parts else next(iter(parts.values()))
            if pad_to is not None and pad_to > out.shape[0]:  # padding rows: zeros, as Megatron's import pads
                out = torch.cat([out, out.new_zeros(pad_to - out.shape[0], *out.shape[1:])])
            bar.update(out.nbytes)
            return out.unsqueeze(0) if layer else out  # a layer's chunk of a stacked key: [1, ...]
        return read

    state: dict = {}
    vocab = padded_vocab(c.vocab_size, divisible_by)
    for key, entries in rows.items():
        if not key.startswith(LAYER_PREFIX):
            (local, kind), = entries
            shape = (vocab, *shapes[local][1:]) if kind == "vocab" else shapes[local]
            state[key] = LazyBlock(reader([local], [kind], vocab if kind == "vocab" else None), shape, dtype,
                                   (0,) * len(shape), shape)
            continue
        # one chunk per layer; linear_fc1 one per half (gate, up), as Megatron-Core's factory stores it
        groups = [entries] if entries[0][1] in ("q", "k", "v") else [[e] for e in entries]
        per_layer = [sum(shapes[e[0].replace("{i}", "0")][0] for e in g) for g in groups]
        rest = shapes[entries[0][0].replace("{i}", "0")][1:]
        full = (c.num_layers, sum(per_layer), *rest)
        chunks = []
        for i in range(c.num_layers):
            for g, n, start in zip(groups, per_layer, [sum(per_layer[:j]) for j in range(len(groups))]):
                names = [e[0].replace("{i}", str(i)) for e in g]
                chunks.append(LazyBlock(reader(names, [e[1] for e in g], layer=True), (1, n, *rest), dtype,
                                        (i, start, *[0] * len(rest)), full))
        state[key] = LazyChunks(chunks)
    for module in EXTRA_STATE:
        for i in range(c.num_layers):
            state[f"{LAYER_PREFIX}{module}._extra_state/shard_{i}_{c.num_layers}"] = [None]
    state[COMMON_STATE] = [COMMON]  # DCP stores a non-tensor as its torch.save: Megatron-Core's bytes exactly
    return state


def write_megatron_checkpoint(hf_model, megatron_path, dtype: torch.dtype | None = None,
                              make_vocab_size_divisible_by: int | None = None, overwrite: bool = False,
                              progress: bool = True) -> Path:
    """Write the HF folder `hf_model` as a Megatron checkpoint at `megatron_path` (a save folder), under a
    temporary name renamed into place when complete; returns the iteration folder. One dtype for every
    tensor, as a Megatron model has (params_dtype): `dtype`, else the HF config's."""
    bridge = HFBridge.from_hf_pretrained(hf_model)
    check_hf_folder(build_model(bridge.config, None, meta=True), bridge.folder, bridge.mapping)
    dtype = dtype or bridge.checkpoint_dtype()
    bar = tqdm(unit="B", unit_scale=True, desc="importing", disable=not progress)
    state = megatron_state(bridge, dtype, make_vocab_size_divisible_by, bar)
    with atomic_folder(megatron_path, overwrite=overwrite) as tmp:
        folder = iteration_dir(tmp, ITERATION)
        folder.mkdir()
        with warnings.catch_warnings():  # DCP warns that a single process without a process group saves alone
            warnings.filterwarnings("ignore", message=".*torch.distributed is .*")
            dcp.save(state, checkpoint_id=str(folder), planner=BlockSavePlanner(flatten_state_dict=False),
                     no_dist=True)
        bar.close()
        _side_files(bridge, folder, dtype, make_vocab_size_divisible_by)
        write_atomic(tmp / LATEST, str(ITERATION))
        torch.save(_train_state(), tmp / "latest_train_state.pt")
    return iteration_dir(megatron_path, ITERATION)


def _train_state() -> dict:
    return {k: torch.tensor(v) for k, v in TRAIN_STATE.items()}


def _side_files(bridge: HFBridge, folder: Path, dtype: torch.dtype, divisible_by: int | None) -> None:
    import yaml

    write_atomic(folder / MARKER, json.dumps({"sharded_backend": BACKEND, "sharded_backend_version": 1}))
    model = run_config_model(bridge.config, dtype, divisible_by, hf_model_id=str(Path(bridge.source).resolve()))
    write_atomic(folder / RUN_CONFIG_FILE, yaml.safe_dump({"model": model}, sort_keys=False))
    torch.save(_train_state(), folder / "train_state.pt")
    files = tokenizer_files(bridge.source)
    if files:  # Megatron Bridge keeps the tokenizer beside the weights (save_tokenizer_assets)
        (folder / "tokenizer").mkdir()
        for path in files:
            shutil.copy2(path, folder / "tokenizer" / Path(path).name)
