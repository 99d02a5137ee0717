"""Shared state under concurrency, with real processes: model fetch, two indexers, reload.

* several processes fetch aiSFX at once (real pip, offline from a local folder)
  while others load it: every load succeeds, the model is converted once, the
  wheel appears whole;
* two ``emberd index`` runs on one library: the second waits (and says so), the
  library never holds the second run's files while the first is half done;
* the daemon's ``reload`` during an ``emberd index`` run sees the old library or the
  new one, never the batches in between.

Nothing is timed; the processes synchronise on the lock file's holder and poll.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require

from emberd.library.store import DB_NAME, LOCK_NAME
from emberd.locks import holder_of
from emberd.testing import smalllib
from emberd.testing.harness import Daemon, wait_for

WAIT_S = 300.0  # generous: conversions and index runs on a busy 2-core machine
POLL_S = 0.01


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


# ----------------------------------------------------------------------- model fetch
FETCHER = """
from emberd.models import registry
from emberd.models.runtime import Encoder
registry.fetch("aisfx")
Encoder(registry.resolve("aisfx"), warmup=False)  # "ready" must mean it opens
print("ok", flush=True)
"""

READER = """
import json, os, sys
from emberd.errors import ComponentMissing
from emberd.models import registry
from emberd.models.runtime import Encoder
ok, errors = 0, []
while not os.path.exists(sys.argv[1]):
    try:
        Encoder(registry.resolve("aisfx"), warmup=False)
        ok += 1
    except ComponentMissing as exc:
        if ok:  # it was there, and now it is gone
            errors.append(f"vanished: {exc}"[:300])
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
print(json.dumps({"ok": ok, "errors": errors}), flush=True)
"""


@pytest.fixture(scope="module")
def wheel_links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the aiSFX wheel, for pip's --find-links (no network in the test)."""
    from emberd.errors import ComponentMissing
    from emberd.models import aisfx
    from emberd.paths import cache_dir

    try:
        wheel = aisfx.fetch_wheel(cache_dir())
    except ComponentMissing as exc:
        require(False, f"aiSFX wheel via pip download ({exc})")
    links = tmp_path_factory.mktemp("links")
    shutil.copy(wheel, links / wheel.name)
    return links


def test_concurrent_fetchers_and_readers_of_a_model(wheel_links: Path, tmp_path: Path) -> None:
    env = _env(EMBERD_DATA_DIR=str(tmp_path / "data"), EMBERD_CACHE_DIR=str(tmp_path / "cache"),
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheel_links))
    model = tmp_path / "data" / "models" / "aisfx" / "model.onnx"
    stop = tmp_path / "stop"
    inodes: set[int] = set()
    watching = threading.Event()

    def watch() -> None:  # every model.onnx that ever appears (a rewrite is a new inode)
        while not watching.is_set():
            try:
                inodes.add(model.stat().st_ino)
            except FileNotFoundError:
                pass
            time.sleep(POLL_S)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(stop)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    fetchers = [subprocess.Popen([sys.executable, "-c", FETCHER], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(4)]
    try:
        outs = [p.communicate(timeout=WAIT_S) for p in fetchers]
    finally:
        stop.touch()
        results = [p.communicate(timeout=WAIT_S) for p in readers]
        watching.set()
        watcher.join()
    for p, (out, err) in zip(fetchers, outs, strict=True):
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    for out, err in results:
        report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"errors": [err]}
        assert report["errors"] == [], report["errors"][:3]
    # One conversion: the fetchers that waited used the model the first one wrote.
    assert len(inodes) == 1, f"model.onnx was written {len(inodes)} times"
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == ["aisfx-0.1.2-py2.py3-none-any.whl"], leftovers  # no partial downloads
    assert sorted(p.name for p in model.parent.iterdir()) == ["manifest.json", "model.onnx"]


