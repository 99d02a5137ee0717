"""Full disks and read-only places: one line that says what happened, never a traceback.

Every emberd write is atomic (:mod:`emberd.atomic`: temp file, fsync, rename) or an
SQLite transaction, so a write that fails for want of space leaves the previous file
or library as it was; what the user needs is to be told which place is full or
read-only. :func:`disk_error` recognises such an error anywhere in an exception's
chain (an ``OSError`` with ``ENOSPC``/``EDQUOT``/``EROFS``/``EFBIG``, or SQLite's
``database or disk is full`` / ``readonly database``) and words it.
"""

from __future__ import annotations

import errno
import os

#: errno -> what the user is told.
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for the file system",
}
#: SQLite messages (sqlite3.OperationalError text) -> what the user is told.
SQLITE_DISK_MESSAGES = {
    "database or disk is full": "no space left on the device",
    "attempt to write a readonly database": "read-only file system (or no write permission)",
}
MAX_CHAIN = 8  # exception causes/contexts followed


def disk_error(exc: BaseException) -> str | None:
    """``"PLACE: reason"`` for a full-disk or read-only error in ``exc``'s chain, else None."""
    seen: BaseException | None = exc
    for _ in range(MAX_CHAIN):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in DISK_ERRNOS:
            where = seen.filename if seen.filename is not None else "a file"
            return f"{os.fsdecode(where)}: {DISK_ERRNOS[seen.errno]}"
        text = str(seen)
        for message, reason in SQLITE_DISK_MESSAGES.items():
            if message in text and type(seen).__module__ == "sqlite3":
                return f"library database: {reason}"
        seen = seen.__cause__ or seen.__context__
    return None
