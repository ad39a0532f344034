"""`python -m minibridge.harness` (lm_eval's command line with `--model minibridge`), bad model and
generation arguments, and the package without lm_eval installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness_helpers import MAX_LENGTH, assert_same, hf_results, responses

from minibridge.errors import ConfigError, MinibridgeError


def test_command_line_equals_hf(harness_lms, harness_tasks, tmp_path, monkeypatch):
    """lm_eval's own command line, in this process: `python -m minibridge.harness` is `main(sys.argv[1:])`."""
    import lm_eval.tasks

    from minibridge.harness.__main__ import main

    class LocalTasks(lm_eval.tasks.TaskManager):  # the CLI would also index lm_eval's built-in tasks (~12 s)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalTasks)
    folder, tasks = harness_lms["gemma"], ["mb_choice", "mb_generate"]
    out = tmp_path / "out"
    assert main(["--model", "minibridge", "--model_args", f"pretrained={folder},dtype=float32,max_length={MAX_LENGTH}",
                 "--tasks", ",".join(tasks), "--include_path", str(harness_tasks), "--batch_size", "2",
                 "--device", "cpu", "--output_path", str(out), "--log_samples"]) == 0
    theirs = hf_results(folder, harness_tasks)
    for task in tasks:
        (samples,) = out.rglob(f"samples_{task}_*.jsonl")
        ours = {"samples": {task: [json.loads(line) for line in samples.read_text().splitlines()]}}
        expected = responses(theirs, task)
        assert_same(_revive(responses(ours, task), expected), expected, task)
    (results,) = out.rglob("results_*.json")
    assert json.loads(results.read_text())["results"]["mb_choice"]["acc,none"] == theirs["results"]["mb_choice"]["acc,none"]


def _revive(saved, like):
    """lm_eval writes every response as a string (tuples as lists): back to the types of `like`."""
    if isinstance(like, (list, tuple)):
        return [_revive(a, b) for a, b in zip(saved, like)] if len(saved) == len(like) else saved
    if isinstance(like, bool):
        return {"True": True, "False": False}.get(saved, saved)
    return float(saved) if isinstance(like, float) else saved


@pytest.mark.parametrize("args, message", [
    (dict(parallelize=True), "unknown key 'model_args.parallelize'"),
    (dict(batch_size="auto"), "automatic batch sizes are not supported"),
    (dict(batch_size=0), "batch_size=0: expected an integer >= 1"),
    (dict(max_length="long"), "max_length='long'"),
    (dict(trust_remote_code=True), "never runs code from a model folder"),
    (dict(pretrained="a", hf_model="b"), "two names for the HF folder"),
    (dict(), "needs pretrained=HF_DIR, checkpoint=CKPT"),
    (dict(pretrained="x", dtype="int8"), "dtype='int8': expected one of auto"),
    (dict(pretrained=object()), "pass tokenizer="),
])
def test_bad_model_arguments_are_named(args, message):
    from minibridge.harness import MinibridgeLM

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        MinibridgeLM(**args)


def test_one_process_only(monkeypatch):
    from minibridge.harness import MinibridgeLM

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2: --model minibridge evaluates in one process"):
        MinibridgeLM(pretrained="x")


def test_bad_sources_and_generation_settings(harness_lms, tmp_path):
    from lm_eval.api.instance import Instance

    from minibridge.harness import MinibridgeLM

    with pytest.raises((MinibridgeError, OSError), match="missing"):
        MinibridgeLM(pretrained=str(tmp_path / "missing"))
    with pytest.raises((MinibridgeError, OSError), match="found neither run.json"):
        MinibridgeLM(pretrained=str(harness_lms["llama"]), checkpoint=str(harness_lms["gemma"]))
    lm = MinibridgeLM.create_from_arg_string(f"pretrained={harness_lms['llama']},max_length={MAX_LENGTH}",
                                             {"batch_size": 2, "device": "cpu", "max_batch_size": None})
    assert (lm.batch_size, lm.max_length, str(lm.device)) == (2, MAX_LENGTH, "cpu")

    def ask(gen_kwargs):
        return lm.generate_until([Instance("generate_until", {}, ("Hello", gen_kwargs), 0)])

    for gen_kwargs, message in (({"num_beams": 4}, "'num_beams' not supported"),
                                ({"max_gen_toks": MAX_LENGTH}, "leaves no room"),
                                ({"until": 3}, "until=3"), ({"max_gen_toks": 0}, "max_gen_toks=0")):
        with pytest.raises(ConfigError, match=message):
            ask(gen_kwargs)
    (text,) = ask({"until": [], "max_new_tokens": 3, "temperature": 0.7, "top_k": 5, "do_sample": True})
    assert isinstance(text, str)


def test_without_lm_eval_the_package_imports_and_says_what_to_install():
    """lm_eval blocked from importing: minibridge.harness imports, --help works, anything else says
    `pip install minibridge[lm-eval]`."""
    script = (
        "import sys; sys.modules['lm_eval'] = None\n"
        "import minibridge.harness, minibridge.harness.model as m\n"
        "from minibridge.harness.__main__ import main\n"
        "assert main(['--help']) == 0 and main(['--tasks', 'x']) == 2\n"
        "try:\n    m.MinibridgeLM(pretrained='x')\nexcept m.ConfigError as e:\n    print('refused:', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "python -m minibridge.harness --model minibridge" in done.stdout  # the usage
    assert "refused: lm_eval is not installed: pip install minibridge[lm-eval]" in done.stdout
    assert "minibridge.harness: error: lm_eval is not installed" in done.stderr


def test_register_is_idempotent():
    from lm_eval.api.registry import get_model

    from minibridge.harness import MODEL_NAME, MinibridgeLM, register

    register()
    register()
    assert get_model(MODEL_NAME) is MinibridgeLM