# ----------------------------------------------------------------------- two indexers
def _counts(db: Path, roots: dict[str, Path]) -> dict[str, int] | None:
    """Files per root as a reader sees them right now (None before the database exists)."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            paths = [r[0] for r in conn.execute("SELECT path FROM files")]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return None  # created but no tables yet
    return {k: sum(p.startswith(str(r) + os.sep) for p in paths) for k, r in roots.items()}


def _holder_pid(lock: Path) -> int | None:
    text = holder_of(lock)
    return int(text.split()[1]) if text.startswith("pid ") else None


def _popen_index(root: Path, lib: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(smalllib.index_command([root], lib, "--quiet"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def test_two_index_runs_on_one_library_take_turns(tmp_path: Path) -> None:
    roots = {"a": tmp_path / "a", "b": tmp_path / "b"}
    n = {k: len(smalllib.write_sounds(r, per_folder=12, start=100 * i))
         for i, (k, r) in enumerate(roots.items())}
    lib = tmp_path / "lib"
    seen: list[dict[str, int]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            c = _counts(lib / DB_NAME, roots)
            if c is not None:
                seen.append(c)
            time.sleep(POLL_S)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    runs = {k: _popen_index(r, lib) for k, r in roots.items()}  # both at once
    try:
        outs = {k: p.communicate(timeout=WAIT_S) for k, p in runs.items()}
    finally:
        done.set()
        poller.join()
    for k, p in runs.items():
        assert p.returncode == 0, outs[k][1]
    # Never interleaved: never both runs half done at once.
    mixed = [c for c in seen if 0 < c["a"] < n["a"] and 0 < c["b"] < n["b"]]
    assert not mixed, f"both runs wrote at once: {mixed[:3]}"
    waited = [k for k in runs if "another emberd index" in outs[k][1]]
    assert len(waited) == 1, {k: o[1] for k, o in outs.items()}  # the later one said so
    err = outs[waited[0]][1]
    assert "waiting for it to finish" in err and len(err.strip().splitlines()) == 1, err
    assert _counts(lib / DB_NAME, roots) == n
    conn = sqlite3.connect(lib / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# ----------------------------------------------------------------------- daemon reload
def test_daemon_reload_sees_a_whole_generation(tmp_path: Path) -> None:
    roots = {"a": tmp_path / "a", "b": tmp_path / "b"}
    n_a = len(smalllib.write_sounds(roots["a"], per_folder=2))
    n_b = len(smalllib.write_sounds(roots["b"], per_folder=12, start=100))
    lib = tmp_path / "lib"
    assert smalllib.index([roots["a"]], lib).returncode == 0
    perf = smalllib.write_performance(tmp_path / "perf.wav", seconds=4.0)
    replies: list[dict[str, Any]] = []
    with Daemon(smalllib.daemon_args(lib, perf), tmp_path / "daemon.log", osc_in=False) as d:
        replies.append(d.request("reload"))
        run = _popen_index(roots["b"], lib)
        try:
            wait_for(lambda: _holder_pid(lib / LOCK_NAME) == run.pid or run.poll() is not None,
                     WAIT_S, what="the index run to take the library")
            while run.poll() is None:
                replies.append(d.request("reload", timeout=30.0))
                assert d.alive(), d.log_tail()
        finally:
            _out, err = run.communicate(timeout=WAIT_S)
        assert run.returncode == 0, err
        replies.append(d.request("reload"))
        hops = int(d.status()["hops"])
        wait_for(lambda: int(d.status()["hops"]) > hops, 30.0, what="hops after the reloads")
    ok = [r["files"] for r in replies if r.get("ok")]
    busy = [r for r in replies if not r.get("ok")]
    assert ok[0] == n_a and ok[-1] == n_a + n_b
    assert set(ok) <= {n_a, n_a + n_b}, f"a reload saw a half-indexed library: {sorted(set(ok))}"
    assert busy, "no reload happened while the index run held the library"
    assert all("being indexed" in r["error"] for r in busy), busy[:3]
