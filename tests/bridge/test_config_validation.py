"""config.json, adapter_config.json and model.safetensors.index.json values are checked before use: each
bad value is a named error (file, key path, what was expected), never a TypeError, a letter-by-letter
architecture list, a silently filled default or a failure at the first forward."""

import copy
import json
import shutil

import pytest
from hf_checkpoints import real_config, shrink

from minibridge import AutoBridge
from minibridge.bridge.hf_config import config_from_hf
from minibridge.bridge.hf_folder import INDEX_NAME
from minibridge.bridge.peft_adapter import CONFIG_NAME, _read_config
from minibridge.errors import ConfigError, CorruptCheckpointError, UnsupportedModelError

SOURCE = "some/config.json"
LLAMA = shrink(real_config("Llama-3.2-1B"))  # head_dim 16, 8 heads, 2 KV heads
GEMMA = shrink(real_config("gemma-3-1b-it"))
GEMMA_4B = shrink(real_config("gemma-3-4b-it"))


def _with(base, path, value=None, delete=False):
    """A copy of `base` with the dotted key `path` set to `value` (or deleted)."""
    hf = copy.deepcopy(base)
    *parents, key = path.split(".")
    node = hf
    for part in parents:
        node = node[part]
    if delete:
        node.pop(key)
    else:
        node[key] = value
    return hf


# transformers 5.x spelling: rope_parameters (per layer type for Gemma)
LLAMA_5X = _with(_with(LLAMA, "rope_scaling", delete=True), "rope_parameters",
                 {**LLAMA["rope_scaling"], "rope_theta": LLAMA["rope_theta"]})
GEMMA_5X = _with(GEMMA, "rope_parameters", {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})

