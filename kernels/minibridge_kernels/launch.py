"""What a launch may ask of a GPU, and which GPU the host code chooses its launches for.

- `SHARED_MEMORY_LIMIT`: the shared memory one block may use on each compute capability (the opt-in
  maximum of CUDA's occupancy tables, `cudaDevAttrMaxSharedMemoryPerBlockOptin`): A100 163 KB, H100 and
  B200 227 KB, the consumer parts (sm_86, sm_89, sm_120) 99 KB. The attention block sizes are chosen
  to fit it (`attention_triton_shared.block_sizes`), and the AOT check (`benchmarks/kernels_aot.py`)
  fails a kernel that does not.
- `MAX_GRID`: CUDA's grid limits, x up to 2^31 - 1 programs, y and z up to 65,535. Every launch of
  this package puts its large counts (batch x heads x blocks, rows) on x.
- `target_arch(device)`: the capability launches are chosen for, e.g. 80 for sm_80. A CUDA device
  answers for itself; on any other device it is None, except inside `compile_target(arch)`, where the
  host functions called on `meta` tensors choose for that GPU (how the AOT check sees, without a
  GPU, exactly the launches a real one would get).
- `record_launches()`: collects every kernel launch made inside it instead of running it.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ._triton import HAS_TRITON

SHARED_MEMORY_LIMIT = {80: 166_912, 86: 101_376, 87: 166_912, 89: 101_376, 90: 232_448, 100: 232_448,
                       103: 232_448, 120: 101_376}
MAX_GRID = (2**31 - 1, 65_535, 65_535)

_COMPILE_TARGET: contextvars.ContextVar[int | None] = contextvars.ContextVar("minibridge_compile_target",
                                                                           default=None)


def target_arch(device: torch.device) -> int | None:
    """Compute capability as major * 10 + minor (80, 90, 100) that launches on `device` are chosen for."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major * 10 + minor
    return _COMPILE_TARGET.get()


def shared_memory_limit(arch: int | None) -> int:
    """Bytes of shared memory one block may use on `arch`; unknown parts get the smallest (99 KB)."""
    return SHARED_MEMORY_LIMIT.get(arch, min(SHARED_MEMORY_LIMIT.values()))


@contextlib.contextmanager
def compile_target(arch: int) -> Iterator[None]:
    """Host functions called inside choose their launches for compute capability `arch`."""
    token = _COMPILE_TARGET.set(arch)
    try:
        yield
    finally:
        _COMPILE_TARGET.reset(token)


def check_grid(grid: tuple[int, ...], kernel: str) -> None:
    """Raise when a grid passes CUDA's limits (a launch would fail with an opaque driver error)."""
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID)):
        if size > limit:
            raise ValueError(f"{kernel}: grid {tuple(grid)} exceeds CUDA's limit {limit} on axis {axis}")


@dataclass
class Launch:
    """One recorded launch: the kernel, its grid, its arguments as the host code passed them."""

    kernel: Any  # the triton JITFunction (or InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Every `kernel[grid](...)` inside appends a `Launch` to the yielded list and runs nothing, so the
    host functions may be called on `meta` tensors of real shapes (no memory, no device)."""
    if not HAS_TRITON:
        raise RuntimeError("record_launches needs Triton")
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []

    def run(self, *args, grid, warmup, **kwargs):
        grid = tuple(grid(kwargs) if callable(grid) else grid)
        launches.append(Launch(self, grid, args, kwargs))

    saved = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}
    try:
        for cls in saved:
            cls.run = run
        yield launches
    finally:
        for cls, original in saved.items():
            cls.run = original


__all__ = ["MAX_GRID", "SHARED_MEMORY_LIMIT", "Launch", "check_grid", "compile_target", "record_launches",
           "shared_memory_limit", "target_arch"]
