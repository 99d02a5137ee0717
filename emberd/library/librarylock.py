"""One writer per library, and readers that see a whole generation, never half of one.

``emberd index`` holds an exclusive lock on ``LIB/library.lock`` for its whole
run: a second ``emberd index`` on the same library waits for it (saying so).
A reader (:meth:`emberd.library.Library.open`: the daemon, ``emberd query``) takes
the shared lock only while it starts an SQLite read transaction; WAL mode keeps
that snapshot for as long as the reader lives, whatever an indexer commits
afterwards. So a reader sees the library as it was before an index run or after
it, never the batches of a run in progress: the daemon's ``reload`` during a run
keeps the generation it has and says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from emberd.errors import EmberdError
from emberd.library.store import DB_NAME, LOCK_NAME
from emberd.locks import LockBusy, file_lock

log = logging.getLogger(__name__)



def lock_for_writing(library: str | os.PathLike[str],
                     on_wait: Callable[[str], None] | None = None) -> contextlib.ExitStack:
    """Take the library's writer lock (waiting for another writer); close the stack to release.

    ``on_wait(holder)`` is called if we have to wait; by default one line on stderr says so.

    The folder is created if missing (the lock file lives in it). A path that is
    not a library (a file, a folder of other things) is left untouched for
    :class:`~emberd.library.store.Store` to refuse.
    """
    path = Path(library)
    stack = contextlib.ExitStack()

    def say(holder: str) -> None:
        print(f"emberd: {library}: another emberd index ({holder}) is writing this library; "
              "waiting for it to finish", file=sys.stderr, flush=True)

    if path.exists() and not (path / DB_NAME).exists() and (
        not path.is_dir() or any(p.name != LOCK_NAME for p in path.iterdir())
    ):
        return stack  # not a library: Store refuses it, and nothing is written into it
    path.mkdir(parents=True, exist_ok=True)
    stack.enter_context(file_lock(path / LOCK_NAME, "emberd index", on_wait=on_wait or say))
    return stack


def start_snapshot(conn: object, library: str | os.PathLike[str], *, wait: bool) -> None:
    """Begin a read transaction on ``conn`` at a whole generation of ``library``.

    Raises
    ------
    EmberdError
        ``wait`` is False and an ``emberd index`` run holds the library.
    """
    import sqlite3

    assert isinstance(conn, sqlite3.Connection)
    path = Path(library)

    def waiting(holder: str) -> None:
        log.warning("library %s is being indexed by %s; waiting for it to finish", path, holder)

    try:
        with file_lock(path / LOCK_NAME, "reader", shared=True, wait=wait, on_wait=waiting):
            conn.execute("BEGIN")
            conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
    except LockBusy as exc:
        raise EmberdError(
            f"library {path}: being indexed by {exc.holder}; open it again when that is done"
        ) from None
