"""Random mutations of valid inputs never produce anything but the project's named errors.

safetensors files: either read_header (and reading every tensor) succeeds and the safetensors library
also accepts the file and returns the same tensors bit for bit (no silent load of wrong data), or it
raises a MinibridgeError. config.json, adapter_config.json and index files: either they are read into
well-typed values, or a MinibridgeError is raised; never a TypeError, KeyError, ZeroDivisionError...
Derandomized, so CI sees the same examples every run (a few seconds in all on two CPU cores).
"""

import copy
import json
import struct

import pytest
import torch
from hf_checkpoints import real_config, shrink
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save

from minibridge.bridge.hf_config import config_from_hf
from minibridge.bridge.hf_folder import HFFolder
from minibridge.bridge.peft_adapter import CONFIG_NAME, _read_config
from minibridge.bridge.safetensors_io import DTYPES, read_header, read_tensor
from minibridge.errors import MinibridgeError
from minibridge.models.config import ModelConfig, RopeConfig

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BASE_TENSORS = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.arange(4).to(torch.bfloat16),
                "c": torch.tensor([1, -2, 3], dtype=torch.int8), "d": torch.arange(3, dtype=torch.float32),
                "e": torch.zeros(0), "s": torch.tensor(7, dtype=torch.int64)}
BASE_FILE = save(BASE_TENSORS, metadata={"format": "pt"})
LIBRARY_DTYPES = sorted(DTYPES) + ["F8_E8M0", "F4", "C64", "f32", "", "U8 "]

