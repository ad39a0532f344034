"""Shared by the benchmark scripts: print a markdown report and keep it under benchmarks/results/."""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(name: str, lines: list[str]) -> Path:
    """Print `lines` and write them to results/<name>-cpu.md (results are named by device)."""
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-cpu.md"
    path.write_text(report)
    return path
