"""Training progress: metrics.jsonl, a progress line, TensorBoard / W&B, and a loss-curve PNG.

Only rank 0 writes or prints anything; the other ranks get a logger that checks its arguments and
returns. `<log_dir>/metrics.jsonl` gets one JSON object per `log_step` call (and one per validation),
opened in append mode and flushed line by line, so a killed run keeps what it logged and a resumed run
continues the same file; readers keep the LAST entry of a repeated step (the resumed run's value).
Non-finite numbers are written as `null` so the file stays strict JSON (jq, pandas read it).

`finish()` draws `<log_dir>/loss_curve.png` with matplotlib when it imports, else with the small
dependency-free raster + PNG writer at the bottom of this file, so a PNG always appears.
"""

from __future__ import annotations

import json
import logging as _stdlib_logging
import math
import os
import struct
import sys
import time
import zlib
from collections import deque
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import TrainingDivergedError

_log = _stdlib_logging.getLogger("minibridge.training")
REQUIRED_KEYS = ("loss", "lr", "grad_norm", "tokens_per_sec")


class NonFiniteLossError(TrainingDivergedError):
    """The loss became nan or inf; training cannot recover from this step on its own."""

    def __init__(self, loss: float, step: int, last_checkpoint: str | Path | None = None):
        self.loss, self.step, self.last_checkpoint = loss, step, last_checkpoint
        where = f"The last good checkpoint is kept at {last_checkpoint}." if last_checkpoint else (
            "No checkpoint had been saved yet.")
        super().__init__(
            f"loss is {loss} at step {step}; stopping. {where} "
            "Common causes: a learning rate too high for this batch size, fp16 overflow, or bad data."
        )

    def __reduce__(self):  # pickles with its own arguments (errors cross process boundaries in spawn tests)
        return type(self), (self.loss, self.step, self.last_checkpoint)