BAD = [  # (base, key path, value, error, message after "some/config.json: ")
    (LLAMA, "hidden_size", "64", ConfigError, 'hidden_size="64": expected a positive integer'),
    (LLAMA, "num_hidden_layers", 2.5, ConfigError, "num_hidden_layers=2.5: expected a positive integer"),
    (LLAMA, "num_hidden_layers", 2.0, ConfigError, "num_hidden_layers=2.0: expected a positive integer"),
    (GEMMA, "num_hidden_layers", 10**9, ConfigError, "num_hidden_layers=1000000000: expected a positive integer up to"),
    (LLAMA, "num_attention_heads", -8, ConfigError, "num_attention_heads=-8: expected a positive integer"),
    (LLAMA, "vocab_size", True, ConfigError, "vocab_size=true: expected a positive integer"),
    (LLAMA, "rms_norm_eps", "abc", ConfigError, 'rms_norm_eps="abc": expected a finite number > 0'),
    (LLAMA, "rms_norm_eps", 0, ConfigError, "rms_norm_eps=0: expected a finite number > 0"),
    (LLAMA, "architectures", "LlamaForCausalLM", ConfigError,
     'architectures="LlamaForCausalLM": expected a list of strings such as \\["LlamaForCausalLM"\\]'),
    (LLAMA, "architectures", [3], ConfigError, "architectures=\\[3\\]: expected a list of strings"),
    (LLAMA, "model_type", {"a": 1}, ConfigError, 'model_type={"a": 1}: expected a string'),
    (LLAMA, "num_key_value_heads", 3, ConfigError, "num_key_value_heads=3: expected a divisor of num_attention_heads"),
    (LLAMA, "num_key_value_heads", 0, ConfigError, "num_key_value_heads=0: expected a positive integer"),
    (LLAMA, "head_dim", 15, ConfigError, "head_dim=15: expected an even number"),
    (LLAMA, "tie_word_embeddings", "yes", ConfigError, 'tie_word_embeddings="yes": expected true or false'),
    (LLAMA, "attention_bias", 0, ConfigError, "attention_bias=0: expected true or false"),
    (LLAMA, "max_position_embeddings", 0, ConfigError, "max_position_embeddings=0: expected a positive integer"),
    (LLAMA, "pad_token_id", 256, ConfigError, "pad_token_id=256: expected a token id below vocab_size=256"),
    (LLAMA, "pad_token_id", "0", ConfigError, 'pad_token_id="0": expected an integer >= -256 or null'),
    (LLAMA, "hidden_act", "gelu", UnsupportedModelError, 'hidden_act="gelu": expected one of'),
    (LLAMA, "rope_theta", 0, ConfigError, "rope_theta=0: expected a finite number > 0"),
    (LLAMA, "rope_scaling", "llama3", ConfigError, 'rope_scaling="llama3": expected a JSON object or null'),
    (LLAMA, "rope_scaling.rope_type", "yarn", UnsupportedModelError, 'rope_scaling.rope_type="yarn"'),
    (LLAMA, "rope_scaling.factor", -1, ConfigError, "rope_scaling.factor=-1: expected a finite number > 0"),
    (LLAMA, "rope_scaling.high_freq_factor", 1.0, ConfigError,
     "rope_scaling.high_freq_factor=1.0: expected more than low_freq_factor=1.0"),
    (LLAMA, "rope_scaling.original_max_position_embeddings", 8192.5, ConfigError,
     "rope_scaling.original_max_position_embeddings=8192.5: expected a positive integer"),
    (LLAMA_5X, "rope_parameters.rope_theta", float("inf"), ConfigError, "rope_parameters.rope_theta=Infinity"),
    (LLAMA_5X, "rope_parameters.rope_type", 3, ConfigError, "rope_parameters.rope_type=3: expected one of"),
    (GEMMA, "layer_types", ["full_attention"], ConfigError, "layer_types=.*: expected 7 entries, one per layer"),
    (GEMMA, "layer_types", ["chunked_attention"] * 7, UnsupportedModelError,
     r'layer_types=.*\("chunked_attention" is not supported\)'),
    (GEMMA, "layer_types", "full_attention", ConfigError, 'layer_types="full_attention": expected a list of strings'),
    (GEMMA, "sliding_window", None, ConfigError, "sliding_window=null: expected a positive integer"),
    (GEMMA, "sliding_window", 0, ConfigError, "sliding_window=0: expected a positive integer or null"),
    (GEMMA, "query_pre_attn_scalar", "16", ConfigError, 'query_pre_attn_scalar="16": expected a finite number > 0'),
    (GEMMA_5X, "rope_parameters.full_attention", 3, ConfigError, "rope_parameters.full_attention=3: expected a JSON"),
    (GEMMA, "use_bidirectional_attention", "no", ConfigError, 'use_bidirectional_attention="no": expected true or'),
    (GEMMA, "final_logit_softcapping", 30.0, UnsupportedModelError, "final_logit_softcapping=30.0: expected null"),
    (GEMMA, "hidden_activation", "relu", UnsupportedModelError, 'hidden_activation="relu": expected one of'),
    (GEMMA_4B, "text_config", [], ConfigError, "text_config=\\[\\]: expected a JSON object"),
    (GEMMA_4B, "text_config.num_hidden_layers", 2.5, ConfigError,
     "text_config.num_hidden_layers=2.5: expected a positive integer"),
    (GEMMA_4B, "tie_word_embeddings", "true", ConfigError, 'tie_word_embeddings="true": expected true or false'),
]


@pytest.mark.parametrize("base, key, value, error, message", BAD, ids=[f"{b[1]}={b[2]!r}" for b in BAD])
def test_bad_values_are_named(base, key, value, error, message):
    with pytest.raises(error, match=f"^{SOURCE}: {message}"):
        config_from_hf(_with(base, key, value), source=SOURCE)


