"""The wheel is what users install (`pip install .`, not -e): it must hold every module of the source tree.

The wheel is built from a copy of the tree (no stale build/ folder, nothing written here).
kernels/minibridge_kernels/ and recipes/ must land as minibridge/kernels/ and minibridge/recipes/,
nothing but `minibridge` at the top.
Then every module is imported, and every command line runs `--help`, from the unpacked wheel with the
source tree kept off sys.path (`-S`: no .pth files, so no editable finder), or, when `make wheel-check`
sets MINIBRIDGE_WHEEL_PYTHON, from a fresh virtual environment that installed the wheel.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from import_graph import ROOT, package_sources

# source folder (relative to the checkout) -> installed folder, from setup.py's mapping
SOURCES = {folder.relative_to(ROOT).as_posix(): name.replace(".", "/") for name, folder in package_sources().items()}
SCRIPTS = {
    "minibridge-train": "minibridge.train:main",
    "minibridge-convert": "minibridge.convert:main",
    "minibridge-generate": "minibridge.generate:main",
    "minibridge-eval": "minibridge.eval:main",
    "minibridge-compare": "minibridge.compare:main",
    "minibridge-preprocess": "minibridge.training.data.preprocess:main",
}
EXTRAS = {"test", "flash", "tensorboard", "matplotlib", "wandb", "data"}
WHEEL_PYTHON_ENV = "MINIBRIDGE_WHEEL_PYTHON"
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")

# Run inside the environment under test (standard library only): import every module of the installed
# package from the folder it was found in, load every console script's target from the metadata there,
# and print the package's files (relative to that folder) and the console scripts.
IMPORT_ALL = r"""
import importlib, importlib.metadata, importlib.util, json, sys
from pathlib import Path
site = Path(importlib.util.find_spec("minibridge").submodule_search_locations[0]).resolve().parent
if not site.is_relative_to(Path(sys.argv[1]).resolve()):
    sys.exit(f"minibridge found in {site}, not under {sys.argv[1]}")
files = sorted(p.relative_to(site).as_posix() for p in (site / "minibridge").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts)
for rel in files:
    if rel.endswith(".py"):
        name = rel[:-3].replace("/", ".").removesuffix(".__init__")
        module = importlib.import_module(name)
        if not Path(module.__file__).resolve().is_relative_to(site):
            sys.exit(f"{name} imported from {module.__file__}, not from {site}")
(info,) = site.glob("minibridge-*.dist-info")
scripts = {ep.name: ep.value for ep in importlib.metadata.Distribution.at(info).entry_points
           if ep.group == "console_scripts" and callable(ep.load())}
print(json.dumps({"files": files, "scripts": scripts}))
"""


def source_files() -> dict[str, Path]:
    """Installed path -> source file, for every file of the source packages (code and data alike)."""
    out = {}
    for folder, target in SOURCES.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out[f"{target}/{path.relative_to(ROOT / folder).as_posix()}"] = path
    return out


def cli_modules() -> list[str]:
    """Every module with a `__main__` guard: each must run `--help` from the installed package."""
    guard = re.compile(r"^if __name__ == .__main__.:", re.M)
    return [installed[:-3].replace("/", ".").removesuffix(".__init__")
            for installed, path in sorted(source_files().items())
            if installed.endswith(".py") and guard.search(path.read_text())]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the tree: the top-level files and the source packages."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, src / path.name)
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, src / folder, ignore=SKIP)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (whl,) = out.glob("minibridge-*.whl")
    return whl


def test_wheel_holds_every_source_file_and_nothing_else(wheel):
    names = [n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")]
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"minibridge"}, sorted(tops)  # no `kernels`
    packaged = {n for n in names if n.startswith("minibridge/")}
    expected = set(source_files())
    assert not expected - packaged, f"missing from the wheel: {sorted(expected - packaged)}"
    assert not packaged - expected, f"in the wheel but not in the source tree: {sorted(packaged - expected)}"


def test_wheel_declares_console_scripts_and_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        info = next(n.split("/")[0] for n in z.namelist() if ".dist-info/" in n)
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        metadata = z.read(f"{info}/METADATA").decode()
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert dict(parser["console_scripts"]) == SCRIPTS
    assert {target.split(":")[0] for target in SCRIPTS.values()} <= set(cli_modules())
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M))
    assert EXTRAS <= extras, sorted(EXTRAS - extras)
    # every extra that a message or the README tells users to install exists: `pip install minibridge[x]`,
    # `pip install -e ".[x,y]"`
    texts = [path.read_text() for path in source_files().values() if path.suffix == ".py"]
    hinted = set()
    for text in texts + [(ROOT / "README.md").read_text()]:
        for group in re.findall(r"pip install (?:-e )?[\"']?(?:minibridge|\.)\[([\w,\- ]+)\]", text):
            hinted |= {x.strip() for x in group.split(",")}
    assert hinted <= extras, f"hinted extras that the wheel does not declare: {sorted(hinted - extras)}"


def run_checks(python: str, flags: list[str], env: dict, home: Path, cwd: Path, scripts: Path | None) -> None:
    """Import everything, compare the installed files with the source tree, run every CLI's --help."""
    done = subprocess.run([python, *flags, "-c", IMPORT_ALL, str(home)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    installed, expected = set(report["files"]), set(source_files())
    assert installed == expected, (f"missing: {sorted(expected - installed)}", f"extra: {sorted(installed - expected)}")
    assert report["scripts"] == SCRIPTS
    commands = [[python, *flags, "-m", name, "--help"] for name in cli_modules()]
    if scripts is not None:
        commands += [[str(scripts / name), "--help"] for name in SCRIPTS]
    # side by side: each start is mostly importing torch
    procs = [(c, subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env))
             for c in commands]
    for command, proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip(), (command, out[-2000:], err[-2000:])


@pytest.mark.slow
def test_unpacked_wheel_imports_every_module_and_runs_every_cli(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # torch and the other dependencies from this environment; -S skips its .pth files (the editable finder)
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *deps])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run_checks(sys.executable, ["-S"], env, site, cwd, None)  # console scripts exist only in a real install


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(WHEEL_PYTHON_ENV), reason=f"`make wheel-check` sets {WHEEL_PYTHON_ENV}")
def test_installed_wheel_imports_every_module_and_runs_every_cli(tmp_path):
    """`make wheel-check`: the wheel installed (not editable) in a fresh virtual environment."""
    python = Path(os.environ[WHEEL_PYTHON_ENV]).absolute()
    prefix = python.parent.parent
    cfg = (prefix / "pyvenv.cfg").read_text()  # a fresh virtual environment that sees no system packages
    assert re.search(r"^include-system-site-packages\s*=\s*false", cfg, re.M), cfg
    assert not list(prefix.glob("lib*/python*/site-packages/__editable__*")), "an editable install, not a wheel"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run_checks(str(python), ["-I"], env, prefix, tmp_path, python.parent)
