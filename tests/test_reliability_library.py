"""Library faults: SIGKILL mid-write, damaged index files and databases, foreign libraries.

Every ``emberd`` command here runs in a child process, so a segfault (Annoy
mapping a truncated file) shows as a negative return code and fails the test
instead of killing pytest. "Nothing embedded lost" is checked byte for byte:
each file's stored vectors must survive every later (killed) run unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from emberd.testing import smalllib

MODEL = smalllib.FAST_MODEL
KILL_RUNS = 20  # SIGKILL loop length (issue 7)
NEW_FILES_PER_RUN = 4  # files added before each killed run (one per tag folder)
CMD_TIMEOUT_S = 300.0


def _emberd(*args: str, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emberd", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _query(lib: Path, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _emberd("query", str(path), "--library", str(lib), "--model", MODEL, "--k", "3",
                   "--json", *extra)


def _assert_clean_outcome(proc: subprocess.CompletedProcess[str], what: str) -> None:
    """Exit 0, or exit 2 with one ``emberd: error:`` line; never a signal or a traceback."""
    assert proc.returncode >= 0, f"{what}: killed by signal {-proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, f"{what}: traceback\n{proc.stderr[-3000:]}"
    assert proc.returncode in (0, 2), f"{what}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    if proc.returncode == 2:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("emberd: error:")]
        assert len(errors) == 1, f"{what}: expected one error line\n{proc.stderr}"


def _top1(proc: subprocess.CompletedProcess[str]) -> str | None:
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, proc.stdout
    matches = lines[0].get("matches") or []
    return os.path.realpath(matches[0]["path"]) if matches else None


def _embedded(lib: Path) -> dict[str, str]:
    """path -> sha256 of all its stored vectors for MODEL (read-only connection)."""
    db = lib / "library.sqlite"
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(
            "SELECT f.path, v.is_file, v.start_s, v.vector FROM files f "
            "JOIN vectors v ON v.file_id = f.id WHERE v.model = ? "
            "ORDER BY f.path, v.is_file, v.start_s",
            (MODEL,),
        ).fetchall()
    finally:
        conn.close()
    digests: dict[str, hashlib._Hash] = {}
    for path, is_file, start, blob in rows:
        h = digests.setdefault(path, hashlib.sha256())
        h.update(f"{is_file}:{start:.6f}:".encode())
        h.update(blob)
    return {p: h.hexdigest() for p, h in digests.items()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fully indexed small library and its sound folder."""
    root = tmp_path_factory.mktemp("faultlib")
    sounds = root / "sounds"
    smalllib.write_sounds(sounds, per_folder=6)
    lib = root / "lib"
    proc = smalllib.index([sounds], lib)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sounds, lib


def test_sigkill_loop_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(7)
    sounds = tmp_path / "sounds"
    lib = tmp_path / "lib"
    smalllib.write_sounds(sounds, per_folder=2, start=0)
    t0 = time.monotonic()
    first = smalllib.index([sounds], lib)
    full_s = time.monotonic() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    known = _embedded(lib)
    assert len(known) == 8
    probe = Path(next(iter(known)))
    kills_mid_run = 0
    for run in range(KILL_RUNS):
        smalllib.write_sounds(sounds, per_folder=NEW_FILES_PER_RUN // 4, start=100 + run)
        proc = subprocess.Popen(smalllib.index_command([sounds], lib),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        # Random point from start-up (imports) to past the end of a typical run.
        time.sleep(rng.uniform(0.1, 1.3 * full_s))
        if proc.poll() is None:
            kills_mid_run += 1
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=CMD_TIMEOUT_S)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")[-3000:]
        now = _embedded(lib)  # also runs PRAGMA integrity_check
        lost = {p for p in known if p not in now}
        changed = {p for p in known if p in now and now[p] != known[p]}
        assert not lost, f"run {run}: embedded files lost: {sorted(lost)[:5]}"
        assert not changed, f"run {run}: stored vectors changed: {sorted(changed)[:5]}"
        known = now
        q = _query(lib, probe)
        _assert_clean_outcome(q, f"query after killed run {run}")
        assert q.returncode == 0 and _top1(q) == os.path.realpath(probe)
    assert kills_mid_run >= KILL_RUNS // 2, "most runs must really be killed mid-way"
    final = smalllib.index([sounds], lib)
    assert final.returncode == 0, final.stderr[-3000:]
    done = _embedded(lib)
    on_disk = {str(p) for p in sounds.rglob("*.wav")}
    assert set(map(os.path.realpath, done)) == set(map(os.path.realpath, on_disk))


def _truncate_to(frac: float) -> Callable[[Path], None]:
    def apply(p: Path) -> None:
        size = p.stat().st_size
        with open(p, "r+b") as fh:
            fh.truncate(int(size * frac))

    return apply


def _garble(p: Path) -> None:
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(255 - b for b in data[mid : mid + 64])
    p.write_bytes(bytes(data))


INDEX_FAULTS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "ann_empty": ("ann", _truncate_to(0.0)),
    "ann_half": ("ann", _truncate_to(0.5)),
    "ann_minus_one": ("ann", lambda p: os.truncate(p, p.stat().st_size - 1)),
    "ann_garbled": ("ann", _garble),
    "ann_missing": ("ann", lambda p: p.unlink()),
    "manifest_garbage": ("json", lambda p: p.write_bytes(os.urandom(300))),
    "manifest_truncated": ("json", _truncate_to(0.5)),
    "manifest_list": ("json", lambda p: p.write_text("[1, 2, 3]")),
    "manifest_wrong_dim": ("json", lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "dim": 7}))),
    "manifest_bad_types": ("json", lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "version": "x", "file_size": None}))),
    "manifest_path_escape": ("json", lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "file": "../library.sqlite"}))),
}