small_ints = st.integers(-3, 48)
json_leaves = (st.none() | st.booleans() | small_ints | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
json_values = st.recursive(json_leaves, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=6)


def _paths(node):
    """Every (container, key) pair under `node`, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield node, key
        yield from _paths(child)


def _mutate_json(data, value, extra_ops=()):
    """A few random edits of the JSON `value`: replace, delete or add anywhere (or `extra_ops`)."""
    value = copy.deepcopy(value)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        ops = ["replace", "replace", "delete", "add", *extra_ops, *extra_ops, *extra_ops]
        op = data.draw(st.sampled_from(ops + ["root"]), label="op")
        if op in extra_ops:
            value = extra_ops[op](data, value)
            continue
        places = list(_paths(value))
        if op == "root" or not places:
            value = data.draw(st.sampled_from([[value], None, "x", 3]) | json_values, label="root")
            continue
        node, key = data.draw(st.sampled_from(places), label="where")
        if op == "replace":
            node[key] = data.draw(json_values | small_ints.map(float) | st.just(None), label="new")
        elif op == "delete":
            node.pop(key)
        elif isinstance(node, dict):
            node[data.draw(st.text(max_size=8), label="key")] = data.draw(json_values, label="value")
    return value


def _tensor_op(change):
    def op(data, header):
        names = [k for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)] if isinstance(
            header, dict) else []
        if names:
            change(data, header, data.draw(st.sampled_from(names), label="tensor"))
        return header
    return op


def _offsets(data, header, name):
    offsets = header[name].get("data_offsets")
    if isinstance(offsets, list) and offsets:
        i = data.draw(st.integers(0, len(offsets) - 1))
        if isinstance(offsets[i], int):
            offsets[i] += data.draw(st.integers(-8, 8), label="delta")


def _shape(data, header, name):
    """Another shape: often one of the same number of elements (still a valid file)."""
    same = st.sampled_from([[6], [3, 2], [1, 6], [2, 1, 3], [4], [2, 2], [1], [], [3], [0], [0, 5]])
    anything = st.lists(st.integers(-1, 6) | st.integers(0, 2**64), max_size=3)
    header[name]["shape"] = data.draw(same | anything, label="shape")


def _dtype(data, header, name):
    """Another dtype: often one of the same item size (still a valid file, other values)."""
    dtype = header[name].get("dtype")
    size = DTYPES[dtype].itemsize if isinstance(dtype, str) and dtype in DTYPES else None
    same = sorted(k for k, v in DTYPES.items() if v.itemsize == size) or LIBRARY_DTYPES
    header[name]["dtype"] = data.draw(st.sampled_from(same) | st.sampled_from(LIBRARY_DTYPES), label="dtype")


def _alias_or_swap(data, header, name):
    """Point `name` at another tensor's bytes (an alias), or swap two tensors' offsets."""
    other = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")), label="other")
    if isinstance(header.get(other), dict) and data.draw(st.booleans(), label="swap"):
        a, b = header[name].get("data_offsets"), header[other].get("data_offsets")
        header[name]["data_offsets"], header[other]["data_offsets"] = b, a
    elif isinstance(header.get(other), dict):
        header[name] = copy.deepcopy(header[other])


HEADER_OPS = {"offsets": _tensor_op(_offsets), "shape": _tensor_op(_shape), "dtype": _tensor_op(_dtype),
              "alias": _tensor_op(_alias_or_swap)}


def _assert_named_error_or_same_as_library(path, blob):
    path.write_bytes(blob)
    try:
        ours = {name: read_tensor(info) for name, info in read_header(path).items()}
    except MinibridgeError:
        return
    theirs = load(blob)  # we accepted it: the reference must too, and agree on every byte
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert (ours[name].dtype, ours[name].shape) == (tensor.dtype, tensor.shape), name
        assert torch.equal(ours[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "t.safetensors"


@settings(FUZZ, max_examples=400)
@given(data=st.data())
def test_mutated_safetensors_headers(scratch, data):
    (n,) = struct.unpack("<Q", BASE_FILE[:8])
    header = _mutate_json(data, json.loads(BASE_FILE[8 : 8 + n]), HEADER_OPS)
    text = json.dumps(header, separators=data.draw(st.sampled_from([(",", ":"), (", ", ": ")]))).encode()
    text += b" " * data.draw(st.integers(0, 9), label="padding")
    body = BASE_FILE[8 + n :]
    cut = data.draw(st.just(0) | st.integers(-4, 4), label="data length change")
    body = body[:cut] if cut < 0 else body + bytes(cut)
    _assert_named_error_or_same_as_library(scratch, struct.pack("<Q", len(text)) + text + body)


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_bytes(scratch, data):
    blob = bytearray(BASE_FILE)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        op = data.draw(st.sampled_from(["flip", "flip data", "insert", "delete", "truncate", "length"]), label="op")
        start = len(blob) - len(BASE_FILE) // 4 if op == "flip data" else 0  # the data section, roughly
        at = data.draw(st.integers(max(0, start), max(0, len(blob) - 1)), label="at")
        if op.startswith("flip") and blob:
            blob[at] ^= data.draw(st.integers(1, 255), label="mask")
        elif op == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
        elif op == "delete":
            del blob[at : at + data.draw(st.integers(1, 4), label="count")]
        elif op == "truncate":
            del blob[at:]
        else:
            (n,) = struct.unpack("<Q", BASE_FILE[:8])
            new = data.draw(st.integers(-8, 8).map(lambda d: max(0, n + d)) | st.integers(0, 2**64 - 1), label="n")
            blob[:8] = struct.pack("<Q", new)
    _assert_named_error_or_same_as_library(scratch, bytes(blob))


CONFIGS = [shrink(real_config(name)) for name in ("Llama-3.2-1B", "gemma-3-1b-it", "gemma-3-4b-it")]
CONFIGS.append({**{k: v for k, v in CONFIGS[0].items() if k not in ("rope_scaling", "rope_theta")},
                "rope_parameters": {**CONFIGS[0]["rope_scaling"], "rope_theta": 500000.0}})  # 5.x spelling


def _assert_well_typed(config: ModelConfig):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "max_position_embeddings"):
        value = getattr(config, name)
        assert type(value) is int and value > 0, (name, value)
    assert type(config.rms_norm_eps) is float and config.rms_norm_eps > 0 and type(config.init_std) is float
    assert all(type(getattr(config, f)) is bool for f in ("tie_word_embeddings", "attention_bias", "mlp_bias"))
    assert isinstance(config.hidden_act, str) and len(config.layer_types) == config.num_layers
    assert config.num_heads % config.num_kv_heads == 0 and config.head_dim % 2 == 0
    assert config.pad_token_id is None or type(config.pad_token_id) is int
    assert config.sliding_window is None or type(config.sliding_window) is int
    assert config.query_pre_attn_scalar is None or type(config.query_pre_attn_scalar) in (int, float)
    for rope in (config.rope, config.rope_local or config.rope):
        assert isinstance(rope, RopeConfig) and type(rope.theta) is float and rope.theta > 0
        assert type(rope.factor) is float and type(rope.original_max_position_embeddings) is int


@FUZZ
@given(data=st.data(), base=st.sampled_from(CONFIGS))
def test_mutated_config_json(data, base):
    hf = _mutate_json(data, base)
    try:
        config = config_from_hf(hf, source="fuzz/config.json")
    except MinibridgeError as err:
        assert str(err).startswith("fuzz/config.json: ") and "\n" not in str(err)
        return
    _assert_well_typed(config)


ADAPTER = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
           "use_dora": False, "use_rslora": False, "bias": "none", "modules_to_save": None, "rank_pattern": {}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_json")


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_mutated_adapter_config_and_index(folder, data):
    (folder / CONFIG_NAME).write_text(json.dumps(_mutate_json(data, ADAPTER)))
    try:
        cfg = _read_config(folder)
    except MinibridgeError:
        pass
    else:
        assert type(cfg["r"]) is int and cfg["r"] > 0 and type(cfg["use_dora"]) is bool
        assert isinstance(cfg["lora_alpha"], (int, float)) and 0 <= float(cfg["lora_dropout"]) < 1
    index = {"metadata": {"total_size": 8}, "weight_map": {"a": "m1.safetensors", "b": "m2.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(_mutate_json(data, index)))
    try:
        HFFolder._read_index(folder / "model.safetensors.index.json")
    except MinibridgeError:
        pass
