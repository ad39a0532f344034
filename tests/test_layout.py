"""The package layout rules of docs/architecture.md, checked on the real import graph.

The graph (tests/import_graph.py) is built by parsing every module of the package with `ast`, from
every import statement, lazy and TYPE_CHECKING ones included. TYPE_CHECKING-only imports never run,
so they are left out of the cycle check, but they still obey the layer and privacy rules (a type is
a dependency too).

To place a new package, add a row to LAYERS below and a line to docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

from import_graph import (
    DISTRIBUTED, ROOT, all_edges, cycle_report, find_modules, package_sources, project_module, resolve_from,
)

DOC = ROOT / "docs" / "architecture.md"
SOURCES = package_sources()  # dotted package -> the source folder it installs from (setup.py)
MAX_LINES = 400

# ---- the layering (edit here; keep docs/architecture.md in step) -------------------------------
# Each row: a unit (a package, or one module) -> what it may import besides itself. A module belongs
# to the longest row that names it or a package above it; the row "minibridge" is the package's
# __init__ only. An allowed entry covers that module and everything below it ("minibridge" only
# itself). A module in no row fails test_layer_rules: place every new package here.
FOUNDATION = {"minibridge.errors", "minibridge.files", "minibridge.memory", "minibridge.cli"}
KERNELS = FOUNDATION | {"minibridge.kernels"}
MODELS = KERNELS | {"minibridge.models"}
PARALLEL = MODELS | {"minibridge.parallel"}
PEFT = PARALLEL | {"minibridge.peft"}
BRIDGE = PEFT | {"minibridge.bridge"}
CHECKPOINT = PARALLEL | {"minibridge.checkpoint"}
LOADING = BRIDGE | CHECKPOINT | {"minibridge.loading"}
TRAINING = LOADING | {"minibridge.training"}
CONVERSION = LOADING | {"minibridge.conversion"}
PUBLIC = TRAINING | CONVERSION | {"minibridge", "minibridge.recipes"}
EVALUATION = TRAINING | CONVERSION | {"minibridge.evaluation"}
LAYERS: dict[str, set[str]] = {
    "minibridge.errors": set(),
    "minibridge.files": {"minibridge.errors"},
    "minibridge.memory": set(),
    "minibridge.cli": {"minibridge.errors", "minibridge.memory"},
    "minibridge.kernels": FOUNDATION,
    "minibridge.models": KERNELS,
    "minibridge.parallel": MODELS,
    "minibridge.peft": PARALLEL,
    "minibridge.bridge": PEFT | {"minibridge.checkpoint.names"},  # megatron_config: run_config.yaml of a folder
    "minibridge.checkpoint.names": FOUNDATION,  # folder and file names, no torch: bridge and recipes read them
    "minibridge.checkpoint": PARALLEL,         # the DCP format: below training and conversion, above models
    # filling a built model: one loader per source (HF folder, checkpoints, fresh), peers of one shape
    "minibridge.loading": BRIDGE | CHECKPOINT,
    "minibridge.training": LOADING,
    # the data pipeline stands alone below the loop (hf_folder.check_contained: path safety; dims.from_rank0:
    # rank 0's decisions reach every rank through the one helper)
    "minibridge.training.data": FOUNDATION | {"minibridge.bridge.hf_folder", "minibridge.parallel.dims"},
    "minibridge.conversion": LOADING,          # beside training, not above it
    # the token loop, sampling, pipeline stages, streaming: runs built models, loads nothing
    "minibridge.generation": PARALLEL,
    # recipes only build configs: never the training loop, parallel or kernels
    "minibridge.recipes": FOUNDATION | {"minibridge.models", "minibridge.bridge", "minibridge.training.config",
                                        "minibridge.training.overrides", "minibridge.training.hydra_grammar"},
    # eval / compare logic: the trainer's forward and data (training) and checkpoint loading (conversion)
    "minibridge.evaluation": TRAINING | CONVERSION,
    "minibridge": CONVERSION,                  # the public API in minibridge/__init__.py
    "minibridge.train": PUBLIC,                # thin `python -m` entry points
    "minibridge.convert": PUBLIC,
    "minibridge.generate": PUBLIC | {"minibridge.generation"},
    "minibridge.eval": PUBLIC | EVALUATION,
    "minibridge.compare": PUBLIC | EVALUATION,
    # lm-evaluation-harness's `--model minibridge`: an entry point that also generates with minibridge.generation
    "minibridge.harness": PUBLIC | {"minibridge.generation"},
}
# units that must not touch torch.distributed (single-device code)
NO_DISTRIBUTED = {"minibridge.models", "minibridge.kernels"}


MODULES = find_modules(SOURCES)
EDGES = all_edges(MODULES)


def test_no_import_cycles():
    """No import cycle of two or more modules, lazy imports included (docs/architecture.md, rule 1)."""
    report = cycle_report(MODULES, EDGES)
    assert not report, "import cycles (break one edge of each):\n" + "\n".join(report)


# ---- layers ------------------------------------------------------------------------------------
def _unit(module: str) -> str | None:
    parts = module.split(".")
    for end in range(len(parts), 1, -1):       # the row "minibridge" covers only the __init__
        if ".".join(parts[:end]) in LAYERS:
            return ".".join(parts[:end])
    return module if module in LAYERS else None


def _covers(entry: str, module: str) -> bool:
    return module == entry or ("." in entry and module.startswith(entry + "."))


def _distributed_attributes(path: Path) -> list[int]:
    """Lines using `torch.distributed` through a bare `import torch`."""
    return sorted({n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)
                   and n.attr == "distributed" and isinstance(n.value, ast.Name) and n.value.id == "torch"})


def layer_violations(modules, edges) -> list[str]:
    problems = [f"{path.relative_to(ROOT)}: {module} is in no row of LAYERS in tests/test_layout.py: "
                f"place its package in the layering (docs/architecture.md)"
                for module, (path, _) in modules.items() if _unit(module) is None]
    for e in edges:
        if (unit := _unit(e.source)) is None:
            continue
        if e.target == DISTRIBUTED:
            if unit in NO_DISTRIBUTED:
                problems.append(f"{e.where()}: {e.source} imports {DISTRIBUTED} ({unit} is single-device)")
        elif not any(_covers(entry, e.target) for entry in LAYERS[unit] | {unit}):
            problems.append(f"{e.where()}: {e.source} imports {e.target}, which {unit} may not import")
    for module, (path, _) in modules.items():
        if _unit(module) in NO_DISTRIBUTED:
            problems += [f"{path.relative_to(ROOT)}:{line}: {module} uses torch.distributed"
                         for line in _distributed_attributes(path)]
    return problems


def test_layer_rules():
    """Each import goes down the layers of docs/architecture.md (rule 2); every module is placed."""
    problems = layer_violations(MODULES, EDGES)
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_layer_table_is_acyclic():
    """No two rows of LAYERS may import each other (docs/architecture.md, rule 2)."""
    allows = {a: LAYERS[a] | {a} for a in LAYERS}
    mutual = sorted({tuple(sorted((a, b))) for a in LAYERS for b in LAYERS if a != b
                     and any(_covers(x, b) for x in allows[a]) and any(_covers(x, a) for x in allows[b])})
    assert not mutual, f"rows of LAYERS that allow each other: {mutual}"


def test_the_trainer_and_the_loaders_never_name_the_hf_bridge():
    """A model is made one way: build_model, then a loader of minibridge.loading (docs/architecture.md). The
    trainer and the loaders never import HFBridge or AutoBridge, lazily or not."""
    bridges = {"HFBridge", "AutoBridge"}
    found = [f"{path.relative_to(ROOT)}:{node.lineno}: imports {alias.name}" for module, (path, _) in MODULES.items()
             if module.startswith(("minibridge.training", "minibridge.loading"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
             for alias in node.names if alias.name.rsplit(".", 1)[-1] in bridges]
    assert not found, "\n".join(found)


# ---- privacy -----------------------------------------------------------------------------------
def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_module_owner(module: str) -> str | None:
    """For a module with a `_name` part, the package that owns it (only that package may import it)."""
    parts = module.split(".")
    return next((".".join(parts[:i]) for i, part in enumerate(parts) if _private(part)), None)


def _private_attributes(module: str, path: Path, is_pkg: bool, modules) -> list[str]:
    """`mod._name` where `mod` is bound to another project module by an import statement."""
    tree, bound = ast.parse(path.read_text()), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    bound[alias.asname] = alias.name
                elif not alias.asname and project_module(alias.name, modules):
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, is_pkg, node)
            bound |= {alias.asname or alias.name: f"{base}.{alias.name}" for alias in node.names
                      if f"{base}.{alias.name}" in modules}
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in bound:
            continue
        dotted = bound[value.id] + "." + ".".join(reversed(chain))
        target = project_module(dotted.rpartition(".")[0], modules)
        if target and target != module and dotted == f"{target}.{node.attr}":
            found.add(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}: "
                      f"{module} uses {node.attr} of {target}")
    return sorted(found)


def private_violations(modules, edges) -> list[str]:
    problems = []
    for e in edges:
        if e.target not in modules:
            continue
        owner = _private_module_owner(e.target)
        if owner and not (e.source == owner or e.source.startswith(owner + ".")):
            problems.append(f"{e.where()}: {e.source} imports {e.target}, private to {owner}")
        problems += [f"{e.where()}: {e.source} imports {name} from {e.target}"
                     for name in e.names if _private(name) and e.target != e.source]
    for module, (path, is_pkg) in modules.items():
        problems += _private_attributes(module, path, is_pkg, modules)
    return problems


def test_no_private_cross_module_imports():
    """No `_name` taken from another module; `_module`s stay in their package (docs/architecture.md, rule 3)."""
    problems = private_violations(MODULES, EDGES)
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


# ---- size and docs -----------------------------------------------------------------------------
def test_no_file_too_long():
    """Every source file is at most MAX_LINES lines (docs/architecture.md, rule 4)."""
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p, _ in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines (split them):\n" + "\n".join(long)


def test_rules_are_documented_in_the_repository():
    """Every test here cites docs/architecture.md, which exists and names every row of LAYERS."""
    assert DOC.is_file(), f"{DOC.relative_to(ROOT)} is missing"
    tests = [v for k, v in globals().items() if k.startswith("test_") and callable(v)]
    uncited = [t.__name__ for t in tests if "docs/architecture.md" not in (t.__doc__ or "")]
    assert not uncited, f"tests whose docstring does not cite docs/architecture.md: {uncited}"
    text = DOC.read_text()
    missing = [unit for unit in LAYERS if f"`{unit}`" not in text]
    assert not missing, f"rows of LAYERS not named (in backquotes) in docs/architecture.md: {missing}"


# ---- the graph builder on a package written for the purpose -------------------------------------
def test_graph_builder_on_a_known_package(tmp_path):
    """Relative levels, lazy and TYPE_CHECKING imports, cycles (the checks of docs/architecture.md)."""
    files = {
        "__init__.py": "from .a import f\nVALUE = 1\n",
        "a.py": "from . import VALUE\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import T\n"
                "else:\n    import os\ndef f():\n    from .sub import c\n",
        "b.py": "import pkg.sub.c as cm\nimport torch.distributed as dist\nx = cm._hidden\n",
        "sub/__init__.py": "from .. import a\nfrom .._p import x\n",
        "sub/c.py": "from . import _z\nfrom torch import distributed\nfrom .._p import q\n",
        "_p.py": "",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    modules = find_modules({"pkg": tmp_path / "pkg"})
    edges = all_edges(modules)
    got = {(e.source, e.target, e.line, e.lazy, e.type_only, e.names) for e in edges}
    assert got == {
        ("pkg", "pkg.a", 1, False, False, ("f",)),
        ("pkg.a", "pkg", 1, False, False, ("VALUE",)),            # a name of the parent __init__
        ("pkg.a", "pkg.b", 4, False, True, ("T",)),
        ("pkg.a", "pkg.sub.c", 8, True, False, ()),               # `from .sub import c`: the submodule
        ("pkg.b", "pkg.sub.c", 1, False, False, ()),
        ("pkg.b", DISTRIBUTED, 2, False, False, ()),
        ("pkg.sub", "pkg.a", 1, False, False, ()),                # `..` in an __init__: one level up
        ("pkg.sub", "pkg._p", 2, False, False, ("x",)),
        ("pkg.sub.c", "pkg.sub", 1, False, False, ("_z",)),       # a name of the parent __init__
        ("pkg.sub.c", DISTRIBUTED, 2, False, False, ()),
        ("pkg.sub.c", "pkg._p", 3, False, False, ("q",)),         # `..` in a module: two levels up
    }
    report = cycle_report(modules, edges)      # pkg <-> pkg.a; pkg.a -> pkg.b is type-only, not a cycle
    assert len(report) == 1 and report[0].startswith("cycle among 4 modules: pkg, pkg.a, pkg.sub, pkg.sub.c")
    assert "pkg.a -> pkg.sub.c  at " in report[0] and "(lazy)" in report[0]
    private = private_violations(modules, edges)
    assert len(private) == 2 and "imports _z from pkg.sub" in private[0] and "uses _hidden of pkg.sub.c" in private[1]


def test_reading_path_of_one_step_names_at_most_20_existing_files():
    """docs/architecture.md's "Reading one training step": at most 20 files, each of them real."""
    text = DOC.read_text().split("## Reading one training step", 1)[1].split("\n## ", 1)[0]
    files = [line.split("`")[1] for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert 0 < len(files) <= 20
    assert [f for f in files if not (ROOT / f).is_file()] == []
