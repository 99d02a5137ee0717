"""The library on disk: one folder holding an SQLite database and the search indexes.

Layout of a library folder ``PATH``::

    PATH/library.sqlite        metadata, vectors, fingerprints (WAL mode)
    PATH/library.lock          one emberd index at a time (emberd.library.librarylock)
    PATH/index/MODEL.json      Annoy index manifest (see emberd.library.search)
    PATH/index/MODEL-*.ann     Annoy index files

Crash safety: the indexer commits one transaction per batch of files, so a
process killed with SIGKILL loses at most the batch in flight; SQLite's WAL
journal rolls a half-written transaction back on the next open.

A folder that is not an emberd library (non-empty, no database) or whose
database was written by a newer schema is refused with a clear error and left
untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emberd.errors import EmberdError
from emberd.library.waveform import Snippet

DB_NAME = "library.sqlite"
INDEX_DIR = "index"
APP_ID = "emberd-library"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0  # another emberd process may hold the write lock for a batch
LOCK_NAME = "library.lock"  # emberd.library.librarylock: one writer (may precede the database)
MIN_FREE_TO_READ_BYTES = 256 * 1024  # below this a WAL reader may fail to create its -shm file
MIN_NORM = 1e-12  # a vector shorter than this has no direction: rejected

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    duration_s REAL NOT NULL,
    sr INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    tags TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, version TEXT NOT NULL, dim INTEGER NOT NULL
);
-- one row per file (is_file = 1, the pooled file vector) plus one per segment
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    model TEXT NOT NULL REFERENCES models(name),
    is_file INTEGER NOT NULL,
    start_s REAL NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS vectors_model ON vectors(model, file_id);
CREATE TABLE IF NOT EXISTS fingerprints (
    hash INTEGER NOT NULL,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    t INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS fingerprints_hash ON fingerprints(hash);
CREATE INDEX IF NOT EXISTS fingerprints_file ON fingerprints(file_id);
CREATE TABLE IF NOT EXISTS templates (
    file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    data BLOB NOT NULL
);
-- onset waveform (emberd.library.waveform.snippet): int16 samples times scale
CREATE TABLE IF NOT EXISTS snippets (
    file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    scale REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS fingerprinted (
    file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    params TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class FileRecord:
    """Metadata of one indexed file (a row of ``files``)."""

    id: int
    path: str
    root: str
    size: int
    mtime_ns: int
    sha256: str
    duration_s: float
    sr: int
    channels: int
    tags: list[str]

    @property
    def name(self) -> str:
        """File name without the folder."""
        return os.path.basename(self.path)


_FILE_COLUMNS = "id, path, root, size, mtime_ns, sha256, duration_s, sr, channels, tags"


def _record(row: Any) -> FileRecord:
    """A FileRecord from a ``files`` row (tags decoded from JSON)."""
    return FileRecord(
        id=row[0],
        path=row[1],
        root=row[2],
        size=row[3],
        mtime_ns=row[4],
        sha256=row[5],
        duration_s=row[6],
        sr=row[7],
        channels=row[8],
        tags=json.loads(row[9]),
    )


def unwritable_fs(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only, or one too full for SQLite's
    shared-memory file (a WAL reader needs to create it)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return bool(st.f_flag & os.ST_RDONLY) or st.f_bavail * st.f_frsize < MIN_FREE_TO_READ_BYTES


def _wal_pending(db: Path) -> bool:
    """Whether ``db`` has committed pages still in its WAL file (not yet checkpointed): an
    immutable reader would miss them and read a half-checkpointed main file."""
    try:
        return Path(f"{db}-wal").stat().st_size > 0
    except FileNotFoundError:
        return False


def check_vector(vector: np.ndarray, what: str) -> np.ndarray:
    """Return ``vector`` as float32, refusing NaN, infinite or zero vectors.

    Raises
    ------
    EmberdError
        With ``what`` naming the offending item.
    """
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim != 1 or v.size == 0:
        raise EmberdError(f"{what}: embedding must be a non-empty 1-D vector, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise EmberdError(f"{what}: embedding contains NaN or infinite values")
    if float(np.linalg.norm(v)) < MIN_NORM:
        raise EmberdError(f"{what}: embedding is a zero vector")
    return v


class Store:
    """Open (or create) a library folder's database.

    Parameters
    ----------
    path : path-like
        Library folder. Created when absent; an existing empty folder is adopted.
    create : bool
        If False, a missing library is an error instead of being created.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path).absolute()
        db = self.path / DB_NAME
        if self.path.exists() and not self.path.is_dir():
            raise EmberdError(f"{path}: not an emberd library (it is a file, not a folder)")
        if not db.exists():
            if not create:
                raise EmberdError(f"{path}: no emberd library here (run 'emberd index' first)")
            if self.path.exists() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
                raise EmberdError(
                    f"{path}: not an emberd library (folder is not empty and has no {DB_NAME}); "
                    "refusing to write into it"
                )
        elif db.is_dir():
            raise EmberdError(f"{path}: not an emberd library ({DB_NAME} is a folder)")
        else:
            self._check_existing(db)
        existed = db.exists()
        read_only = existed and not create and unwritable_fs(self.path) and not _wal_pending(db)
        if not read_only:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / INDEX_DIR).mkdir(exist_ok=True)
        try:
            if read_only:
                # A library on read-only media (a mounted sample drive) or a full disk: SQLite
                # cannot make its WAL index there, and no indexer can commit there either,
                # so read it as immutable (no locks, no -shm file).
                self.conn = sqlite3.connect(f"{db.as_uri()}?mode=ro&immutable=1", uri=True,
                                            timeout=BUSY_TIMEOUT_S, isolation_level=None)
                return
            self.conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            if not existed:
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")  # a committed batch survives power loss
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise EmberdError(f"{db}: damaged library database ({exc})") from None
        if existed and not create:
            return  # opening to read never writes: a reader must not wait for an indexer's lock
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self.conn.execute(stmt)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('app', ?)", (APP_ID,))
            self.conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")

    @staticmethod
    def _check_existing(db: Path) -> None:
        """Refuse a database that is not ours or comes from a newer emberd, reading only."""
        immutable = "&immutable=1" if unwritable_fs(db.parent) and not _wal_pending(db) else ""
        try:
            conn = sqlite3.connect(f"{db.as_uri()}?mode=ro{immutable}", uri=True,
                                   timeout=BUSY_TIMEOUT_S)
            try:
                rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise EmberdError(f"{db}: not an emberd library ({exc})") from None
        if rows.get("app") != APP_ID:
            raise EmberdError(f"{db}: not an emberd library (no emberd marker)")
        try:
            version = int(rows.get("schema_version", ""))
        except ValueError:
            raise EmberdError(f"{db}: not an emberd library (bad schema version)") from None
        if version > SCHEMA_VERSION:
            raise EmberdError(
                f"{db}: library was written by a newer emberd (schema {version}, this emberd "
                f"reads up to {SCHEMA_VERSION}); upgrade emberd"
            )

    # -- transactions -----------------------------------------------------------------

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: object, *_: object) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def transaction(self) -> Store._Tx:
        """Context manager: one ``BEGIN IMMEDIATE ... COMMIT`` (rolled back on error)."""
        return Store._Tx(self.conn)

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    # -- reading ----------------------------------------------------------------------

    def generation(self) -> int:
        """Counter bumped by every commit that changes vectors (index staleness check)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0])

    def files(self, root: str | None = None) -> dict[str, FileRecord]:
        """All file records by path, or those whose path lies under ``root``."""
        sql = f"SELECT {_FILE_COLUMNS} FROM files"
        out = {}
        for row in self.conn.execute(sql):
            rec = _record(row)
            if root is None or rec.path.startswith(root.rstrip(os.sep) + os.sep):
                out[rec.path] = rec
        return out

    def file_by_id(self, ids: Iterable[int]) -> dict[int, FileRecord]:
        """File records for the given ids (unknown ids are left out)."""
        ids = list({int(i) for i in ids})
        out: dict[int, FileRecord] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            q = ",".join("?" * len(part))
            for row in self.conn.execute(
                f"SELECT id, path, root, size, mtime_ns, sha256, duration_s, sr, channels, tags "
                f"FROM files WHERE id IN ({q})",
                part,
            ):
                out[row[0]] = _record(row)
        return out

    def models(self) -> dict[str, tuple[str, int]]:
        """Models with vectors in the library: ``{name: (version, dim)}``."""
        return {n: (v, d) for n, v, d in self.conn.execute("SELECT name, version, dim FROM models")}

    def embedded_file_ids(self, model: str) -> set[int]:
        """Ids of files that have a file vector for ``model``."""
        rows = self.conn.execute(
            "SELECT file_id FROM vectors WHERE model=? AND is_file=1", (model,)
        )
        return {r[0] for r in rows}

    def fingerprinted_ids(self, params: str) -> set[int]:
        """Ids of files fingerprinted with the given parameter string."""
        rows = self.conn.execute("SELECT file_id FROM fingerprinted WHERE params=?", (params,))
        return {r[0] for r in rows}

    def vectors(self, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every vector of ``model``: ``(ids, file_ids, start_s, matrix [n, dim] float32)``."""
        rows = self.conn.execute(
            "SELECT id, file_id, start_s, vector FROM vectors WHERE model=? ORDER BY id", (model,)
        ).fetchall()
        dim = self.models().get(model, ("", 0))[1]
        if not rows:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0, np.float32), np.zeros((0, dim), np.float32)
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        file_ids = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        starts = np.fromiter((r[2] for r in rows), np.float32, len(rows))
        matrix = np.frombuffer(b"".join(r[3] for r in rows), np.float32).reshape(len(rows), -1)
        return ids, file_ids, starts, matrix

    def file_vectors(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """Each file's pooled vector of ``model``: ``(file_ids, matrix [n, dim] float32)``."""
        rows = self.conn.execute(
            "SELECT file_id, vector FROM vectors WHERE model=? AND is_file=1 ORDER BY file_id",
            (model,),
        ).fetchall()
        dim = self.models().get(model, ("", 0))[1]
        file_ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        if not rows:
            return file_ids, np.zeros((0, dim), np.float32)
        return file_ids, np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(
            len(rows), -1
        )

    def vector_rows(self, ids: Iterable[int]) -> dict[int, tuple[int, float]]:
        """``{vector id: (file_id, start_s)}`` for the given vector ids."""
        ids = [int(i) for i in ids]
        out: dict[int, tuple[int, float]] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            q = ",".join("?" * len(part))
            for vid, fid, start in self.conn.execute(
                f"SELECT id, file_id, start_s FROM vectors WHERE id IN ({q})", part
            ):
                out[vid] = (fid, start)
        return out

    def iter_fingerprints(self) -> Iterator[tuple[int, int, int]]:
        """Every ``(hash, file_id, t)`` row."""
        yield from self.conn.execute("SELECT hash, file_id, t FROM fingerprints")

    def counts(self) -> dict[str, int]:
        """Row counts: files, vectors, fingerprints."""
        c = self.conn
        return {
            "files": c.execute("SELECT COUNT(*) FROM files").fetchone()[0],
            "vectors": c.execute("SELECT COUNT(*) FROM vectors").fetchone()[0],
            "fingerprints": c.execute("SELECT COUNT(*) FROM fingerprints").fetchone()[0],
        }

    # -- writing (call inside transaction()) ---------------------------------------------

    def bump_generation(self) -> None:
        """Mark the vectors as changed (inside the caller's transaction)."""
        self.conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'"
        )

    def ensure_model(self, name: str, version: str, dim: int) -> None:
        """Register a model; a different dim for a known name is refused."""
        row = self.conn.execute("SELECT version, dim FROM models WHERE name=?", (name,)).fetchone()
        if row is None:
            self.conn.execute("INSERT INTO models VALUES (?, ?, ?)", (name, version, dim))
        elif row[1] != dim:
            raise EmberdError(
                f"model {name}: library holds {row[1]}-d vectors, the encoder gives {dim}-d"
            )
        elif row[0] != version:
            # A new model version makes old vectors incomparable: drop them.
            self.conn.execute("DELETE FROM vectors WHERE model=?", (name,))
            self.conn.execute("UPDATE models SET version=? WHERE name=?", (version, name))

    def upsert_file(
        self,
        path: str,
        root: str,
        size: int,
        mtime_ns: int,
        sha256: str,
        duration_s: float,
        sr: int,
        channels: int,
        tags: list[str],
    ) -> int:
        """Insert or update a file row; a changed file loses its old vectors and fingerprints."""
        row = self.conn.execute(
            "SELECT id, size, mtime_ns, sha256 FROM files WHERE path=?", (path,)
        ).fetchone()
        values = (root, size, mtime_ns, sha256, duration_s, sr, channels, json.dumps(tags))
        if row is None:
            cur = self.conn.execute(
                "INSERT INTO files (path, root, size, mtime_ns, sha256, duration_s, sr, channels, "
                "tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (path, *values),
            )
            return int(cur.lastrowid or 0)
        file_id = int(row[0])
        if row[3] != sha256:
            self.conn.execute("DELETE FROM vectors WHERE file_id=?", (file_id,))
            self.conn.execute("DELETE FROM fingerprints WHERE file_id=?", (file_id,))
            self.conn.execute("DELETE FROM fingerprinted WHERE file_id=?", (file_id,))
        self.conn.execute(
            "UPDATE files SET root=?, size=?, mtime_ns=?, sha256=?, duration_s=?, sr=?, "
            "channels=?, tags=? WHERE id=?",
            (*values, file_id),
        )
        return file_id

    def put_vectors(
        self,
        file_id: int,
        model: str,
        file_vector: np.ndarray,
        segments: list[tuple[float, np.ndarray]],
    ) -> None:
        """Replace ``file_id``'s vectors for ``model`` (checked for NaN and zero)."""
        what = f"file #{file_id}"
        rows = [(file_id, model, 1, 0.0, check_vector(file_vector, what).tobytes())]
        for start, vec in segments:
            rows.append((file_id, model, 0, float(start), check_vector(vec, what).tobytes()))
        self.conn.execute("DELETE FROM vectors WHERE file_id=? AND model=?", (file_id, model))
        self.conn.executemany(
            "INSERT INTO vectors (file_id, model, is_file, start_s, vector) VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    def put_fingerprints(
        self,
        file_id: int,
        params: str,
        hashes: np.ndarray,
        times: np.ndarray,
        template: np.ndarray,
        snippet: Snippet,
    ) -> None:
        """Replace ``file_id``'s landmark hashes, onset template and onset waveform."""
        self.conn.execute("DELETE FROM fingerprints WHERE file_id=?", (file_id,))
        self.conn.executemany(
            "INSERT INTO fingerprints (hash, file_id, t) VALUES (?, ?, ?)",
            zip(hashes.tolist(), [file_id] * len(hashes), times.tolist(), strict=True),
        )
        self.conn.execute(
            "INSERT OR REPLACE INTO templates VALUES (?, ?)",
            (file_id, np.ascontiguousarray(template, np.uint8).tobytes()),
        )
        self.conn.execute(
            "INSERT OR REPLACE INTO snippets VALUES (?, ?, ?)",
            (file_id, float(snippet.scale), snippet.data),
        )
        self.conn.execute("INSERT OR REPLACE INTO fingerprinted VALUES (?, ?)", (file_id, params))

    def templates(self, file_ids: Iterable[int]) -> dict[int, bytes]:
        """Raw onset templates of the given files (missing ones left out)."""
        ids = [int(i) for i in file_ids]
        out: dict[int, bytes] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            q = ",".join("?" * len(part))
            for fid, data in self.conn.execute(
                f"SELECT file_id, data FROM templates WHERE file_id IN ({q})", part
            ):
                out[fid] = data
        return out

    def snippets(self, file_ids: Iterable[int]) -> dict[int, Snippet]:
        """Stored onset waveforms of the given files (missing ones left out; none at all in a
        library last indexed by an emberd without them)."""
        ids = [int(i) for i in file_ids]
        out: dict[int, Snippet] = {}
        try:
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                q = ",".join("?" * len(part))
                for fid, scale, data in self.conn.execute(
                    f"SELECT file_id, scale, data FROM snippets WHERE file_id IN ({q})", part
                ):
                    out[int(fid)] = Snippet(float(scale), bytes(data))
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
        return out

    def remove_files(self, file_ids: Iterable[int]) -> None:
        """Delete files with their vectors and fingerprints."""
        self.conn.executemany("DELETE FROM files WHERE id=?", [(int(i),) for i in file_ids])
