"""Process memory settings for training on CPU: fewer page faults per step, without a larger peak.

glibc's malloc serves every allocation above its mmap threshold (128 KB, adaptive up to 32 MB) with a
fresh mmap and unmaps it on free, so each training step faults its large temporaries (MLP activations,
norm and attention temporaries, optimizer temporaries) back in, 4 KB page by page, each page zeroed by
the kernel. Measured here, allocating, touching and freeing a 268 MB tensor twenty times: 2.5 s and
1.3 M minor faults as it is; 0.7 s and 13 k faults with transparent huge pages; 0.4 s when freed
memory stays in the heap. `keep_freed_memory()` does both, within limits:

- blocks up to KEEP_BYTES come from the heap and stay there (mallopt M_MMAP_THRESHOLD, and no trimming).
  A larger limit is faster still but fragments: Gemma 3 1B (6 layers) at 8192 tokens with full
  recomputation peaked at 12.1 GB with 1 GB kept vs 10.4 GB as glibc does it, and 11.4 GB with 64 MB;
- torch's own CPU allocator asks for 2 MB huge pages (THP_MEM_ALLOC_ENABLE=1, read by c10 at the first
  tensor allocation, so this must run before any tensor exists; the command lines call it first).

A preloaded allocator (jemalloc, tcmalloc, mimalloc via LD_PRELOAD) is left alone, an explicit
THP_MEM_ALLOC_ENABLE is kept, `MINIBRIDGE_MALLOC=system` turns all of this off and
`MINIBRIDGE_MALLOC_KEEP_BYTES` sets the heap limit.

A process that keeps glibc's defaults (a researcher's script) has the opposite problem at one moment:
the activations a backward frees stay in malloc's heap (blocks under the adaptive mmap threshold, and
fragments glibc never returns), and the optimizer step that follows allocates its temporaries on top.
`release_freed_memory()` (malloc_trim) hands those pages back; the model calls it at the end of its
backward on CPU (minibridge.models.common). Measured on the research step of Llama-3.2-1B with 4 layers
at 2048 tokens, bf16 and torch.optim.AdamW, whose step holds the peak: 5.43 -> 4.81 GB of peak RSS
(transformers: 7.48; benchmarks/bench_train_step.py --modes research --cases llama-2048 --dtype bf16).
The next forward faults those pages (~0.6 GB) back in; that run's step stayed level with transformers'
(54.3 s vs 54.8 s). It does nothing after
`keep_freed_memory()`, whose point is to keep them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 64 * 2**20  # allocations up to 64 MB come from the heap
TRIM_BYTES = 2**31 - 1  # the heap is never trimmed below 2 GB of free top


_state = {"keeping": False, "libc": None}


def _glibc():
    """glibc's handle, or None (another libc, or a preloaded allocator that owns malloc)."""
    if _state["libc"] is None:
        preloaded = any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc"))
        libc = False
        if sys.platform.startswith("linux") and not preloaded:
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt, libc.malloc_trim  # glibc's; musl has neither
            except (OSError, AttributeError):
                libc = False
        _state["libc"] = libc
    return _state["libc"] or None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the OS (glibc malloc_trim(0)); False where nothing was done:
    not glibc, a preloaded allocator, MINIBRIDGE_MALLOC=system, or after keep_freed_memory()."""
    libc = _glibc()
    if libc is None or _state["keeping"] or os.environ.get("MINIBRIDGE_MALLOC", "") == "system":
        return False
    libc.malloc_trim(0)
    return True


def keep_freed_memory() -> bool:
    """Tune malloc and torch's allocator as described above; returns whether malloc was tuned (False
    off glibc, under a preloaded allocator, or when disabled)."""
    libc = _glibc()
    if os.environ.get("MINIBRIDGE_MALLOC", "") == "system" or libc is None:
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    keep = int(os.environ.get("MINIBRIDGE_MALLOC_KEEP_BYTES", KEEP_BYTES))
    _state["keeping"] = bool(libc.mallopt(M_MMAP_THRESHOLD, keep)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    return _state["keeping"]
