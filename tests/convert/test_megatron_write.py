"""`convert import --format megatron`: the Megatron-Core torch_dist checkpoint we write holds, tensor for
tensor, what Megatron Bridge 0.6.2's own import wrote from the same HF folder (tests/data/megatron/*/mcore);
its exporter read ours back to the source bit for bit (the recorded run, mbridge_export_record.json, made by
make_fixtures.py, whose sha256 of our tensors today's writer must still match); and our reader gives the
source back, for both families and with a padded vocabulary."""

import dataclasses
import importlib.util
import json
import pickle
from pathlib import Path

import pytest

from minibridge.bridge import HFBridge
from minibridge.conversion import compare_folders
from minibridge.conversion.exporter import export_checkpoint
from minibridge.bridge.megatron_config import config_from_run_config
from minibridge.convert import main

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(__file__).parents[1] / "data" / "megatron"
RECORD = json.loads((DATA / "mbridge_export_record.json").read_text())
_spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def _write(tmp_path, case) -> Path:
    name, flags = fixtures.OURS[case]
    out = tmp_path / case
    assert main(["import", "--hf-model", str(DATA / name / "hf"), "--megatron-path", str(out), "--format", "megatron",
                 "--no-progress", *flags]) == 0
    return out


def _layout(folder):  # our own output and Megatron Bridge's fixture: trusted here
    md = pickle.loads((folder / ".metadata").read_bytes())
    return {k: (list(v.size), v.properties.dtype, sorted((list(c.offsets), list(c.sizes)) for c in v.chunks))
            if hasattr(v, "size") else "bytes" for k, v in md.state_dict_metadata.items()}


@pytest.mark.parametrize("case", sorted(fixtures.OURS))
def test_written_tensors_are_those_megatron_bridge_exported(tmp_path, case):
    out = _write(tmp_path, case)
    record = RECORD[case]
    assert fixtures.tensor_sha256(out / "iter_0000000") == record["ours_sha256"]
    verdicts = set(record["export"].values())
    if case == "llama_padded":  # their exporter keeps the padding rows (zeros) in embed_tokens
        assert verdicts == {"identical", "[250, 96] vs [256, 96]: the first 250 rows identical, the other 6 zero"}
    else:
        assert verdicts == {"identical"} and record["identical"] == record["tensors"]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_megatron_write_is_megatron_bridges_own_layout_and_round_trips(tmp_path, family):
    out = _write(tmp_path, family)
    theirs = DATA / family / "mcore"
    assert _layout(out / "iter_0000000") == _layout(theirs / "iter_0000000")
    assert fixtures.tensor_sha256(out / "iter_0000000") == fixtures.tensor_sha256(theirs / "iter_0000000")
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert json.loads((out / "iter_0000000" / "metadata.json").read_text()) == {
        "sharded_backend": "torch_dist", "sharded_backend_version": 1}
    source = HFBridge.from_hf_pretrained(DATA / family / "hf").config
    for folder in (out, theirs):  # our run_config.yaml and theirs say the same model
        read = config_from_run_config(folder / "iter_0000000")
        assert read == dataclasses.replace(source, pad_token_id=None)
    export_checkpoint(None, out, tmp_path / "hf", progress=False)  # architecture from our run_config.yaml
    results = compare_folders(DATA / family / "hf", tmp_path / "hf")
    assert results and all(r.ok for r in results)


def test_padded_vocabulary_round_trips_and_bad_requests_stop(tmp_path, capsys):
    out = _write(tmp_path, "llama_padded")
    assert _layout(out / "iter_0000000")["embedding.word_embeddings.weight"][0] == [256, 96]
    assert main(["export", "--megatron-path", str(out), "--hf-path", str(tmp_path / "hf"), "--no-progress"]) == 0
    assert all(r.ok for r in compare_folders(DATA / "llama" / "hf", tmp_path / "hf"))
    src = str(DATA / "llama" / "hf")
    assert main(["import", "--hf-model", src, "--megatron-path", str(out), "--format", "megatron"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["import", "--hf-model", src, "--megatron-path", str(tmp_path / "x"), "--make-vocab-size-divisible-by",
                 "128"]) == 2
    assert "with --format megatron" in capsys.readouterr().err
    assert main(["import", "--hf-model", src, "--megatron-path", str(tmp_path / "x"), "--format", "megatron",
                 "--tp", "2"]) == 2
    assert "reshards it" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
