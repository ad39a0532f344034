"""Writing files and folders so that nothing is ever left half-written under its final name.

Every output (an export, an imported checkpoint, a training save, a small JSON file) is written under
a temporary sibling name and renamed into place when complete. Temporary names carry the writer's
host and pid, `.NAME.tmp-HOST-PID`, so that two writers never share one, and so that the leftovers
of a killed writer can be told from the work of a live one: `clean_stale_temporaries` removes those
whose process is gone (on this host; another host's are left alone).

This module imports nothing from minibridge but its errors: every package may use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator

TEMP_KINDS = ("tmp", "old")


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def temporary_sibling(final: str | Path, kind: str = "tmp") -> Path:
    """`.NAME.KIND-HOST-PID` next to `final`: this process's private name for it."""
    final = Path(final)
    return final.parent / f".{final.name}.{kind}-{_host()}-{os.getpid()}"


def clean_stale_temporaries(final: str | Path) -> list[Path]:
    """Remove the temporary siblings of `final` left by dead processes of this host; returns them.
    Also removes the host-less `.NAME.tmp-PID` names older minibridge versions wrote."""
    final = Path(final)
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(?:{'|'.join(TEMP_KINDS)})-(?:(?P<host>.+)-)?(?P<pid>\d+)")
    removed = []
    if not final.parent.is_dir():
        return removed
    for path in final.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None or match["host"] not in (None, _host()) or process_alive(int(match["pid"])):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink()
        removed.append(path)
    return removed


@contextlib.contextmanager
def naming_failures(path: Path):
    """An OSError without a file name (a full disk: `write` reports ENOSPC bare) gets `path`."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise type(err)(err.errno, f"{err.strerror} (while writing)", str(path)) from err


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write a file (text, or bytes) under a temporary name, fsync it, rename it into place. On any failure
    (a full disk names `path`) the temporary file is removed."""
    path = Path(path)
    data = text.encode("utf-8") if isinstance(text, str) else text
    tmp = temporary_sibling(path)
    try:
        with naming_failures(path), open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename the complete folder `tmp` onto `final`, moving an old `final` aside only at the end."""
    old = None
    if final.exists() or final.is_symlink():
        old = temporary_sibling(final, "old")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def is_busy(folder: Path) -> bool:
    """Whether `folder` is something a write would replace: a file, or a folder with content."""
    return folder.is_symlink() or (folder.exists() and (not folder.is_dir() or any(folder.iterdir())))


def busy_message(folder: Path) -> str | None:
    """Why a write may not replace `folder` without overwrite (None when it may)."""
    if not is_busy(folder):
        return None
    return f"{folder} exists and is not empty; pass overwrite=True (--overwrite on the command line) to replace it"


@contextlib.contextmanager
def atomic_folder(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `final` when the block completes, and vanishes if it fails.

    A non-empty `final` is refused unless `overwrite`; then it is replaced only after the new folder
    is complete. Temporary folders that killed writers left next to `final` are removed first.
    """
    final = Path(final)
    if busy_message(final) and not overwrite:
        raise FileExistsError(busy_message(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final)
    tmp = temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_folder(tmp, final)
