"""Size of the configuration code (issue 32): non-blank, non-comment lines of config, CLI and recipes, per file
and in total, and every line over 120 characters (an error). Docstrings count; `#` comment lines do not.

    python tests/config_goldens/count_config_lines.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_WIDTH = 120
FILES = [
    "minibridge/train.py", "minibridge/training/config.py", "minibridge/training/overrides.py",
    "minibridge/training/hydra_grammar.py", "minibridge/training/command_line.py",
    "minibridge/training/optimizer_config.py", "minibridge/training/validation.py",
]
FOLDERS = ["recipes"]


def files() -> list[Path]:
    found = [ROOT / name for name in FILES if (ROOT / name).is_file()]
    for folder in FOLDERS:
        found += sorted((ROOT / folder).rglob("*.py"))
    return found


def counted(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#"))


def too_wide(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{number}: {len(line)} characters"
            for number, line in enumerate(path.read_text().splitlines(), 1) if len(line) > MAX_WIDTH]


def main() -> int:
    total, wide = 0, []
    for path in files():
        count = counted(path)
        total += count
        wide += too_wide(path)
        print(f"{count:6d}  {path.relative_to(ROOT)}")
    print(f"{total:6d}  total (non-blank, non-comment lines)")
    print("\n".join(wide))
    return 1 if wide else 0


if __name__ == "__main__":
    sys.exit(main())
