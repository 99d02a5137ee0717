"""Indexing scale-out: the local indexer vs ``emberd index --ray`` with 1 and 2 nodes.

All runs index the same files into fresh libraries, in one process, one after another:

* ``local 1 CPU``: :class:`Indexer` (1 decoder process, 1 encoder thread), the whole
  process tree pinned to core 0 -- the anchor;
* ``ray 1 node``: a local Ray cluster (``ray.cluster_utils.Cluster``) whose head has
  ``num_cpus=1`` and is pinned to core 0 (its raylet and workers inherit the affinity);
  the driver is pinned to core 0 as well, so the run uses one core like the anchor;
* ``ray 2 nodes``: the same cluster plus a second 1-CPU node pinned to core 1
  (driver still on core 0);
* ``local 2 CPUs``: the indexer with 2 decoder processes and 2 encoder threads, unpinned.

Rates are steady-state files/s: from the first 10 % of the files to the last (worker
start-up and imports are left out: they do not grow with the library); the wall-clock
rate of the whole run, start-up included, is printed beside.  Each run also counts the
CPU time of this process and all its descendants (decoder processes, Ray's GCS,
raylets and workers) per indexed file over the same steady part: on a shared box the
wall rate of a pinned run moves with whatever else lands on its core, the CPU per file
much less.  The 1-core
pair (local, Ray 1 node) runs ``--repeats`` times, alternating, each Ray run on a
fresh cluster (an idle cluster's daemons would otherwise share the anchor's core);
the overhead is the median over the pairs.  The extrapolated hours for
100k and 1M files use the steady rate.  Goals: 2 nodes >= 1.7x one node; Ray at 1 node
within 10 % of the local indexer at 1 CPU.

``--gpu``: one more run on a 1-node cluster with all CPUs and one GPU (one CUDA actor),
against the local indexer on all CPUs; for a lent GPU machine with onnxruntime-gpu (the
double-install guard is relaxed in the Ray workers here, and only here, as in
``bench/gpu_encoders.py``).

Usage: ``flock /tmp/emberd-bench.lock python bench/index_scale.py [--model aisfx]
[--limit N] [--gpu] [DIR]``
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emberd.library.indexer import Indexer
from emberd.library.scan import scan

KITS = "/usr/share/hydrogen/data/drumkits"
OBJECT_STORE_BYTES = 200 * 2**20  # per node
WARM_FRACTION = 0.1  # steady rate measured from this fraction of the files on
CPU_SAMPLE_FILES = 8  # files between readings of the process tree's CPU times
BURST_S = 1e-3  # s; progress calls closer than this belong to one burst of results
HOURS = (100_000, 1_000_000)  # extrapolated library sizes
GOAL_SCALING = 1.7  # 2 nodes vs 1 node
GOAL_OVERHEAD = 0.10  # Ray 1 node vs local 1 CPU


@contextmanager
def pinned(cores: set[int] | None) -> Iterator[None]:
    """Pin this process (and what it starts meanwhile) to ``cores``; None: leave as is."""
    before = os.sched_getaffinity(0)
    if cores is not None:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


ROLES = ("driver", "actor", "feature workers", "other")  # the CPU split's columns
_ROLE: dict[tuple[int, float], str] = {}  # (pid, start time) -> role, once known


def _role(p: Any, me: Any) -> str:
    """Which part of the run a process is: the driver (this process), the embedding
    actor, a feature-task worker (Ray workers other than the actor; local decoder
    processes), or other (Ray's GCS, raylet with its plasma store, agents, monitors)."""
    if p.pid == me.pid:
        return "driver"
    title = " ".join(p.cmdline())
    if "EmbedActor" in title:
        return "actor"
    if title.startswith("ray::") and "Agent" not in title:
        return "feature workers"  # ray::IDLE or ray::prepare_on_node
    if "multiprocessing" in title:
        return "feature workers"  # the local indexer's decoder processes
    return "other"


def tree_cpu() -> dict[tuple[int, float], float]:
    """CPU seconds (user + system) of this process and every live descendant, by
    (pid, start time); each one's role is noted in ``_ROLE`` the first time it is seen
    (a process title that says which it is: a new actor reads ray::IDLE at first)."""
    import psutil

    me = psutil.Process()
    out: dict[tuple[int, float], float] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            key = (p.pid, p.create_time())
            out[key] = t.user + t.system
            if _ROLE.get(key, "feature workers") == "feature workers":
                _ROLE[key] = _role(p, me)  # an actor may read ray::IDLE before it starts
        except psutil.Error:
            continue  # exited meanwhile
    return out


class Clock:
    """Progress callback recording when each file finished."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.times: list[float] = []
        self.warm_cpu: dict[tuple[int, float], float] | None = None
        self.last_cpu: dict[tuple[int, float], float] = {}
        self.warm_done = 0

    def __call__(self, done: int, total: int) -> None:
        self.times.append(time.perf_counter())
        if self.warm_cpu is None:
            if done >= max(1, int(total * WARM_FRACTION)):
                self.warm_cpu, self.warm_done = tree_cpu(), done  # steady CPU from here
        elif done % CPU_SAMPLE_FILES == 0 or done == total:
            # Processes can end before the run returns (Ray stops a job's actors): keep
            # each one's last reading.
            self.last_cpu.update(tree_cpu())

    def steady_cpu_s(self) -> float:
        """CPU seconds of the process tree from the warm point to the last file."""
        return sum(self.steady_split_s().values()) if self.warm_cpu is not None else math.nan

    def steady_split_s(self) -> dict[str, float]:
        """:meth:`steady_cpu_s` by role (see :func:`_role`); processes that started after
        the warm point (a restarted worker) count whole, start-up included."""
        split = dict.fromkeys(ROLES, 0.0)
        warm = self.warm_cpu or {}
        for key, t in self.last_cpu.items():
            split[_ROLE.get(key, "other")] += t - warm.get(key, 0.0)
        return split

    def rates(self) -> tuple[float, float]:
        """(steady files/s, whole-run files/s)."""
        n = len(self.times)
        if n < 2:
            return 0.0, 0.0
        # Files arrive in bursts (Ray: a group of files per actor call): start the clock at
        # the first burst after WARM_FRACTION of the files, and count the files after it.
        first = max(1, int(n * WARM_FRACTION))
        start = self.times[first - 1]
        later = sum(t > start + BURST_S for t in self.times)
        steady = later / max(self.times[-1] - start, 1e-9)
        return steady, n / max(self.times[-1] - self.t0, 1e-9)


def _counts(lib: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        return tuple(  # type: ignore[return-value]
            conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("files", "vectors", "fingerprints")
        )
    finally:
        conn.close()


def run(name: str, make: Callable[[Path], Any], root: str, work: Path,
        cores: set[int] | None) -> dict[str, Any]:
    """Index ``root`` into a fresh library with the indexer ``make`` builds."""
    lib = work / name.replace(" ", "-")
    shutil.rmtree(lib, ignore_errors=True)  # a repeat starts from an empty library again
    clock = Clock()
    with pinned(cores):
        ix = make(lib)
        try:
            summary = ix.run([root], progress=clock)
        finally:
            ix.close()
    steady, whole = clock.rates()
    files = max(summary.indexed - clock.warm_done, 1)
    cpu_ms = 1000.0 * clock.steady_cpu_s() / files
    split = {k: 1000.0 * v / files for k, v in clock.steady_split_s().items()}
    row = {"name": name, "steady": steady, "whole": whole, "indexed": summary.indexed,
           "cpu_ms": cpu_ms, "counts": _counts(lib), "line": getattr(ix, "resources_line", "")}
    print(f"  {name:14s} {steady:7.1f} files/s steady, {whole:6.1f} whole run, "
          f"{cpu_ms:6.1f} CPU ms per file, load {os.getloadavg()[0]:.2f} "
          f"({summary.indexed} indexed; files/vectors/landmarks {row['counts']})", flush=True)
    print(f"  {'':14s} CPU ms per file: "
          + ", ".join(f"{k} {v:.1f}" for k, v in split.items()), flush=True)
    return row


def _relax_double_install_guard() -> None:  # pragma: no cover - GPU machines only
    from emberd.models import onnxrt

    onnxrt._installed = lambda dist: dist == "onnxruntime-gpu"  # type: ignore[assignment]
    onnxrt.onnxruntime.cache_clear()


def ray_indexer(address: str, model: str, *, gpu: bool = False) -> Callable[[Path], Any]:
    """A factory of RayIndexers on ``address`` (connecting per run, as the CLI does)."""
    def make(lib: Path) -> Any:
        import ray

        from emberd.library.ray_index import RayIndexer

        runtime_env = {"worker_process_setup_hook": _relax_double_install_guard} if gpu else None
        if gpu:
            _relax_double_install_guard()
        ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                 runtime_env=runtime_env)
        ix = RayIndexer(lib, model, address=address)
        ix.resources_line = ix.resources.line(address)
        print("  " + ix.resources_line, flush=True)
        return ix
    return make


def main() -> None:
    """Run the engines on the same files and print rates, ratios and goals."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=KITS)
    ap.add_argument("--model", default="aisfx")
    ap.add_argument("--limit", type=int, default=300, help="files (0: all)")
    ap.add_argument("--gpu", action="store_true", help="also a CUDA-actor run (GPU machine)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="alternating (local 1 CPU, Ray 1 node) pairs")  # fmt: skip
    args = ap.parse_args()

    from ray.cluster_utils import Cluster

    files = [c.path for c in scan([args.dir]).candidates]
    if args.limit:
        files = files[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="emberd-scale-"))
    root = work / "files"
    root.mkdir()
    for i, f in enumerate(files):  # the same files for every run
        os.symlink(f, root / f"{i:06d}{Path(f).suffix}")
    cores = sorted(os.sched_getaffinity(0))
    print(f"{len(files)} files, model {args.model}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), load average "
          f"{os.getloadavg()[0]:.2f}; cores used: {cores[:2]}")
    if len(cores) < 2:
        raise SystemExit("needs 2 cores (one per Ray node)")
    c0, c1 = {cores[0]}, {cores[1]}
    rows: dict[str, dict[str, Any]] = {}
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    node = {"num_cpus": 1, "num_gpus": 0, "object_store_memory": OBJECT_STORE_BYTES}
    try:
        for rep in range(max(1, args.repeats)):
            last = rep == max(1, args.repeats) - 1
            local1 = run("local 1 CPU", lambda lib: Indexer(lib, args.model, jobs=1, threads=1),
                         str(root), work, c0)  # fmt: skip
            with pinned(c0):
                cluster = Cluster(initialize_head=True,
                                  head_node_args={**node, "include_dashboard": False})
            try:
                make = ray_indexer(cluster.address, args.model)
                ray1 = run("ray 1 node", make, str(root), work, c0)
                pairs.append((local1, ray1))
                if last:
                    with pinned(c1):
                        cluster.add_node(**node)
                    cluster.wait_for_nodes()
                    rows["ray2"] = run("ray 2 nodes", make, str(root), work, c0)
            finally:
                import ray

                ray.shutdown()
                cluster.shutdown()
        rows["local1"], rows["ray1"] = pairs[-1]
        rows["local2"] = run("local 2 CPUs", lambda lib: Indexer(lib, args.model, jobs=2,
                                                                  threads=2), str(root), work,
                             None)
        if args.gpu:
            n_cpu = len(cores)
            gpu_cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": n_cpu, "num_gpus": 1, "include_dashboard": False})
            try:
                rows["gpu"] = run("ray 1 GPU node", ray_indexer(gpu_cluster.address,
                                                                args.model, gpu=True),
                                  str(root), work, None)
            finally:
                gpu_cluster.shutdown()
            rows["localN"] = run(f"local {n_cpu} jobs", lambda lib: Indexer(
                lib, args.model, jobs=n_cpu, threads=2), str(root), work, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref = rows["local1"]["counts"]
    same = all(r["counts"] == ref for r in rows.values())
    print(f"same files/vectors/landmarks in every library: {same}")
    print("\nextrapolated hours at the steady rate:")
    for r in rows.values():
        hours = ", ".join(f"{n // 1000}k files {n / r['steady'] / 3600:.1f} h" for n in HOURS)
        print(f"  {r['name']:14s} {hours}")
    scaling = rows["ray2"]["steady"] / rows["ray1"]["steady"]
    import statistics

    overheads = [1 - r["steady"] / loc["steady"] for loc, r in pairs]
    cpu_overheads = [r["cpu_ms"] / loc["cpu_ms"] - 1 for loc, r in pairs]
    overhead = statistics.median(overheads)
    overhead2 = 1 - rows["ray2"]["steady"] / rows["local2"]["steady"]
    met = {True: "met", False: "NOT met"}
    print(f"\nray 2 nodes / 1 node: {scaling:.2f}x (goal >= {GOAL_SCALING}x: "
          f"{met[scaling >= GOAL_SCALING]})")
    print(f"ray 1 node vs local 1 CPU: overhead {overhead:+.1%} (median of "
          f"{', '.join(f'{o:+.1%}' for o in overheads)}; negative: Ray faster; goal <= "
          f"{GOAL_OVERHEAD:.0%}: {met[overhead <= GOAL_OVERHEAD]}); CPU per file "
          f"{', '.join(f'{o:+.1%}' for o in cpu_overheads)}")
    print(f"ray 2 nodes vs local 2 CPUs: overhead {overhead2:+.1%}")
    if "gpu" in rows:
        print(f"ray 1 GPU node: {rows['gpu']['steady']:.0f} files/s (goal >= 500: "
              f"{met[rows['gpu']['steady'] >= 500]}); 1M files on 1 node "
              f"{1e6 / rows['gpu']['steady'] / 3600:.2f} h")


if __name__ == "__main__":
    main()
