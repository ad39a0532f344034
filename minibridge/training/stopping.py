"""Planned and preempted stops, with Megatron Bridge's names: train.exit_signal_handler, train.exit_interval,
train.exit_duration_in_mins.

A cluster ends a job with a signal: SLURM's preemption and `scancel` send SIGTERM, `--signal=B:USR1@120`
sends SIGUSR1 two minutes before the time limit, Ctrl-C sends SIGINT; torchrun forwards SIGTERM, SIGINT,
SIGHUP and SIGQUIT to its workers and SIGKILLs them 30 s later. With the handler on (the default here;
Megatron Bridge's default is off), such a signal only sets a flag: the step in flight finishes, every rank
agrees on the stop (one all-reduce of a small integer per step, so a rank that got the signal first never
leaves the others waiting in a collective), the trainer saves a checkpoint and exits 0 with a line saying
where. Rerunning the same command resumes exactly there. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import time

from ..parallel.dims import max_over_ranks

HANDLED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
# Why a run stops early, by priority (the all-reduce keeps the largest any rank saw).
REASONS = {1: "train.exit_interval", 2: "train.exit_duration_in_mins", 3: "a signal"}


class StopWatch:
    """Decides, once per step and alike on every rank, whether the run stops there (see the module doc)."""

    def __init__(self, train, install: bool = True):
        self.interval, self.minutes = train.exit_interval, train.exit_duration_in_mins
        self.start = time.monotonic()
        self.received: str | None = None
        self._previous = {}
        if install and train.exit_signal_handler:
            for sig in HANDLED:
                try:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
                except ValueError:  # not the main thread: signals cannot be handled here
                    break

    def _on_signal(self, number, _frame) -> None:
        self.received = signal.Signals(number).name
        if number == signal.SIGINT:  # a second Ctrl-C is not delayed
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def reason(self, step: int) -> str | None:
        """Why the run stops after `step` (None: it goes on). Every rank calls it after every step."""
        code = 0
        if self.interval and step % self.interval == 0:
            code = 1
        if self.minutes is not None and time.monotonic() - self.start >= 60 * self.minutes:
            code = 2
        if self.received is not None:
            code = 3
        code = max_over_ranks(code)
        if code == 3:
            return self.received or "a signal on another rank"
        return REASONS.get(code)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
