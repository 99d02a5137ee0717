"""``emberd index --ray`` on a real local Ray cluster: a head and a second node, 1 CPU each.

One cluster serves the module (a start costs seconds); the node-removal test runs last
and puts a node back.  Parity is checked on the stored library itself: the same files,
vectors within 1e-5, the same segments, landmarks, templates and snippets.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import require

from emberd.cli import main
from emberd.errors import EmberdError

MODEL = "dsp-baseline"  # where the encoder does not matter; aiSFX for the parity test
OBJECT_STORE_BYTES = 100 * 2**20  # per node: the test cluster stays small in memory
KITS_FOR_PARITY = ("Audiophob", "HardElectro1")  # 14 + 17 real one-shots


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        require(False, "Ray (pip install 'emberd[ray]')")
    return ray


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Head + one worker node, 1 CPU each."""
    _ray()
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES}
    # A removed node is declared dead after ~10 s instead of Ray's default ~30 s.
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 10}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False,
                                                      "_system_config": health})
    c.add_node(**node)
    c.wait_for_nodes()
    c.node_args = node  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.shutdown()


def _copy_kits(drumkit_dir: Path, dest: Path, kits: tuple[str, ...]) -> Path:
    for kit in kits:
        shutil.copytree(drumkit_dir / kit, dest / kit,
                        ignore=shutil.ignore_patterns("*.xml", "*.png"))
    return dest


def _index(lib: Path, root: Path, *extra: str, model: str = MODEL) -> int:
    return main(["index", str(root), "--library", str(lib), "--model", model, "--quiet",
                 *extra])


def library_state(lib: Path) -> dict[str, Any]:
    """Everything a query reads, keyed by path (row ids may differ between engines)."""
    conn = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        files = {row[0]: row[1:] for row in conn.execute(
            "SELECT path, id, size, mtime_ns, sha256, duration_s, sr, channels, tags FROM files")}
        by_id = {v[0]: p for p, v in files.items()}
        out: dict[str, Any] = {p: {"meta": v[1:], "vectors": [], "fp": [], "tpl": None,
                                   "snip": None} for p, v in files.items()}
        for fid, model, is_file, start, blob in conn.execute(
                "SELECT file_id, model, is_file, start_s, vector FROM vectors ORDER BY id"):
            out[by_id[fid]]["vectors"].append(
                (model, is_file, round(start, 6), np.frombuffer(blob, np.float32)))
        for h, fid, t in conn.execute("SELECT hash, file_id, t FROM fingerprints"):
            out[by_id[fid]]["fp"].append((h, t))
        for fid, data in conn.execute("SELECT file_id, data FROM templates"):
            out[by_id[fid]]["tpl"] = bytes(data)
        for fid, scale, data in conn.execute("SELECT file_id, scale, data FROM snippets"):
            out[by_id[fid]]["snip"] = (scale, bytes(data))
        for fid, params in conn.execute("SELECT file_id, params FROM fingerprinted"):
            out[by_id[fid]]["params"] = params
    finally:
        conn.close()
    return out


def assert_same_library(a: Path, b: Path, *, atol: float = 1e-5) -> int:
    """Same files, segments, fingerprints; vectors within ``atol``.  Returns the file count."""
    sa, sb = library_state(a), library_state(b)
    assert sorted(sa) == sorted(sb)
    for path in sa:
        fa, fb = sa[path], sb[path]
        assert fa["meta"] == fb["meta"], path
        assert sorted(fa["fp"]) == sorted(fb["fp"]) and fa["tpl"] == fb["tpl"], path
        assert fa["snip"] == fb["snip"] and fa.get("params") == fb.get("params"), path
        assert [v[:3] for v in fa["vectors"]] == [v[:3] for v in fb["vectors"]], path
        for va, vb in zip(fa["vectors"], fb["vectors"], strict=True):
            np.testing.assert_allclose(va[3], vb[3], rtol=0, atol=atol, err_msg=path)
    return len(sa)