def check_finite(loss, step: int, last_checkpoint: str | Path | None = None) -> float:
    """Return `loss` as a float, or raise NonFiniteLossError if it is nan or inf."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(value, step, last_checkpoint)
    return value


def memory_gb(device: torch.device | str | None = None) -> float | None:
    """Peak memory in GB (2**30 bytes, as torch and nvidia-smi count): CUDA allocator peak on a GPU,
    the process's peak resident set size otherwise (None where `resource` is missing, i.e. Windows)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux but in bytes on macOS.
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def _number(value, finite_only: bool = True):
    """Plain Python number (from tensors and numpy scalars too); nan/inf become None if `finite_only`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    try:
        value = value.item() if hasattr(value, "item") else value
        number = float(value)
    except (TypeError, ValueError):
        return value
    if finite_only and not math.isfinite(number):
        return None
    return int(value) if isinstance(value, int) else number


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _fmt_grad_norm(value) -> str:
    if value is None or not math.isfinite(value) or 1e-3 <= abs(value) < 1e3 or value == 0:
        return _fmt(value, ".3f")
    return format(value, ".3e")


def format_progress(step: int, total_iters: int, metrics: dict, eta_seconds: float | None = None) -> str:
    """`step 120/1000 | loss 3.2145 | lr 2.95e-04 | grad norm 0.812 | 12,345 tok/s | MFU 31.2% | ...`

    `mfu` is a fraction (0.312 prints as 31.2%); mfu, mem_gb and the ETA are left out when unknown.
    """
    parts = [
        f"step {step}/{total_iters}",
        f"loss {_fmt(metrics['loss'], '.4f')}",
        f"lr {_fmt(metrics['lr'], '.2e')}",
        f"grad norm {_fmt_grad_norm(metrics['grad_norm'])}",
        f"{_fmt(metrics['tokens_per_sec'], ',.0f')} tok/s",
    ]
    if metrics.get("mfu") is not None:
        parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
    if metrics.get("mem_gb") is not None:
        parts.append(f"mem {metrics['mem_gb']:.1f} GB")
    if eta_seconds is not None:
        parts.append(f"ETA {timedelta(seconds=int(round(eta_seconds)))}")
    return " | ".join(parts)


class TrainingLogger:
    """Metrics sink of one training run. Call `log_step` every step, `finish` at the end (or use `with`)."""

    def __init__(
        self,
        log_dir: str | Path | None,
        *,
        total_iters: int,
        log_interval: int = 1,
        tensorboard_dir: str | Path | None = None,
        wandb_project: str | None = None,
        wandb_exp_name: str | None = None,
        wandb_entity: str | None = None,
        rank: int = 0,
        config_dict: dict | None = None,
        eta_window: int = 20,
    ):
        if log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {log_interval}")
        self.total_iters, self.log_interval, self.rank = int(total_iters), int(log_interval), rank
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._step_times: deque[float] = deque(maxlen=eta_window)  # seconds per step, recent ones
        self._last_call: tuple[float, int] | None = None  # (wall time, step) of the previous log_step
        self._file = self._tb = self._wandb = None
        self._finished = False
        if rank != 0:
            return
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard_dir is not None:
            self._tb = self._open_tensorboard(tensorboard_dir, config_dict)
        if wandb_project is not None:
            self._wandb = self._open_wandb(wandb_project, wandb_exp_name, wandb_entity, config_dict)

    @staticmethod
    def _open_tensorboard(tensorboard_dir, config_dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _log.warning(
                "tensorboard_dir is set but the `tensorboard` package is not installed "
                "(pip install tensorboard); continuing without TensorBoard logging."
            )
            return None
        writer = SummaryWriter(log_dir=str(tensorboard_dir))
        if config_dict:
            writer.add_text("config", "```\n" + json.dumps(config_dict, indent=2, default=str) + "\n```")
        return writer

    @staticmethod
    def _open_wandb(project, exp_name, entity, config_dict):
        try:
            import wandb
        except ImportError:
            _log.warning(
                "wandb_project is set but the `wandb` package is not installed (pip install wandb); "
                "continuing without W&B logging."
            )
            return None
        if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
            _log.warning(
                "wandb_project is set but WANDB_API_KEY is not in the environment (export it, or set "
                "WANDB_MODE=offline); continuing without W&B logging."
            )
            return None
        try:
            return wandb.init(project=project, name=exp_name, entity=entity, config=config_dict)
        except Exception as exc:  # a W&B outage should not stop a training run
            _log.warning(f"wandb.init failed ({exc}); continuing without W&B logging.")
            return None

    def _write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()

    def _observe_step_time(self, step: int, step_time) -> None:
        now = time.perf_counter()
        if isinstance(step_time, (int, float)) and math.isfinite(step_time):
            self._step_times.append(float(step_time))
        elif self._last_call is not None and step > self._last_call[1]:
            self._step_times.append((now - self._last_call[0]) / (step - self._last_call[1]))
        self._last_call = (now, step)

    def eta_seconds(self, step: int) -> float | None:
        """Remaining steps times the mean of the recent step times (None before the first one)."""
        if not self._step_times:
            return None
        return max(self.total_iters - step, 0) * sum(self._step_times) / len(self._step_times)

    def log_step(self, step: int, metrics: dict) -> None:
        missing = [key for key in REQUIRED_KEYS if key not in metrics]
        if missing:
            raise ValueError(f"log_step metrics lack {missing}; expected at least {list(REQUIRED_KEYS)}")
        if self.rank != 0:
            return
        clean = {key: _number(value) for key, value in metrics.items()}
        self._observe_step_time(step, clean.get("step_time"))
        self._write({"step": int(step), **clean})
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in clean.items() if v is not None}, step=step)
        if step % self.log_interval == 0 or step == self.total_iters:
            shown = {key: _number(value, finite_only=False) for key, value in metrics.items()}  # nan prints as nan
            print(format_progress(step, self.total_iters, shown, self.eta_seconds(step)), flush=True)

    def log_validation(self, step: int, loss) -> None:
        if self.rank != 0:
            return
        shown = _number(loss, finite_only=False)
        ppl = math.exp(shown) if not shown >= 50 else float("inf")  # nan stays nan
        print(f"validation at step {step} | val loss {shown:.4f} | val ppl {ppl:.2f}", flush=True)
        loss = _number(loss)
        self._write({"step": int(step), "val_loss": loss})
        if self._tb is not None and loss is not None:
            self._tb.add_scalar("val/loss", loss, step)
        if self._wandb is not None and loss is not None:
            self._wandb.log({"val/loss": loss}, step=step)

    def finish(self) -> Path | None:
        """Close every sink and draw `<log_dir>/loss_curve.png`; returns its path (None off rank 0)."""
        if self._finished or self.rank != 0:
            return None
        self._finished = True
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self.log_dir is None:
            return None
        return plot_loss_curve(self.log_dir / "metrics.jsonl", self.log_dir / "loss_curve.png")

    def __enter__(self) -> "TrainingLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


def read_loss_history(metrics_path: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, validation) lists of (step, loss) from metrics.jsonl, sorted by step.

    A repeated step keeps its last value (a resumed run redoes steps after its checkpoint); a torn
    last line (a run killed mid-write) and null losses are skipped.
    """
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    path = Path(metrics_path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
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
    fig.savefig(png_path)


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
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # never leave a half-written PNG behind


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
