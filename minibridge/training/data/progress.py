"""Progress lines of long data passes (tokenizing a dataset, preprocessing a corpus): counts, rates and ETA.

    processed 12000 documents, 3.1/25.0 MB (12%), 4100 docs/s, 1.05 MB/s, 310512 tokens/s, elapsed 0:00:03, ETA 0:00:21
"""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Rate and ETA from `done` against `total` (bytes, or documents when bytes=False), printed to stderr
    every `interval` seconds (and once more with force=True), each line starting with `label`."""

    def __init__(self, total: int, interval: float, label: str = "processed", bytes: bool = True):
        self.total, self.interval, self.label, self.in_bytes = total, interval, label, bytes
        self.start = self.last = time.monotonic()
        self.docs = self.bytes = self.tokens = 0

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.start, 1e-9)

    def update(self, docs: int, nbytes: int, tokens: int, force: bool = False) -> None:
        self.docs, self.bytes, self.tokens = self.docs + docs, self.bytes + nbytes, self.tokens + tokens
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        elapsed = self.elapsed
        done = self.bytes if self.in_bytes else self.docs
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else 0.0
        size = (f"{self.bytes / 2**20:.1f}/{self.total / 2**20:.1f} MB" if self.in_bytes else
                f"of {self.total}")
        speed = f", {rate / 2**20:.2f} MB/s" if self.in_bytes else ""
        print(f"{self.label} {self.docs} documents, {size} ({100 * done / max(self.total, 1):.0f}%), "
              f"{self.docs / elapsed:.0f} docs/s{speed}, {self.tokens / elapsed:.0f} tokens/s, "
              f"elapsed {duration(elapsed)}, ETA {duration(eta)}", file=sys.stderr, flush=True)
