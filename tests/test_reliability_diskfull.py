"""Full disks and read-only places, on a small tmpfs the test mounts and fills.

``emberd index``, ``emberd features`` and ``emberd models fetch`` writing where
there is no room (ENOSPC) or no write permission at all (EROFS, the mount
remounted read-only): one line on stderr, exit 2, no traceback, and what was there
before -- library, features file, model -- intact and usable. The daemon reads a
library on a full or read-only disk and answers ``capture`` from it.

Mounting needs root (CI runs as root); elsewhere the tests skip through
:func:`conftest.require`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from emberd.testing import smalllib
from emberd.testing.harness import Daemon

FS_BYTES = 3 * 1024 * 1024  # the small file system: room for a few dozen indexed sounds
LEAVE_BYTES = 4096  # free space left when "full"
RUN_TIMEOUT_S = 300.0


class SmallFs:
    """A tmpfs of ``size`` bytes mounted at ``path`` (unmounted by :meth:`close`)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
        require(out.returncode == 0, f"mounting a tmpfs (root): {out.stderr.strip()}")
        self.filler = path / "filler"

    def fill(self, leave: int = LEAVE_BYTES) -> None:
        """Take all free space but ``leave`` bytes."""
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize
        with open(self.filler, "ab") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size + free - leave)

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    fs = SmallFs(tmp_path / f"mnt-{uuid.uuid4().hex[:8]}", FS_BYTES)
    yield fs
    fs.close()


def _emberd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emberd", *args], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL, check=False)


def _one_line(proc: subprocess.CompletedProcess[str], reason: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emberd: error: "), proc.stderr[-3000:]
    assert reason in lines[0], lines[0]


def _vectors(lib: Path) -> dict[str, bytes]:
    conn = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return dict(conn.execute("SELECT f.path, v.vector FROM vectors v JOIN files f "
                                 "ON f.id = v.file_id WHERE v.is_file = 1"))
    finally:
        conn.close()


def _query_top1(lib: Path, sound: Path) -> str:
    out = _emberd("query", str(sound), "--library", str(lib), "--model", smalllib.FAST_MODEL,
                  "--k", "1")
    assert out.returncode == 0, out.stderr
    return out.stdout


def _temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith((".tmp", ".building.ann"))]


def test_index_on_a_full_disk_and_a_read_only_one(small_fs: SmallFs, tmp_path: Path) -> None:
    first = smalllib.write_sounds(tmp_path / "first", per_folder=3)
    more = smalllib.write_sounds(tmp_path / "more", per_folder=60, start=100)
    lib = small_fs.path / "lib"
    assert smalllib.index([tmp_path / "first"], lib).returncode == 0
    before = _vectors(lib)
    assert len(before) == len(first)
    full = smalllib.index([tmp_path / "more"], lib)  # far more than 3 MB of landmarks
    _one_line(full, "no space left on the device")
    after = _vectors(lib)
    assert {p: after[p] for p in before} == before  # the previous library, intact
    assert str(first[0]) in _query_top1(lib, first[0])  # and usable
    assert _temp_files(small_fs.path) == []
    # Room again: the same command completes the library.
    small_fs.remount(f"size={64 * 1024 * 1024}")
    assert smalllib.index([tmp_path / "more"], lib).returncode == 0
    assert len(_vectors(lib)) == len(first) + len(more)
    # Read-only: refused in one line, still searchable.
    small_fs.remount("ro")
    _one_line(smalllib.index([tmp_path / "first"], lib), "read-only file system")
    assert str(more[5]) in _query_top1(lib, more[5])


def test_features_on_a_full_disk_keep_the_previous_file(small_fs: SmallFs,
                                                        tmp_path: Path) -> None:
    short = smalllib.write_sounds(tmp_path / "s", per_folder=1)[0]
    long_ = smalllib.write_performance(tmp_path / "long.wav", seconds=30.0)
    out = small_fs.path / "frames.npy"
    assert _emberd("features", str(short), "--out", str(out)).returncode == 0
    previous = out.read_bytes()
    small_fs.fill()
    _one_line(_emberd("features", str(long_), "--out", str(out)), "no space left on the device")
    assert out.read_bytes() == previous
    assert np.load(out).shape[1] == 96
    assert _temp_files(small_fs.path) == []
    small_fs.unfill()
    small_fs.remount("ro")
    _one_line(_emberd("features", str(long_), "--out", str(out)), "read-only file system")
    assert out.read_bytes() == previous


def test_model_fetch_on_a_full_disk_keeps_the_previous_model(small_fs: SmallFs) -> None:
    env = {"EMBERD_DATA_DIR": str(small_fs.path / "data")}
    assert _emberd("models", "fetch", smalllib.FAST_MODEL, env=env).returncode == 0
    model = small_fs.path / "data" / "models" / smalllib.FAST_MODEL / "model.onnx"
    previous = model.read_bytes()
    load = ["-c", "from emberd.models import registry; from emberd.models.runtime import "
            f"Encoder; Encoder(registry.resolve({smalllib.FAST_MODEL!r})); print('ok')"]

    def loads() -> bool:
        out = subprocess.run([sys.executable, *load], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=RUN_TIMEOUT_S, check=False)
        return out.stdout.strip() == "ok"

    small_fs.fill()
    _one_line(_emberd("models", "fetch", smalllib.FAST_MODEL, env=env),
              "no space left on the device")
    assert model.read_bytes() == previous and loads()
    assert _temp_files(small_fs.path) == []
    small_fs.unfill()
    small_fs.remount("ro")
    _one_line(_emberd("models", "fetch", smalllib.FAST_MODEL, env=env), "read-only file system")
    assert model.read_bytes() == previous and loads()


def test_daemon_captures_from_a_library_on_a_full_then_read_only_disk(
    small_fs: SmallFs, tmp_path: Path,
) -> None:
    sounds = smalllib.write_sounds(tmp_path / "s", per_folder=2)
    lib = small_fs.path / "lib"
    assert smalllib.index([tmp_path / "s"], lib).returncode == 0
    perf = smalllib.write_performance(tmp_path / "perf.wav", seconds=4.0)
    for state in ("full", "ro"):
        if state == "full":
            small_fs.fill()
        else:
            small_fs.unfill()
            small_fs.remount("ro")
        with Daemon(smalllib.daemon_args(lib, perf), tmp_path / f"daemon-{state}.log",
                    osc_in=False) as d:
            reply = d.request("capture", seconds=1.0, timeout=60.0)
            assert reply["ok"] is True, (state, reply)
            names = {m["name"] for r in reply["results"] for m in r["matches"]}
            assert names and names <= {p.name for p in sounds}, (state, names)
            assert d.request("reload")["files"] == len(sounds), state
