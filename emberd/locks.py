"""Advisory locks between emberd processes: one writer at a time on shared files.

A lock is ``flock(2)`` on a small lock file next to what it guards. The kernel
drops it when its holder exits for any reason (SIGKILL included), so a crash
never leaves a stale lock behind. The holder writes ``pid what`` into the file,
which is how a process that has to wait can say whom it is waiting for.

Used for: one ``emberd index`` per library (exclusive) against readers opening
a library (shared, held only while they take their snapshot); one fetch per
model and one download of a model wheel at a time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_S = 0.1  # how often a waiting process retries (flock has no timeout of its own)


class LockBusy(Exception):
    """The lock is held by another process and the caller would not wait."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path}: held by {holder}")
        self.path = path
        self.holder = holder


def holder_of(path: str | os.PathLike[str]) -> str:
    """Who holds (or last held) the lock at ``path``: ``"pid N (what)"``, else "another process"."""
    try:
        text = Path(path).read_text("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, what = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"pid {pid} ({what})" if what else f"pid {pid}"


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike[str],
    what: str,
    *,
    shared: bool = False,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[bool]:
    """Hold an exclusive (or shared) lock on ``path`` for the ``with`` block.

    Parameters
    ----------
    path : path-like
        The lock file. An exclusive lock creates it; a shared lock only opens an
        existing one (readers never write: a library on read-only media still opens)
        and yields ``False`` when there is none, since no writer has ever locked.
    what : str
        What the holder is doing (written into the file for waiters' messages).
    shared : bool
        Shared lock (many readers) instead of exclusive.
    wait : bool
        Block until the lock is free; otherwise raise :class:`LockBusy`.
    on_wait : callable, optional
        Called once with the holder's description if we have to wait.

    Yields
    ------
    bool
        Whether a lock is held (False only for a shared lock without a lock file).
    """
    lock_path = Path(path)
    try:
        if shared:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (FileNotFoundError, PermissionError):
        if not shared:
            raise
        yield False  # no lock file (never written), or not ours to read: read unlocked
        return
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        told = False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if not wait:
                raise LockBusy(lock_path, holder_of(lock_path))
            if not told and on_wait is not None:
                on_wait(holder_of(lock_path))
                told = True
            time.sleep(POLL_S)
        if not shared:
            with contextlib.suppress(OSError):  # who holds it is a courtesy (full disk: none)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)  # releases the flock
