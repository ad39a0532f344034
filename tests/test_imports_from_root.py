"""Commands run from the checkout root, where `python -m` and `python -c` put the current folder first on
sys.path: no top-level name of the checkout may shadow an installed package there (issue 26: a
`kernels/__init__.py` at the root hid the `kernels` distribution that transformers imports).

Every command here runs in a subprocess whose working directory is the checkout root, as a user's would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from import_graph import ROOT

# In a process started in `cwd` (with `folders` put first on sys.path, as conftest.py puts them): every
# top-level module that an installed distribution other than minibridge provides, and which resolves to a
# file or folder of `folders` (the cwd included) instead. Prints those names as JSON.
SHADOWED = r"""
import importlib.metadata, importlib.util, json, os, sys
from pathlib import Path
folders = [Path.cwd(), *map(Path, sys.argv[1:])]
sys.path[:0] = sys.argv[1:]

def ours(place, name):
    # `place` is the file or folder of `name` directly inside one of `folders` (not inside a .venv there)
    return any(Path(place).is_relative_to(f) and Path(place).relative_to(f).parts[0].split(".")[0] == name
               for f in folders)

shadowed = {}
for name, dists in sorted(importlib.metadata.packages_distributions().items()):
    dists = sorted(set(dists) - {"minibridge"})
    if not dists or not name.isidentifier() or name in sys.builtin_module_names:
        continue
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        continue
    places = [spec.origin] if spec is not None and spec.origin else []
    places += list(spec.submodule_search_locations or []) if spec is not None else []
    hits = [str(p) for p in places if p and os.path.isabs(str(p)) and ours(p, name)]
    if hits:
        shadowed[name] = {"distributions": dists, "found": hits}
print(json.dumps(shadowed))
"""


def run_in(cwd: Path, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def shadowed_names(cwd: Path, folders: list[str]) -> dict:
    proc = run_in(cwd, "-c", SHADOWED, *folders)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_transformers_model_modules_import_from_the_checkout_root():
    proc = run_in(ROOT, "-c", "import transformers.models.llama.modeling_llama, transformers.models.gemma3."
                              "modeling_gemma3, minibridge.kernels, minibridge.recipes")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_no_top_level_name_of_the_checkout_shadows_an_installed_distribution():
    """The root and every test folder that conftest files put on sys.path (read from this process)."""
    folders = [p for p in sys.path if p and Path(p).resolve().is_relative_to(ROOT)
               and not Path(p).resolve().is_relative_to(Path(sys.prefix).resolve())]
    assert str(ROOT / "tests") in folders, folders  # the conftest folders are there to be checked
    assert shadowed_names(ROOT, folders) == {}


def test_the_shadowing_check_finds_a_planted_package(tmp_path):
    """The check above can fail: a folder with `kernels/__init__.py` (the layout before issue 26) and a
    `peft.py` module are both reported, whether in the working folder or in a folder put on sys.path."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "peft.py").write_text("")
    (tmp_path / "extra" / "transformers").mkdir()  # no __init__.py: a namespace portion shadows nothing
    found = shadowed_names(tmp_path, [str(tmp_path / "extra")])
    assert set(found) == {"kernels", "peft"}, found
    assert found["kernels"]["distributions"] == ["kernels"]


@pytest.fixture(scope="module")
def lm_folder(hf_checkpoint, pydoc_data, tmp_path_factory) -> Path:
    """A tiny HF Llama with pydoc's 512-token tokenizer beside its weights."""
    folder = tmp_path_factory.mktemp("root") / "llama"
    shutil.copytree(hf_checkpoint("Llama-3.2-1B", vocab_size=pydoc_data["vocab_size"]), folder)
    for file in Path(pydoc_data["tokenizer"]).iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def test_compare_runs_from_the_checkout_root(lm_folder):
    proc = run_in(ROOT, "-m", "minibridge.compare", "--hf-model", str(lm_folder), "--prompt", "The module")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "cosine" in proc.stdout


def test_a_run_from_scratch_exports_its_tokenizer_and_generates_from_the_checkout_root(tmp_path, pydoc_data):
    """Train a few steps from scratch on pydoc text with the tokenizer trained on it, export to HF at the
    end, then talk to the export: the newcomer's path after `make demo`."""
    run = tmp_path / "run"
    train = run_in(ROOT, "-m", "minibridge.train", "--recipe", "llama3_debug_pretrain_config",
                   "dataset.kind=jsonl", f"dataset.data_paths=[{pydoc_data['jsonl']}]",
                   f"dataset.tokenizer={pydoc_data['tokenizer']}", f"model.vocab_size={pydoc_data['vocab_size']}",
                   "model.seq_length=64", "train.train_iters=3", "train.global_batch_size=2",
                   "train.micro_batch_size=1", "train.eval_interval=null", "logger.tensorboard_dir=null",
                   f"checkpoint.save={run}", "checkpoint.export_hf_on_finish=true")
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    export = run / "hf"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (export / name).read_bytes() == (Path(pydoc_data["tokenizer"]) / name).read_bytes(), name
    generate = run_in(ROOT, "-m", "minibridge.generate", "--hf_model_path", str(export), "--prompt", "The module",
                      "--max_new_tokens", "5")
    assert generate.returncode == 0, generate.stdout[-2000:] + generate.stderr[-3000:]
    assert "The module" in generate.stdout
