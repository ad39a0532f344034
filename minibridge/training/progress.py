"""Training progress: metrics.jsonl, a progress line, TensorBoard / W&B, and a loss-curve PNG.

Only rank 0 writes or prints anything; the other ranks get a logger that checks its arguments and
returns. `<log_dir>/metrics.jsonl` gets one JSON object per `log_step` call (and one per validation),
opened in append mode and flushed line by line, so a killed run keeps what it logged and a resumed run
continues the same file. A run starting at step S (`start_step`: its checkpoint) first drops the
records of steps after S, which it is about to redo, so every step appears once; readers still keep
the LAST entry of a repeated step. TensorBoard goes to `<log_dir>/tb_logs` when the package is
installed (`tensorboard_dir="auto"`, the default), or to a folder given explicitly.
Non-finite numbers are written as `null` so the file stays strict JSON (jq, pandas read it).

`finish()` draws `<log_dir>/loss_curve.png` with matplotlib when it is installed (`loss_curve.py`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import deque
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import TrainingDivergedError
from ..files import naming_failures
from .loss_curve import METRICS_NAME, plot_loss_curve, read_loss_history, supersede_after

__all__ = ["NonFiniteLossError", "TrainingLogger", "check_finite", "format_progress", "memory_gb", "perplexity",
           "plot_loss_curve", "read_loss_history"]

_log = logging.getLogger("minibridge.training")
REQUIRED_KEYS = ("loss", "lr", "grad_norm", "tokens_per_sec")


class NonFiniteLossError(TrainingDivergedError):
    """The loss (or the gradient norm) became nan or inf; training cannot recover from this step on its own."""

    def __init__(self, loss: float, step: int, last_checkpoint: str | Path | None = None, what: str = "loss",
                 hint: str = ""):
        self.loss, self.step, self.last_checkpoint, self.what, self.hint = loss, step, last_checkpoint, what, hint
        where = f"The last good checkpoint is kept at {last_checkpoint}." if last_checkpoint else (
            "No checkpoint had been saved yet.")
        super().__init__(
            f"{what} is {loss} at step {step}; stopping. {where} "
            "Common causes: a learning rate too high for this batch size, fp16 overflow, or bad data."
            + (f" ({hint})" if hint else "")
        )

    def __reduce__(self):  # pickles with its own arguments (errors cross process boundaries in spawn tests)
        return type(self), (self.loss, self.step, self.last_checkpoint, self.what, self.hint)


def check_finite(loss, step: int, last_checkpoint: str | Path | None = None) -> float:
    """Return `loss` as a float, or raise NonFiniteLossError if it is nan or inf."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(value, step, last_checkpoint)
    return value


def perplexity(loss: float) -> float:
    """exp(mean NLL in nats); inf where exp overflows a float (loss > ~709.78), nan stays nan."""
    loss = float(loss)
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


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
        start_step: int | None = None,
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
            if start_step is not None:  # a run (re)starting at start_step: it alone writes later steps
                supersede_after(self.log_dir / METRICS_NAME, start_step)
            self._file = open(self.log_dir / METRICS_NAME, "a", encoding="utf-8")
        if tensorboard_dir == "auto":
            if self.log_dir is not None and _tensorboard_installed():
                self._tb = self._open_tensorboard(self.log_dir / "tb_logs", config_dict)
        elif tensorboard_dir is not None:
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
            with naming_failures(self.log_dir / METRICS_NAME):  # a full disk: ENOSPC names no file
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
        ppl = perplexity(shown)
        print(f"validation at step {step} | val loss {shown:.4f} | val ppl {ppl:.2f}", flush=True)
        loss, ppl = _number(loss), _number(ppl)  # non-finite values are written as null
        self._write({"step": int(step), "val_loss": loss, "val_ppl": ppl})
        values = {key: value for key, value in (("loss", loss), ("ppl", ppl)) if value is not None}
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"val/{key}", value, step)
        if self._wandb is not None and values:
            self._wandb.log({f"val/{key}": value for key, value in values.items()}, step=step)

    def finish(self) -> Path | None:
        """Close every sink and draw `<log_dir>/loss_curve.png`; returns its path (None off rank 0 or without
        matplotlib)."""
        if self._finished or self.rank != 0:
            return None
        self._finished = True
        if self._file is not None:
            with naming_failures(self.log_dir / METRICS_NAME):
                self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self.log_dir is None:
            return None
        return plot_loss_curve(self.log_dir / METRICS_NAME, self.log_dir / "loss_curve.png")

    def __enter__(self) -> "TrainingLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None
