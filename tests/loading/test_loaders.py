"""The loaders of minibridge.loading as peers: chunks made by `build_model` are filled the same way from an HF
folder, a minibridge checkpoint, a Megatron checkpoint of the same weights, or fresh initialisation, each
through `loader(chunks, source)`, and give what `AutoBridge.to_model` (the public path) gives."""

import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minibridge import AutoBridge
from minibridge.bridge.hf_folder import HFFolder
from minibridge.errors import CheckpointMismatchError, ConfigError
from minibridge.loading.checkpoints import load_checkpoint, load_megatron, load_pretrained
from minibridge.loading.fresh import initialize_fresh
from minibridge.loading.hf import build_hf_model, check_hf_folder, hf_folder_config, hf_mapping, load_hf_folder
from minibridge.parallel.parallelize import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(__file__).parents[1] / "data" / "megatron"


def _values(chunks) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for chunk in chunks for name, p in chunk.named_parameters()}


def _filled(config, loader, source) -> dict[str, torch.Tensor]:
    chunks = build_model(config, None, torch.float32)
    loader(chunks, source)
    return _values(chunks)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_every_source_fills_the_same_chunks_alike(family, tmp_path):
    """HF folder, minibridge checkpoint (imported from it) and Megatron Bridge's checkpoint of the same
    weights: the same values, the HF folder's tensors, as AutoBridge.to_model reads them."""
    hf = DATA / family / "hf"
    config = hf_folder_config(hf)
    AutoBridge.import_ckpt(hf, tmp_path / "ours", progress=False)
    from_hf = _filled(config, lambda chunks, folder: load_hf_folder(chunks, folder, progress=False), hf)
    stored = {}
    for path in sorted(hf.glob("*.safetensors")):
        stored.update(load_file(path))
    mapping = hf_mapping(config, hf)
    for name, value in from_hf.items():
        assert torch.equal(value, stored[mapping.to_hf(name)].float()), name
    public = _values(AutoBridge.from_hf_pretrained(hf).to_model_chunks(None, torch.float32, progress=False))
    for loader, source in ((load_checkpoint, tmp_path / "ours"), (load_megatron, DATA / family / "mcore"),
                           (load_pretrained, tmp_path / "ours"), (load_pretrained, DATA / family / "mcore")):
        got = _filled(config, loader, source)
        assert got.keys() == from_hf.keys() == public.keys()
        for name in got:
            assert torch.equal(got[name], from_hf[name]) and torch.equal(public[name], from_hf[name]), (loader, name)


def test_fresh_initialisation_depends_on_seed_and_name_only():
    """initialize_fresh: each matrix from a generator seeded by (seed, name), norms 1 (Gemma's 0), the pad
    row 0; the same values as AutoBridge.from_config(...).to_model(seed=...), in float32 and bfloat16."""
    for family in ("llama", "gemma3"):
        config = hf_folder_config(DATA / family / "hf")
        fresh = _filled(config, initialize_fresh, 7)
        public = AutoBridge.from_config(config).to_model(dtype=torch.float32, progress=False, seed=7)
        assert all(torch.equal(p, fresh[n]) for n, p in public.named_parameters())
        for name, value in fresh.items():
            if value.ndim >= 2:
                generator = torch.Generator().manual_seed(zlib.crc32(f"7:{name}".encode()))
                expected = torch.randn(value.shape, generator=generator) * config.init_std
                if name == "embed_tokens.weight" and config.pad_token_id is not None:
                    expected[config.pad_token_id] = 0
                assert torch.equal(value, expected), name
            else:
                assert torch.all(value == (0 if family == "gemma3" or "bias" in name else 1)), name
        bf16 = build_model(config, None, torch.bfloat16)
        initialize_fresh(bf16, 7)
        assert all(torch.equal(p, fresh[n].bfloat16()) for n, p in bf16[0].named_parameters())


def test_the_hf_folder_is_checked_on_meta_and_a_checkpoint_kind_is_named(tmp_path):
    hf = DATA / "llama" / "hf"
    config = hf_folder_config(hf)
    wider = config.replace(hidden_size=config.hidden_size * 2)
    with pytest.raises(CheckpointMismatchError, match="has shape"):
        check_hf_folder(build_model(wider, None, meta=True), HFFolder(hf))  # nothing allocated
    with pytest.raises(CheckpointMismatchError, match="has shape"):
        build_hf_model(wider, hf, progress=False)
    AutoBridge.import_ckpt(hf, tmp_path / "ours", progress=False)
    with pytest.raises(ConfigError, match="not a Megatron one"):
        load_megatron(build_model(config, None, torch.float32), tmp_path / "ours")
