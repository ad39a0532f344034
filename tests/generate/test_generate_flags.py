"""Megatron Bridge's generation flags: its default prompt and max_new_tokens, --hf-revision (a hub id's
revision reaches the download; a local folder refuses one), --pp (1 only: a named error otherwise)."""

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


def test_pipeline_parallel_generation_is_refused_by_name(tiny_lms, capsys):
    assert main(["--hf_model_path", str(tiny_lms["llama"]), "--pp", "2"]) == 2
    err = _err(capsys)
    assert "--pp 2" in err and "--tp" in err


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