def _annoy_library(pristine: tuple[Path, Path], dest: Path) -> Path:
    """A copy of the pristine library that has an Annoy index (built if needed)."""
    _, lib = pristine
    shutil.copytree(lib, dest)
    # annoy is a core dependency: a library without its index is a bug, never a skip.
    assert list((dest / "index").glob("*.ann")), "indexing built no Annoy index"
    return dest


@pytest.mark.parametrize("fault", sorted(INDEX_FAULTS))
def test_damaged_index_file(fault: str, pristine: tuple[Path, Path], tmp_path: Path) -> None:
    sounds, _ = pristine
    lib = _annoy_library(pristine, tmp_path / "lib")
    before = _embedded(lib)
    kind, damage = INDEX_FAULTS[fault]
    target = next((lib / "index").glob(f"*.{kind}"))
    damage(target)
    probe = next(sounds.rglob("*.wav"))
    q = _query(lib, probe)
    _assert_clean_outcome(q, f"query with {fault}")
    if q.returncode == 0:  # recovered (exact search fallback): the answer must be right
        assert _top1(q) == os.path.realpath(probe)
    # Re-indexing repairs the index and loses nothing.
    again = smalllib.index([sounds], lib)
    _assert_clean_outcome(again, f"index with {fault}")
    assert again.returncode == 0
    assert _embedded(lib) == before
    q2 = _query(lib, probe)
    assert q2.returncode == 0, q2.stderr[-2000:]
    assert _top1(q2) == os.path.realpath(probe)


def _set_meta(db: Path, key: str, value: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.close()


DB_FAULTS: dict[str, Callable[[Path], None]] = {
    "db_empty": _truncate_to(0.0),
    "db_half": _truncate_to(0.5),
    "db_garbled_header": lambda p: p.write_bytes(b"\x00" * 100 + p.read_bytes()[100:]),
    "db_garbled_middle": _garble,
    "db_newer_schema": lambda p: _set_meta(p, "schema_version", "99"),
    "db_older_schema": lambda p: _set_meta(p, "schema_version", "0"),
    "db_bad_schema": lambda p: _set_meta(p, "schema_version", "one"),
    "db_not_emberd": lambda p: _set_meta(p, "app", "something-else"),
}


@pytest.mark.parametrize("fault", sorted(DB_FAULTS))
def test_damaged_or_foreign_database(fault: str, pristine: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    sounds, lib0 = pristine
    lib = tmp_path / "lib"
    shutil.copytree(lib0, lib)
    db = lib / "library.sqlite"
    DB_FAULTS[fault](db)
    damaged = _sha(db)
    probe = next(sounds.rglob("*.wav"))
    for what, proc in (("query", _query(lib, probe)), ("index", smalllib.index([sounds], lib)),
                       ("info", _emberd("library", "info", "--library", str(lib)))):
        _assert_clean_outcome(proc, f"{what} with {fault}")
        if fault in ("db_newer_schema", "db_not_emberd", "db_empty"):
            # A foreign or newer library is refused, never overwritten.
            assert proc.returncode == 2 or fault == "db_empty", f"{what} {fault}: accepted"
    if fault in ("db_newer_schema", "db_not_emberd"):
        assert _sha(db) == damaged, "a refused library must not be modified"


def test_other_model_and_not_a_library(pristine: tuple[Path, Path], tmp_path: Path) -> None:
    sounds, lib = pristine
    probe = next(sounds.rglob("*.wav"))
    before = _embedded(lib)
    # Query with a model the library was not built with (or that is not installed).
    q = _emberd("query", str(probe), "--library", str(lib), "--model", "aisfx", "--json")
    _assert_clean_outcome(q, "query with another model")
    q = _emberd("query", str(probe), "--library", str(lib), "--model", "no-such-model", "--json")
    _assert_clean_outcome(q, "query with an unknown model")
    assert q.returncode == 2
    assert _embedded(lib) == before
    # A folder that is not a library is refused and left untouched.
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(100))
    snapshot = {p.name: _sha(p) for p in other.iterdir()}
    for proc in (smalllib.index([sounds], other), _query(other, probe)):
        _assert_clean_outcome(proc, "not a library")
        assert proc.returncode == 2
    assert {p.name: _sha(p) for p in other.iterdir()} == snapshot
