"""Megatron Bridge's generation flags: its default prompt and max_new_tokens, --hf-revision (a hub id's
revision reaches the download; a local folder refuses one), --pp and --batch-size (a layout that does not fit
the world or the model: a named error)."""

import re

import pytest

from minibridge.generate import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT, main

pytestmark = pytest.mark.usefixtures("one_thread")


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_megatron_bridge_defaults(tiny_lms, capsys):
    assert (DEFAULT_PROMPT, DEFAULT_MAX_NEW_TOKENS) == ("Hello, how are you?", 20)
    assert main(["--hf_model_path", str(tiny_lms["llama"])]) == 0
    out = capsys.readouterr().out
    assert "=== prompt: Hello, how are you?" in out
    decoded = int(re.search(r"decode: (\d+) tokens", out).group(1))
    assert decoded == DEFAULT_MAX_NEW_TOKENS - 1  # the first token comes from the prefill; no EOS in between
    assert main(["--hf_model_path", str(tiny_lms["llama"]), "--prompt", "x", "--pp", "1"]) == 0


@pytest.mark.parametrize("args, named", [
    (["--pp", "2"], "--tp 1 --pp 2: needs a multiple of 2 processes (torchrun --nproc-per-node=2), got a world of 1"),
    (["--pp", "0"], "--pp 0: expected an integer >= 1"), (["--batch-size", "0"], "--batch-size 0"),
    (["--pp", "3"], "--pp 3: the model has only 2 layers"),
])
def test_bad_layouts_are_refused_by_name(tiny_lms, capsys, monkeypatch, args, named):
    if "3" in args:
        monkeypatch.setenv("WORLD_SIZE", "3")  # checked before any process group is made
    assert main(["--hf_model_path", str(tiny_lms["llama"]), *args]) == 2
    assert named in _err(capsys)


def test_hf_revision(tiny_lms, capsys, monkeypatch):
    folder = str(tiny_lms["llama"])
    assert main(["--hf_model_path", folder, "--hf-revision", "v2"]) == 2
    err = _err(capsys)
    assert "--hf-revision v2" in err and "local folder" in err
    seen = {}

    def snapshot_download(repo_id, revision=None, **kwargs):
        seen.update(repo_id=repo_id, revision=revision)
        return folder

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert main(["--hf_model_path", "org/tiny", "--hf-revision", "0123abc", "--max_new_tokens", "2"]) == 0
    assert seen == {"repo_id": "org/tiny", "revision": "0123abc"}
