"""metrics.jsonl read back (each step once) and drawn as loss_curve.png.

`plot_loss_curve` uses matplotlib when it imports, else the small dependency-free raster + PNG writer
below, so a PNG always appears.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import zlib
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


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, *, use_matplotlib: bool | None = None) -> Path:
    """Training loss vs step (validation losses as points) into `png_path`.

    `use_matplotlib`: None tries matplotlib and falls back to the built-in writer; False forces the latter.
    """
    train, val = read_loss_history(metrics_path)
    png_path = Path(png_path)
    if use_matplotlib is not False:
        try:
            _plot_matplotlib(train, val, png_path)
            return png_path
        except Exception as exc:  # not installed, or no usable backend / font cache
            if use_matplotlib:
                raise
            if not isinstance(exc, ImportError):
                _log.warning(f"matplotlib failed ({exc}); drawing loss_curve.png with the built-in writer.")
    _plot_builtin(train, val, png_path)
    return png_path


def _plot_matplotlib(train, val, png_path: Path) -> None:
    # The object API, not pyplot: no global backend switch inside the user's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


# ---------------------------------------------------------------- dependency-free PNG fallback

def write_png(path: str | Path, width: int, height: int, rgb: bytes | bytearray) -> None:
    """8-bit RGB PNG: signature, IHDR, one zlib IDAT (each row prefixed by filter type 0), IEND."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"expected {width * height * 3} RGB bytes for {width}x{height}, got {len(rgb)}")

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    stride = width * 3
    raw = b"".join(b"\x00" + bytes(rgb[y * stride : (y + 1) * stride]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # bit depth 8, colour type 2 (RGB)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    write_atomic(path, data)  # never leave a half-written PNG (nor its temporary file) behind


# 3x5 pixel glyphs: five octal digits, one per row, bit 4 = left column, 1 = right column.
_FONT = {
    "0": "75557", "1": "26227", "2": "71747", "3": "71317", "4": "55711", "5": "74717", "6": "74757",
    "7": "71111", "8": "75757", "9": "75717", ".": "00002", "-": "00700", "+": "02720", "e": "03743",
    "a": "03553", "i": "20222", "l": "44443", "n": "06555", "o": "07557", "p": "06564", "r": "05644",
    "s": "03416", "t": "27223", "v": "05552", " ": "00000",
}
_BLACK, _GREY, _BLUE, _ORANGE = (0, 0, 0), (225, 225, 225), (31, 119, 180), (255, 127, 14)


class _Canvas:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.dot(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color, width: int = 1) -> None:
        """Bresenham's line, thickened downwards/rightwards by `width - 1` pixels."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.rect(x0, y0, x0 + width - 1, y0 + width - 1, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def text(self, x: int, y: int, label: str, color=_BLACK, scale: int = 2) -> None:
        for k, char in enumerate(label):
            rows = _FONT.get(char, "00000")
            for r, bits in enumerate(rows):
                for c in range(3):
                    if int(bits) & (4 >> c):
                        left, top = x + (4 * k + c) * scale, y + r * scale
                        self.rect(left, top, left + scale - 1, top + scale - 1, color)


def _ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], float]:
    """Round ticks in [lo, hi] (1, 2 or 5 times a power of ten apart, about `target` of them) and their spacing."""
    raw = (hi - lo) / target
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda s: abs((hi - lo) / s - target))
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)], step


def _tick_label(value: float, step: float) -> str:
    value += 0.0  # turns -0.0 into 0.0, so no "-0" label
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return format(value, ".0e").replace("e+0", "e").replace("e-0", "e-")
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        pad = max(abs(hi) * 0.1, 0.5)
        return lo - pad, hi + pad
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _plot_builtin(train, val, png_path: Path, width: int = 800, height: int = 500) -> None:
    canvas = _Canvas(width, height)
    left, right, top, bottom = 80, width - 20, 30, height - 50  # plot area in pixels
    points = train + val
    x_lo, x_hi = _span([float(s) for s, _ in points]) if points else (0.0, 1.0)
    y_lo, y_hi = _span([v for _, v in points]) if points else (0.0, 1.0)

    def px(step: float) -> int:
        return round(left + (step - x_lo) / (x_hi - x_lo) * (right - left))

    def py(loss: float) -> int:
        return round(bottom - (loss - y_lo) / (y_hi - y_lo) * (bottom - top))

    xticks, xstep = _ticks(x_lo, x_hi)
    yticks, ystep = _ticks(y_lo, y_hi)
    for value in xticks:  # grid, tick marks, labels
        canvas.line(px(value), top, px(value), bottom, _GREY)
        canvas.line(px(value), bottom, px(value), bottom + 5, _BLACK)
        label = _tick_label(value, xstep)
        canvas.text(px(value) - 4 * len(label), bottom + 10, label)
    for value in yticks:
        canvas.line(left, py(value), right, py(value), _GREY)
        canvas.line(left - 5, py(value), left, py(value), _BLACK)
        label = _tick_label(value, ystep)
        canvas.text(left - 10 - 8 * len(label), py(value) - 5, label)
    canvas.line(left, top, left, bottom, _BLACK)
    canvas.line(left, bottom, right, bottom, _BLACK)
    canvas.text(right - 8 * 4, height - 18, "step")
    canvas.text(8, 8, "loss")

    # Many more steps than pixel columns: draw per column the vertical extent of its points and join
    # neighbouring columns, which is what a polyline looks like at this resolution, in O(points).
    columns: dict[int, list[int]] = {}  # x -> [first y, last y, min y, max y]
    for step, loss in train:
        x, y = px(step), py(loss)
        col = columns.setdefault(x, [y, y, y, y])
        col[1], col[2], col[3] = y, min(col[2], y), max(col[3], y)
    previous = None
    for x in sorted(columns):
        first, last, lo, hi = columns[x]
        if previous is not None:
            canvas.line(previous[0], previous[1], x, first, _BLUE, width=2)
        canvas.line(x, lo, x, hi, _BLUE, width=2)
        previous = (x, last)
    for step, loss in val:
        canvas.rect(px(step) - 3, py(loss) - 3, px(step) + 3, py(loss) + 3, _ORANGE)

    canvas.line(right - 150, top + 12, right - 130, top + 12, _BLUE, width=2)  # legend
    canvas.text(right - 122, top + 7, "train")
    if val:
        canvas.rect(right - 143, top + 27, right - 137, top + 33, _ORANGE)
        canvas.text(right - 122, top + 25, "val")
    write_png(png_path, width, height, canvas.pixels)
