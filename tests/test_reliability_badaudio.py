"""A corpus of broken audio files is indexed: each file handled with a reason, memory bounded.

The corpus comes from :mod:`emberd.testing.badcorpus` (truncated FLAC,
zero-length and header-only WAV, wrong extensions, one sample, 8 channels at
192 kHz, NaN-filled float WAV, a sparse two-hour WAV, Vorbis-in-RIFF, a
non-UTF-8 file name, mode 000, dangling link, directory and FIFO named
``.wav``, symlink loops). ``emberd index`` runs in a child process with
a peak-memory watch (psutil, whole process tree).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from emberd.testing import badcorpus, smalllib

INDEX_TIMEOUT_S = 600.0
# bench/bounds.py measured 205 MiB (process tree); decoding the corpus's 2-hour file whole
# would need ~14 GB, a 10-minute one ~1.3 GB: either breaks this bound.
PEAK_RSS_LIMIT_MIB = 750
MIB = 1024 * 1024


def _tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _run_with_peak(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="surrogateescape",
                            stdin=subprocess.DEVNULL)
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        out, err = proc.communicate(timeout=INDEX_TIMEOUT_S)
    finally:
        stop.set()
        t.join()
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak[0]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("badcorpus")
    corpus = root / "corpus"
    entries = badcorpus.build(corpus, seed=3)
    lib = root / "lib"
    proc, peak = _run_with_peak(smalllib.index_command([corpus], lib))
    return {"corpus": corpus, "entries": entries, "lib": lib, "proc": proc, "peak": peak}


def _indexed_paths(lib: Path) -> set[str]:
    conn = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT path FROM files")}
    finally:
        conn.close()


def _skip_reason(output: str, path: str) -> str | None:
    """The reason on the summary line ``  skipped PATH: REASON`` for ``path``, if any."""
    prefix = f"skipped {path}: "
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(prefix) and line[len(prefix):].strip():
            return line[len(prefix):].strip()
    return None


def test_run_completes_exit_zero(indexed: dict[str, object]) -> None:
    proc = indexed["proc"]
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_every_file_indexed_or_skipped_with_reason(indexed: dict[str, object]) -> None:
    proc = indexed["proc"]
    assert isinstance(proc, subprocess.CompletedProcess)
    corpus = Path(str(indexed["corpus"]))
    entries = indexed["entries"]
    assert isinstance(entries, list)
    done = _indexed_paths(Path(str(indexed["lib"])))
    text = proc.stdout + proc.stderr
    problems = []
    for e in entries:
        path = os.path.join(str(corpus), e.name)
        in_index = path in done
        reason = _skip_reason(text, path)
        if e.expect == badcorpus.EXPECT_INDEX and not in_index:
            problems.append(f"{e.name!a} ({e.problem}): not indexed; reason {reason!r}")
        elif e.expect == badcorpus.EXPECT_SKIP and (in_index or not reason):
            problems.append(f"{e.name!a} ({e.problem}): indexed={in_index}, reason={reason!r}")
        elif e.expect == badcorpus.EXPECT_EITHER and not in_index and not reason:
            problems.append(f"{e.name!a} ({e.problem}): neither indexed nor skipped with a reason")
        elif e.expect == badcorpus.EXPECT_ABSENT_OR_SKIP and in_index:
            problems.append(f"{e.name!a} ({e.problem}): indexed")
    assert not problems, "\n".join(problems) + "\n" + text[-3000:]


def test_memory_bounded(indexed: dict[str, object]) -> None:
    peak = int(str(indexed["peak"]))
    assert 0 < peak < PEAK_RSS_LIMIT_MIB * MIB, f"peak RSS {peak / MIB:.0f} MiB"


def test_second_run_is_stable(indexed: dict[str, object]) -> None:
    """Re-indexing the same broken corpus changes nothing and still completes."""
    corpus, lib = Path(str(indexed["corpus"])), Path(str(indexed["lib"]))
    before = _indexed_paths(lib)
    again = smalllib.index([corpus], lib)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _indexed_paths(lib) == before
