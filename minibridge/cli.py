"""What every command line shares: a bad input ends the run with one line on stderr and exit code 2.

    sys.exit(run_main("minibridge.train", main))

A `MinibridgeError` (a bad file, key, value or layout; its message names them) and an `OSError` (a
missing file, a full disk, a permission: the path is named) print as `prog: message` and exit with 2,
on every rank (prefixed with the rank under torchrun, since ranks can fail for different reasons).
Every command also keeps freed memory for reuse (minibridge.memory: no page faults per step).
Anything else is a bug and keeps its traceback. `MINIBRIDGE_TRACEBACK=1` shows the traceback of
every error, bad inputs included.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import MinibridgeError
from .memory import keep_freed_memory

TRACEBACK_ENV = "MINIBRIDGE_TRACEBACK"
BAD_INPUT_EXIT = 2


def describe_os_error(err: OSError) -> str:
    """`path: reason` (both paths for a rename), else the error's own text."""
    reason = err.strerror or str(err)
    if err.filename is None:
        return str(err) if str(err) else reason
    paths = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 is not None else "")
    return f"{paths}: {reason}"


def message_of(err: BaseException) -> str:
    text = describe_os_error(err) if isinstance(err, OSError) else str(err)
    return text or type(err).__name__


def run_main(prog: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; bad inputs become one line on stderr and exit code 2. Large freed blocks stay
    in the heap for reuse (minibridge.memory), as a long-running tool wants."""
    keep_freed_memory()
    try:
        return main(argv) or 0
    except (MinibridgeError, OSError) as err:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        rank = os.environ.get("RANK")
        where = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
        print(f"{where}{prog}: error: {message_of(err)}", file=sys.stderr, flush=True)
        return BAD_INPUT_EXIT
