"""Layouts that cannot work fail before anything is allocated, naming the numbers involved."""

import pytest
import torch

from hf_checkpoints import real_config, shrink
from minibridge import AutoBridge
from minibridge.bridge import config_from_hf
from minibridge.parallel import LayoutError, ParallelConfig, ParallelDims, initialize
from minibridge.parallel.dims import _group_ranks, data_parallel_size


def _dims(tp, rank=0):
    return ParallelDims(ParallelConfig(tp=tp), world_size=tp, rank=rank, dp=1)


def test_heads_not_divisible_by_tp_names_both_numbers():
    config = config_from_hf(shrink(real_config("Llama-3.2-1B")))  # 8 heads
    with pytest.raises(LayoutError, match=r"num_heads=8 is not divisible by tensor parallel size tp=3"):
        _dims(3).validate_model(config)


def test_ffn_not_divisible_by_tp():
    config = config_from_hf(shrink(real_config("Llama-3.2-1B"), intermediate_size=100))
    with pytest.raises(LayoutError, match=r"intermediate_size=100 .* tp=8"):
        _dims(8).validate_model(config)


def test_kv_heads_and_tp_must_nest():
    config = config_from_hf(shrink(real_config("Llama-3.2-1B"), num_attention_heads=12, num_key_value_heads=3))
    with pytest.raises(LayoutError, match=r"num_kv_heads=3 and tp=2"):
        _dims(2).validate_model(config)
    _dims(4).validate_model(config_from_hf(shrink(real_config("gemma-3-1b-it"))))  # 1 KV head: replicated


def test_world_size_not_divisible_by_layout():
    with pytest.raises(LayoutError, match=r"world size 6 is not divisible by tp\*pp\*cp = 4\*1\*1 = 4"):
        data_parallel_size(ParallelConfig(tp=4), 6)
    assert data_parallel_size(ParallelConfig(tp=2), 8) == 4


def test_vp_needs_pp(monkeypatch):
    def no_group(*args, **kwargs):
        raise AssertionError("a process group was created for a layout that cannot work")

    # refused before any process group exists (another in-process test may have left one)
    monkeypatch.setattr(torch.distributed, "init_process_group", no_group)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(LayoutError, match=r"virtual pipeline stages \(vp=2\) need pipeline parallelism"):
        initialize(ParallelConfig(vp=2))


@pytest.mark.parametrize("value", [0, -1, 1.5, "2"])
def test_bad_sizes(value):
    with pytest.raises(LayoutError, match="expected a positive integer"):
        ParallelConfig(tp=value)


def test_provider_finalize_validates(hf_checkpoint):
    provider = AutoBridge.from_hf_pretrained(hf_checkpoint("Llama-3.2-1B")).to_megatron_provider()
    provider.tensor_model_parallel_size = 3
    with pytest.raises(LayoutError, match="tp=3"):
        provider.finalize()
    provider.tensor_model_parallel_size = 2
    provider.virtual_pipeline_model_parallel_size = 2
    with pytest.raises(LayoutError, match=r"vp=2\) need pipeline parallelism"):
        provider.finalize()


def test_megatron_rank_order():
    """tp fastest, then cp, dp, pp: with tp=2, dp=2, pp=2 rank 5 is (tp 1, dp 0, pp 1)."""
    groups = _group_ranks(ParallelConfig(tp=2, pp=2), dp=2)
    assert groups["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert groups["dp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert groups["pp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