def test_same_library_as_local_and_runs_mix(cluster: Any, drumkit_dir: Path,
                                            aisfx_manifest_path: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBERD_DATA_DIR", str(tmp_path / "data"))
    shutil.copytree(aisfx_manifest_path.parent, tmp_path / "data" / "models" / "aisfx")
    root = _copy_kits(drumkit_dir, tmp_path / "Drums", KITS_FOR_PARITY)
    ray_lib, local_lib = tmp_path / "ray", tmp_path / "local"
    from emberd.paths import cache_dir

    def copies() -> set[Path]:  # the actors' model copies (both nodes are this machine)
        return set(Path(tempfile.gettempdir()).glob("emberd-ray-model-*")) | set(
            (cache_dir() / "ray-models").glob("*/*"))

    before = copies()

    def both(ray_first: bool) -> None:
        engines = ["--ray", cluster.address], ["--jobs", "1"]
        for lib, extra in ((ray_lib, engines[0] if ray_first else engines[1]),
                           (local_lib, engines[1])):
            assert _index(lib, root, *extra, model="aisfx") == 0

    both(ray_first=True)
    n = assert_same_library(ray_lib, local_lib)
    assert n == 30  # 31 files, one silent sample skipped the same way by both engines
    # Incremental runs mix freely: local then Ray on the Ray-built library.
    victim = next(root.glob("Audiophob/*.wav"))
    victim.unlink()
    changed = sorted(root.glob("HardElectro1/*.flac"))[0]
    y, sr = sf.read(changed, dtype="float32")
    sf.write(changed, 0.5 * y[: len(y) // 2], sr)
    both(ray_first=False)  # the Ray library's second run is local
    shutil.copy(drumkit_dir / "Audiophob" / victim.name, root / "again.wav")
    both(ray_first=True)
    assert assert_same_library(ray_lib, local_lib) == 30
    # And the Ray library's answers match: an unchanged rerun with Ray does nothing.
    assert _index(ray_lib, root, "--ray", cluster.address, model="aisfx") == 0
    # Actors are killed, never finalised: one copy of the model per node, not one per actor.
    assert len(copies() - before) <= 1


def test_node_that_cannot_read_reports_itself(tmp_path: Path) -> None:
    _ray()
    from emberd.dsp.config import FrontEndConfig  # noqa: F401  (the frontend the task gets)
    from emberd.library.indexer import _Job
    from emberd.library.ray_index import prepare_on_node
    from emberd.models.registry import resolve

    res = prepare_on_node(_Job(str(tmp_path / "elsewhere.wav"), True),
                          resolve(MODEL).frontend())
    assert not res["ok"]
    assert "cannot read it on Ray node" in res["reason"] and "same path" in res["reason"]


def test_unreachable_ray_is_one_line(tmp_path: Path) -> None:
    _ray()
    with socket_free_port() as port:
        proc = subprocess.run(
            [sys.executable, "-m", "emberd", "index", str(tmp_path), "--library",
             str(tmp_path / "lib"), "--model", MODEL, "--ray", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Ray at 127.0.0.1:" in lines[0], proc.stderr
    assert not (tmp_path / "lib").exists()  # nothing written before Ray answered
    proc = subprocess.run(
        [sys.executable, "-m", "emberd", "index", str(tmp_path), "--library",
         str(tmp_path / "lib"), "--model", MODEL, "--ray", "not-an-address"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "not a Ray address" in proc.stderr, proc.stderr


class socket_free_port:
    """A TCP port nobody listens on (bound, then closed before use)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = int(s.getsockname()[1])
        s.close()
        return self.port

    def __exit__(self, *_: object) -> None:
        pass


def _sounds(tmp_path: Path, drumkit_dir: Path) -> tuple[Path, Path]:
    """A few dozen real one-shots and their library indexed locally (the reference)."""
    root = _copy_kits(drumkit_dir, tmp_path / "Drums", KITS_FOR_PARITY)
    local = tmp_path / "local"
    assert _index(local, root, "--jobs", "1") == 0
    return root, local


def _pids(name: str) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(name):
            out.append(p.pid)
    return out


def _fault_when(ready: Callable[[], bool], fault: Callable[[], None]) -> list[bool]:
    """Run ``fault`` in a thread as soon as ``ready()`` holds (mid-run: the actors exist
    and have calls queued).  Polled: a process table has no events to wait on."""
    fired: list[bool] = []

    def loop() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ready():
            time.sleep(0.01)
        fault()
        fired.append(True)

    threading.Thread(target=loop, daemon=True).start()
    return fired


def test_sigkill_workers_mid_run(cluster: Any, drumkit_dir: Path, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    from emberd.library.ray_index import RayIndexer

    root, local = _sounds(tmp_path, drumkit_dir)
    ix = RayIndexer(tmp_path / "ray", MODEL, address=cluster.address)

    old = set(_pids("ray::EmbedActor"))  # earlier runs' actors may still be exiting

    def kill() -> None:  # this run's embedding actors and one feature worker
        for pid in [p for p in _pids("ray::EmbedActor") if p not in old] + _pids(
                "ray::prepare_on_node")[:1]:
            os.kill(pid, signal.SIGKILL)

    fired = _fault_when(lambda: len(set(_pids("ray::EmbedActor")) - old) >= 2, kill)
    with caplog.at_level(logging.WARNING, logger="emberd.library.ray_index"):
        try:
            summary = ix.run([str(root)])
        finally:
            ix.close()
    assert fired and any("Ray actor lost" in r.message for r in caplog.records)
    assert summary.indexed == 30
    assert assert_same_library(tmp_path / "ray", local) == 30


def test_ctrl_c_leaves_a_consistent_library(cluster: Any, drumkit_dir: Path,
                                            tmp_path: Path) -> None:
    root, local = _sounds(tmp_path, drumkit_dir)
    lib = tmp_path / "ray"
    proc = subprocess.Popen(
        [sys.executable, "-m", "emberd", "index", str(root), "--library", str(lib), "--model",
         MODEL, "--quiet", "--ray", cluster.address],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    stored = 0
    while proc.poll() is None and time.monotonic() < deadline:
        if (lib / "library.sqlite").exists():
            conn = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True)
            try:
                stored = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0  # schema not created yet
            finally:
                conn.close()
            if stored:
                break
        time.sleep(0.02)  # polling a file another process writes; nothing to sync on
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 0), err[-2000:]
    state = library_state(lib)
    assert state and all(f["vectors"] and f["fp"] for f in state.values())  # whole files only
    assert _index(lib, root, "--ray", cluster.address) == 0  # the next run completes it
    assert assert_same_library(lib, local) == 30


def test_feature_worker_is_not_reaped_between_tasks(cluster: Any, drumkit_dir: Path) -> None:
    """A worker that ran a run's feature task keeps the run's front end, and with it its
    process: Ray's idle-worker reaper asks idle workers to exit once a node has more
    workers than CPUs (the embedding actor + feature workers on a 1-CPU node), and each
    restart cost ~1 CPU-s.  The control, a worker given the front end by value that went
    idle later, is reaped on the same node instead.  (Not keeping the reference: the kept
    worker was reaped and the control lived, checked once.)"""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from emberd.library.indexer import _Job
    from emberd.library.ray_index import connect
    from emberd.models.registry import resolve

    connect(cluster.address)
    try:
        node = next(iter(cluster.worker_nodes)).node_id
        here = NodeAffinitySchedulingStrategy(node, soft=False)

        @ray.remote(num_cpus=0, scheduling_strategy=here)
        class Holder:  # stands for the embedding actor: one more worker on the node
            def ping(self) -> int:
                return os.getpid()

        def prepare_here(job: Any, frontend: Any, wait_s: float) -> int:  # pickled by
            # value: the workers cannot import this test module
            import os
            import time

            from emberd.library.ray_index import prepare_on_node

            time.sleep(wait_s)  # both test tasks run at once, so in two worker processes
            assert prepare_on_node(job, frontend)["ok"]
            return os.getpid()

        holder = Holder.remote()  # type: ignore[attr-defined]
        ray.get(holder.ping.remote())
        frontend = resolve(MODEL).frontend()
        job = _Job(str(next((drumkit_dir / "Audiophob").glob("*.wav"))), True)
        task = ray.remote(prepare_here).options(num_cpus=0.5, scheduling_strategy=here)
        ref = ray.put(frontend)
        # The kept worker goes idle first: the reaper (oldest idle first, until the node
        # is at its soft limit) would take it, not the control, if nothing kept it.
        kept_pid, control_pid = ray.get(
            [task.remote(job, [ref], 1.0), task.remote(job, frontend, 3.0)])
        assert kept_pid != control_pid
        import psutil

        deadline = time.monotonic() + 120  # the reaper runs every 0.2 s after 1 s idle
        while (psutil.pid_exists(control_pid) and psutil.pid_exists(kept_pid)
               and time.monotonic() < deadline):
            time.sleep(0.2)
        assert psutil.pid_exists(kept_pid), "the worker holding the run's front end was reaped"
        assert not psutil.pid_exists(control_pid), "the reaper never ran: no control"
        ray.kill(holder)
    finally:
        ray.shutdown()


def test_node_removed_mid_run(cluster: Any, drumkit_dir: Path, tmp_path: Path,
                              caplog: pytest.LogCaptureFixture) -> None:
    """Runs last in the module: it takes the second node away, then puts one back."""
    from emberd.library.ray_index import RayIndexer

    root, local = _sounds(tmp_path, drumkit_dir)
    worker = next(n for n in cluster.worker_nodes)
    ix = RayIndexer(tmp_path / "ray", MODEL, address=cluster.address)
    assert ix.resources.nodes == 2 and ix.resources.actors == 2
    old = set(_pids("ray::EmbedActor"))
    fired = _fault_when(lambda: len(set(_pids("ray::EmbedActor")) - old) >= 2,
                        lambda: cluster.remove_node(worker, allow_graceful=False))
    with caplog.at_level(logging.WARNING, logger="emberd.library.ray_index"):
        try:
            summary = ix.run([str(root)])
        finally:
            ix.close()
            cluster.add_node(**cluster.node_args)
    assert fired and any("Ray actor lost" in r.message for r in caplog.records)
    assert summary.indexed == 30 and not [s for s in summary.skipped if "Ray" in s.reason]
    assert assert_same_library(tmp_path / "ray", local) == 30


def test_pool_layout_per_node() -> None:
    from emberd.library.ray_index import plan_resources

    def node(i: int, cpus: float, gpus: float = 0, alive: bool = True) -> dict[str, Any]:
        return {"NodeID": f"n{i}", "Alive": alive,
                "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}

    small = plan_resources([node(0, 1), node(1, 1), node(2, 1, alive=False)])
    assert small.placement == (("n0", 1), ("n1", 1)) and small.actors == 2
    assert (small.actor_cpus, small.threads, small.task_cpus) == (0.5, 1, 0.5)
    big = plan_resources([node(0, 16), node(1, 16)])
    assert (big.actor_cpus, big.threads, big.task_cpus) == (8.0, 8, 1.0)  # intra-op = CPUs
    gpu = plan_resources([node(0, 16, gpus=2), node(1, 8)])
    assert gpu.placement == (("n0", 2),) and gpu.actor_gpus == 1 and gpu.threads == 1
    assert plan_resources([node(0, 4)], actors=3).placement == (("n0", 3),)
    with pytest.raises(EmberdError, match="no alive node"):
        plan_resources([node(0, 4, alive=False)])
