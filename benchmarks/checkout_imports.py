"""Import minibridge from a bare checkout: nothing pip-installed, for a lent GPU machine with no network.

`minibridge.kernels` and `minibridge.recipes` exist only through setup.py's `SOURCES` folder mapping
(kernels/minibridge_kernels/ -> minibridge.kernels), which an editable or wheel install sets up. Here a
finder at the front of `sys.meta_path` serves those names from this checkout's folders, read from
setup.py's `SOURCES` (written once, there), and the checkout root goes first on `sys.path` for
`minibridge` itself. kernels/ gets no `__init__.py`: `import kernels` still finds the installed
distribution transformers imports (docs/architecture.md).

    python benchmarks/checkout_imports.py SCRIPT [ARGS...]     # run a script with the finder installed
    python benchmarks/checkout_imports.py -m MODULE [ARGS...]  # e.g. -m pytest ...
    python benchmarks/checkout_imports.py -c CODE
    python -m pytest -p checkout_imports ...                   # as a pytest plugin (benchmarks/ on PYTHONPATH)

Child processes get the same: `install()` puts benchmarks/ and the root on PYTHONPATH, and a child
started through this file (or pytest with `-p checkout_imports`) installs its own finder.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.util
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources(root: Path = ROOT) -> dict[str, Path]:
    """setup.py's SOURCES (import name -> folder) for the names whose folder differs from the name."""
    tree = ast.parse((root / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SOURCES" for t in node.targets):
            mapping = ast.literal_eval(node.value)
            return {name: root / folder for name, folder in mapping.items() if name.replace(".", "/") != folder}
    raise RuntimeError(f"no SOURCES mapping in {root / 'setup.py'}")


class CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds the mapped packages (and their submodules, through the package's __path__) in the checkout."""

    def __init__(self, mapping: dict[str, Path]):
        self.mapping = mapping

    def find_spec(self, name, path=None, target=None):
        folder = self.mapping.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def install(root: Path = ROOT) -> CheckoutFinder:
    """Serve minibridge and its mapped subpackages from `root`, here and in child processes."""
    for finder in sys.meta_path:
        if isinstance(finder, CheckoutFinder):
            return finder
    finder = CheckoutFinder(sources(root))
    sys.meta_path.insert(0, finder)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    paths = [str(root / "benchmarks"), str(root)]
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    return finder


def pytest_load_initial_conftests(early_config, parser, args):  # pytest hook, `-p checkout_imports`: before conftest.py
    install()


if __name__ == "__main__":
    install()
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if sys.argv[1] == "-c":
        code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
    elif sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