@pytest.mark.parametrize("key", ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads"])
@pytest.mark.parametrize("base", [LLAMA, GEMMA], ids=["llama", "gemma"])
def test_text_only_configs_must_state_their_sizes(base, key):
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: missing required key '{key}' \(the "):
        config_from_hf(_with(base, key, delete=True), source=SOURCE)


def test_the_real_multimodal_config_still_takes_transformers_defaults():
    config = config_from_hf(real_config("gemma-3-4b-it"))  # omits heads, head_dim, vocabulary...
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (8, 4, 256, 262208)
    assert config.hidden_size == 2560 and config.num_layers == 34 and config.rope.factor == 8.0


@pytest.mark.parametrize("hf", [[LLAMA], "LlamaForCausalLM", None, 3])
def test_a_config_that_is_not_an_object(hf):
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: the file is a JSON \w+ .*; expected a JSON object"):
        config_from_hf(hf, source=SOURCE)


@pytest.fixture
def llama_copy(hf_checkpoint, tmp_path):
    return shutil.copytree(hf_checkpoint("Llama-3.2-1B"), tmp_path / "llama")


@pytest.mark.parametrize("text, error, message", [
    ("[1, 2]", ConfigError, "the file is a JSON array"),
    ('{"hidden_size": 96, "hidden_size": 64}', CorruptCheckpointError, 'duplicate key "hidden_size"'),
    ('{"hidden_size": 96', CorruptCheckpointError, "not valid JSON"),
    (b'{"a": "\xff"}', CorruptCheckpointError, "not valid UTF-8"),
])
def test_config_json_read_from_a_folder(llama_copy, text, error, message):
    path = llama_copy / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(error, match=rf"^{path}: {message}"):
        AutoBridge.from_hf_pretrained(llama_copy)


@pytest.mark.parametrize("index, message", [
    ([], "the file is a JSON array"),
    ({"metadata": {}}, "missing required key 'weight_map'"),
    ({"weight_map": ["model.safetensors"]}, "weight_map=.*: expected a JSON object"),
    ({"weight_map": {"lm_head.weight": 7}}, r"weight_map\['lm_head.weight'\]=7: expected a file name"),
])
def test_malformed_index_files(llama_copy, index, message):
    path = llama_copy / INDEX_NAME
    path.write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match=rf"^{path}: {message}"):
        AutoBridge.from_hf_pretrained(llama_copy)


GOOD_ADAPTER = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"],
                "use_dora": False, "bias": "none"}


@pytest.mark.parametrize("key, value, error, message", [
    ("r", "four", ConfigError, 'r="four": expected a positive integer'),
    ("r", 0, ConfigError, "r=0: expected a positive integer"),
    ("lora_alpha", "x", ConfigError, 'lora_alpha="x": expected a finite number >= 0'),
    ("lora_dropout", 1.5, ConfigError, "lora_dropout=1.5: expected a probability"),
    ("target_modules", 3, ConfigError, "target_modules=3: expected a list of strings or a string"),
    ("use_dora", "yes", ConfigError, 'use_dora="yes": expected true or false'),
    ("peft_type", "IA3", UnsupportedModelError, "adapter features minibridge does not support: peft_type 'IA3'"),
])
def test_bad_adapter_configs(tmp_path, key, value, error, message):
    path = tmp_path / CONFIG_NAME
    path.write_text(json.dumps({**GOOD_ADAPTER, key: value}))
    with pytest.raises(error, match=rf"^{path}: {message}"):
        _read_config(tmp_path)


def test_adapter_configs_take_peft_defaults_and_regex_targets(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "target_modules": ".*q_proj"}))
    cfg = _read_config(tmp_path)
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_dora"]) == (8, 8, False)
    (tmp_path / CONFIG_NAME).write_text("[]")
    with pytest.raises(ConfigError, match=r"adapter_config.json: the file is a JSON array"):
        _read_config(tmp_path)


def test_both_rope_spellings_still_read_the_same():
    assert config_from_hf(LLAMA_5X) == config_from_hf(LLAMA)
    assert config_from_hf(GEMMA_5X) == config_from_hf(GEMMA)
