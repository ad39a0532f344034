"""metrics.jsonl read back (each step once) and drawn as loss_curve.png.

`plot_loss_curve` draws with matplotlib (the `matplotlib` extra, which `make install` and the demo take);
without it there is no picture, a one-line hint, and metrics.jsonl and TensorBoard hold the same numbers.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..files import temporary_sibling, write_atomic

_log = logging.getLogger("minibridge.training")
METRICS_NAME = "metrics.jsonl"


def _records(path: Path) -> list[tuple[str, dict | None]]:
    """(line, parsed object or None) of each line of a metrics file."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        out.append((line, record if isinstance(record, dict) else None))
    return out


def supersede_after(metrics_path: str | Path, step: int) -> None:
    """Drop the records of steps after `step` (a resumed run redoes them from its checkpoint at `step`;
    a fresh run, step 0, supersedes every record of a run that left no checkpoint), and torn lines,
    so readers see each step once. Rewritten under a temporary name, then renamed."""
    path = Path(metrics_path)
    if not path.exists():
        return
    records = _records(path)
    kept = [line for line, r in records if r is not None and isinstance(r.get("step"), int) and r["step"] <= step]
    if len(kept) != len(records):
        write_atomic(path, "".join(line + "\n" for line in kept))


def read_loss_history(metrics_path: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, validation) lists of (step, loss) from metrics.jsonl, sorted by step.

    A repeated step keeps its last value (a resumed run redoes steps after its checkpoint); a torn
    last line (a run killed mid-write) and null losses are skipped.
    """
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for _, record in _records(Path(metrics_path)):
        if record is None or not isinstance(record.get("step"), int):
            continue
        for key, target in (("loss", train), ("val_loss", val)):
            if isinstance(record.get(key), (int, float)):
                target[record["step"]] = float(record[key])
    return sorted(train.items()), sorted(val.items())


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Training loss vs step (validation losses as points) into `png_path`; None, with a one-line hint in the
    log, when matplotlib is not installed."""
    try:  # the object API, not pyplot: no global backend switch inside the user's process
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        _log.warning("no loss_curve.png: matplotlib is not installed (pip install 'minibridge[matplotlib]'); "
                  "metrics.jsonl holds the losses")
        return None
    train, val = read_loss_history(metrics_path)
    png_path = Path(png_path)
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    tmp = temporary_sibling(png_path)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, png_path)
    finally:
        tmp.unlink(missing_ok=True)
    return png_path
