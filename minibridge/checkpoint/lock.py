"""One run per checkpoint folder: an exclusive lock on `<checkpoint.save>/.minibridge.lock`.

Two runs saving into one folder would delete each other's temporary saves and interleave their
checkpoints. The first run takes an advisory `flock` on the lock file and holds it until it ends; a
second run finds it taken and stops with the holder's host, pid and start time (written in the file).
The kernel drops a flock when its process dies, however it dies, so a lock left by a killed run is
simply taken over. On filesystems without flock (some network filesystems) the file's pid is checked
instead: a dead pid on this host is taken over, anything else is refused with the path to remove.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from ..errors import RunLockedError
from ..files import process_alive

LOCK_NAME = ".minibridge.lock"


def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


class RunLock:
    """Held from `acquire()` to `release()` (or the end of the process)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self._file = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            if not self._flock(handle):
                handle.seek(0)
                holder = _read_holder(handle.read())
                raise RunLockedError(
                    f"{self.path.parent} is in use by another training run ({_describe(holder)}): two runs on one "
                    f"checkpoint.save folder would corrupt each other's checkpoints; wait for it, stop it, or set "
                    f"another checkpoint.save")
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(this_process()) + "\n")
            handle.flush()
        except BaseException:
            handle.close()
            raise
        self._file = handle
        return self

    def _flock(self, handle) -> bool:
        import fcntl

        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:  # no flock on this filesystem: judge by the recorded pid
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            handle.seek(0)
            holder = _read_holder(handle.read())
            mine = holder.get("host") == socket.gethostname()
            pid = holder.get("pid")
            return not holder or (mine and not (isinstance(pid, int) and process_alive(pid)))

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock; the file stays, naming the last holder
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(text: str) -> dict:
    try:
        holder = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}
