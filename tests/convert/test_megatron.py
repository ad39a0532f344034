"""Megatron-Core torch_dist checkpoints written by Megatron Bridge 0.6.2 itself (tests/data/megatron, made by
its make_fixtures.py): our HF export equals the source HF tensors bit for bit, with the architecture from
--hf-model or from run_config.yaml; hostile pickles planted in .metadata, in .distcp items and in common.pt
do not run (and do run under a naive reader); bad folders and models stop with one line."""

import io
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import MetadataIndex

from minibridge.conversion import compare_folders
from minibridge.conversion.exporter import export_checkpoint
from minibridge.convert import main
from minibridge.errors import MissingTensorError, UnsafeCheckpointError, UnsupportedModelError

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(__file__).parents[1] / "data" / "megatron"
FAMILIES = ["llama", "gemma3"]


def _identical(a, b):
    results = compare_folders(a, b)
    assert results and all(r.ok for r in results), [r for r in results if not r.ok][:3]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_of_megatron_bridge_checkpoint_is_exact(tmp_path, family):
    src = DATA / family / "hf"
    out = tmp_path / "out"
    assert main(["export", "--hf-model", str(src), "--megatron-path", str(DATA / family / "mcore"), "--hf-path",
                 str(out), "--no-progress"]) == 0
    _identical(src, out)
    # no --hf-model: the architecture from run_config.yaml, an iteration folder given directly
    export_checkpoint(None, DATA / family / "mcore" / "iter_0000000", tmp_path / "rc", progress=False)
    _identical(src, tmp_path / "rc")


class Payload:
    """Unpickling it creates `marker` (a stand-in for any code a crafted checkpoint would run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def _copy(tmp_path, family="llama") -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(DATA / family / "mcore", folder)
    return folder / "iter_0000000"


def _trusted_metadata(it):  # our own fixture, read naively to plant payloads in a copy
    with open(it / ".metadata", "rb") as f:
        return pickle.load(f)


def test_payload_in_metadata_does_not_run(tmp_path):
    it, marker = _copy(tmp_path), tmp_path / "pwned"
    md = _trusted_metadata(it)
    md.planner_data = Payload(marker)
    (it / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(UnsafeCheckpointError, match="refers to"):
        export_checkpoint(DATA / "llama" / "hf", it, tmp_path / "out", progress=False)
    assert not marker.exists()
    pickle.loads((it / ".metadata").read_bytes())  # what torch's own DCP reader does
    assert marker.exists()


@pytest.mark.parametrize("key", ["common_state/shard_0_1", "decoder.layers.mlp.linear_fc1._extra_state/shard_0_2"])
def test_payload_in_distcp_items_is_never_read(tmp_path, key):
    it, marker = _copy(tmp_path), tmp_path / "pwned"
    md = _trusted_metadata(it)
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    data = it / "__0_0.distcp"
    offset = data.stat().st_size
    with open(data, "ab") as f:
        f.write(buf.getvalue())
    index = next(i for i in md.storage_data if i.fqn == key)
    md.storage_data[index] = _StorageInfo("__0_0.distcp", offset, len(buf.getvalue()))
    (it / ".metadata").write_bytes(pickle.dumps(md))
    out = tmp_path / "out"
    export_checkpoint(DATA / "llama" / "hf", it, out, progress=False)
    _identical(DATA / "llama" / "hf", out)
    assert not marker.exists()
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)  # DCP's DefaultLoadPlanner.load_bytes
    assert marker.exists()


def test_payload_in_common_pt_is_never_opened(tmp_path):
    it, marker = _copy(tmp_path), tmp_path / "pwned"
    torch.save({"args": Payload(marker)}, it / "common.pt")  # older Megatron-Core writes common.pt
    export_checkpoint(DATA / "llama" / "hf", it, tmp_path / "out", progress=False)
    assert not marker.exists()
    torch.load(it / "common.pt", weights_only=False)
    assert marker.exists()


def test_bad_folders_and_models_stop_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", "--megatron-path", str(tmp_path / "empty"), "--hf-path", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "found neither run.json" in err and "metadata.json" in err and len(err.splitlines()) == 1
    it = _copy(tmp_path)
    text = (it / "run_config.yaml").read_text()
    (it / "run_config.yaml").write_text(text.replace("num_moe_experts: null", "num_moe_experts: 8"))
    with pytest.raises(UnsupportedModelError, match="8 experts"):
        export_checkpoint(None, it, tmp_path / "o", progress=False)
    (it / "run_config.yaml").write_text(text.replace("gpt_provider.GPTModelProvider", "qwen.Qwen3ModelProvider"))
    with pytest.raises(UnsupportedModelError, match="Qwen3ModelProvider is not supported"):
        export_checkpoint(None, it, tmp_path / "o", progress=False)
    (it / "run_config.yaml").unlink()
    assert main(["export", "--megatron-path", str(it), "--hf-path", str(tmp_path / "o")]) == 2
    assert "pass --hf-model" in capsys.readouterr().err
    md = _trusted_metadata(it)
    del md.state_dict_metadata["decoder.final_layernorm.weight"]
    (it / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(MissingTensorError, match="lacks \\['decoder.final_layernorm.weight'\\]"):
        export_checkpoint(DATA / "llama" / "hf", it, tmp_path / "o", progress=False)
