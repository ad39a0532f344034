"""The import direction of DESIGN.md: kernels <- models <- (parallel, bridge, peft) <- training <- entry points."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package folder -> (its dotted name, packages it must not import)
RULES = {
    ROOT / "kernels": ("minibridge.kernels", {"minibridge.models", "minibridge.bridge", "minibridge.parallel", "minibridge.training", "minibridge.peft", "torch.distributed"}),
    ROOT / "minibridge" / "models": ("minibridge.models", {"minibridge.bridge", "minibridge.parallel", "minibridge.training", "minibridge.peft", "torch.distributed"}),
    ROOT / "minibridge" / "bridge": ("minibridge.bridge", {"minibridge.training"}),
    ROOT / "minibridge" / "peft": ("minibridge.peft", {"minibridge.training"}),
}


def _imports(path: Path, package: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
    return found


@pytest.mark.parametrize("folder", list(RULES), ids=lambda p: p.name)
def test_import_direction(folder):
    package, forbidden = RULES[folder]
    for path in folder.rglob("*.py"):
        for name in _imports(path, package):
            bad = [f for f in forbidden if name == f or name.startswith(f + ".")]
            assert not bad, f"{path.relative_to(ROOT)} imports {name}, against the layering of DESIGN.md"


def test_no_file_too_long():
    for path in list((ROOT / "minibridge").rglob("*.py")) + list((ROOT / "kernels").rglob("*.py")):
        assert len(path.read_text().splitlines()) <= 500, f"{path} is over 500 lines: split it"
