"""Crash-safe file writes: temp file in the same folder, fsync, rename.

A reader sees either the old file or the complete new one, never a torn write,
even if the process is killed with SIGKILL half-way through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` atomically on success.

    Parameters
    ----------
    path : path-like
        Final destination. Its folder must exist.
    mode : str
        ``"wb"`` or ``"w"``.

    Yields
    ------
    file object
        Write to it; on normal exit it is flushed, fsynced and renamed over
        ``path``. On an exception the temporary file is removed and ``path``
        is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'wb' and 'w', not {mode!r}")
    dest = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        exc.filename = os.fspath(dest)  # name the file the user asked for, not our temp file
        raise
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is None and "requested and" in str(exc):
            # numpy's tofile reports a short write without its errno: the device refused
            # more bytes, which on a local file system means it is full.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dest)) from exc
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            exc.filename = os.fspath(dest)  # ENOSPC: say which file could not be written
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
