"""Property: for random tiny configs, import then export is the identity and every HF key maps once."""

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


from hf_checkpoints import make_checkpoint, random_hf_configs
from minibridge import AutoBridge
from minibridge.bridge.hf_folder import HFFolder
from minibridge.bridge.safetensors_io import read_tensor


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_hf_configs(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_import_export_identity_and_one_to_one_mapping(hf_config, dtype):
    with tempfile.TemporaryDirectory() as tmp:
        src = make_checkpoint(Path(tmp) / "src", hf_config, dtype=dtype)
        bridge = AutoBridge.from_hf_pretrained(src)
        hf_names = list(bridge.folder.tensors)
        local_names = [bridge.mapping.to_local(n) for n in hf_names]
        assert None not in local_names
        assert len(set(local_names)) == len(local_names)  # no two HF keys land on one parameter
        assert [bridge.mapping.to_hf(n) for n in local_names] == hf_names
        model = bridge.to_model(dtype=torch.float32, progress=False)
        assert sorted(n for n, _ in model.named_parameters()) == sorted(local_names)  # each exactly once
        exported = dict(bridge.export_hf_weights(model))
        assert sorted(exported) == sorted(hf_names)
        for name, info in bridge.folder.tensors.items():
            source = read_tensor(info)
            assert exported[name].dtype == source.dtype
            assert torch.equal(exported[name].view(torch.uint8), source.view(torch.uint8)), name
        out = bridge.save_hf_pretrained(model, Path(tmp) / "out", progress=False)
        assert sorted(HFFolder(out).tensors) == sorted(hf_names)
