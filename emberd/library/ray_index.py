"""``emberd index --ray``: the same indexing, spread over a Ray cluster.

Who runs what::

    driver (this process)    scan, decide new/changed/removed (Indexer.plan), submit,
                             then store results in scan order: the library's ONLY writer,
                             one SQLite transaction per BATCH_FILES files, as a local run
    Ray tasks (any node)     prepare_file on one path: decode, resample, mel, landmarks,
                             onset template and snippet (the indexer's own function)
    Ray actors (the pool)    one ONNX Runtime session each (CUDA with num_gpus=1 on GPU
                             nodes; on CPU nodes intra-op threads = the actor's CPUs, inter-op
                             1); each call embeds the windows of GROUP_FILES files

Files are read by path on whichever node runs the task: every node must see the indexed
folders at the same path (a shared filesystem: NFS, SMB, a cluster filesystem), and emberd
must be installed on every node.  A node that cannot read a file reports it as skipped
with the node's address and reason; the file stays out of the library and the next run
tries it again.  The model's ``.onnx`` file travels with the job (object store), so the
nodes need no fetched models.

Faults: a feature task whose worker or node dies is retried by Ray (TASK_RETRIES); a call
whose actor dies is resubmitted by the driver to another actor (GROUP_ATTEMPTS), and the
dead actor is replaced by a new one, placed by Ray wherever the cluster has room.  Results
are committed in order, each file once, so retries cost time, never data.  A driver
stopped by Ctrl-C or SIGKILL leaves every committed batch complete (the same guarantee as
a local run); the next run, with or without Ray, does the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from emberd.errors import ComponentMissing, EmberdError
from emberd.library.indexer import Indexer, _Job, embed_files, prepare_file
from emberd.library.scan import Candidate

log = logging.getLogger(__name__)

GROUP_FILES = 8  # files per actor call: windows of several one-shots fill an encoder batch
IN_FLIGHT_GROUPS_PER_ACTOR = 3  # queued calls per actor (bounds driver and object memory)
TASKS_AHEAD_PER_SLOT = 4  # files in flight per feature-task slot (a 16-CPU GPU node: 64)
TASK_RETRIES = 4  # Ray re-runs a feature task whose worker process or node died
GROUP_ATTEMPTS = 4  # actor calls per group before the run stops with a clear message
POLL_S = 2.0  # s between checks on a call that has not answered yet
STALL_S = 600.0  # s without any answer from the cluster: stop with a clear message
MAX_REPLACEMENTS = 16  # dead actors replaced per run before it stops (a model that cannot load)
EMBED_CPU_SHARE = 0.5  # of a CPU node's CPUs reserved by its embedding actor
MIN_ACTOR_CPUS = 0.5  # a 1-CPU node: half for the actor, half for feature tasks
CONNECT_TIMEOUT_S = 5.0  # TCP probe of a head address before ray.init (which retries forever)
LOCAL = "local"  # --ray without an address: start Ray on this machine
MODEL_DIGEST_CHARS = 16  # hex digits of the model's SHA-256 naming its node copy
PART_STALE_S = 600.0  # a half-written node copy this old belongs to a killed actor


def ray_module() -> Any:
    """Import Ray, or say how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ComponentMissing(
            "Ray is not installed; fix with: pip install 'emberd[ray]'"
        ) from exc
    return ray


def _check_address(address: str) -> None:
    """Refuse an address that is not Ray's form; probe a head's port so an unreachable
    cluster is one line, not ray.init's endless reconnect loop."""
    if address in ("auto", LOCAL):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise EmberdError(
            f"--ray {address}: not a Ray address (auto, HOST:PORT or ray://HOST:PORT; "
            "put --ray after the folders)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EmberdError(
            f"cannot reach Ray at {address} ({exc.strerror or exc}); start it with "
            "'ray start --head' or pass its address"
        ) from None


def connect(address: str) -> Any:
    """Connect to (or start) Ray; returns the ``ray`` module.

    Parameters
    ----------
    address : str
        ``"local"`` (a new Ray on this machine, bound to 127.0.0.1), ``"auto"``
        (the cluster this machine belongs to) or a head's ``HOST:PORT`` /
        ``ray://HOST:PORT``.

    Raises
    ------
    EmberdError
        Ray missing, address malformed or unreachable, authentication refused.
    """
    ray = ray_module()
    _check_address(address)
    if ray.is_initialized():
        return ray
    ray_log = logging.getLogger("ray")
    level = ray_log.level
    ray_log.setLevel(logging.ERROR)  # Ray's start-up banners would break the progress bar
    try:
        if address == LOCAL:
            ray.init(
                address="local",
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        else:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        raise EmberdError(f"cannot connect to Ray at {address}: {_first_line(exc)}") from None
    finally:
        ray_log.setLevel(level)
    return ray


@dataclass(frozen=True)
class Resources:
    """How the pool is laid out on the cluster (decided once, at start)."""

    nodes: int
    cpus: float
    gpus: float
    actors: int
    actor_cpus: float
    actor_gpus: int
    threads: int  # ONNX Runtime intra-op threads per actor
    task_cpus: float
    placement: tuple[tuple[str, int], ...] = ()  # (node id, actors pinned to it)

    def line(self, address: str) -> str:
        """One line for the start of the progress output."""
        device = "CUDA" if self.actor_gpus else "CPU"
        return (
            f"ray {address}: {self.nodes} nodes, {self.cpus:g} CPUs, {self.gpus:g} GPUs; "
            f"{self.actors} embedding actors ({device}, {self.actor_cpus:g} CPU, "
            f"{self.threads} ONNX threads each), feature tasks {self.task_cpus:g} CPU each"
        )


def plan_resources(nodes: list[dict[str, Any]], *, actors: int = 0) -> Resources:
    """Lay the actor pool out on the alive nodes of ``ray.nodes()``.

    GPU nodes: one actor per GPU (``num_gpus=1``, one CPU to feed it), feature tasks
    on the other CPUs.  CPU nodes: one actor per node holding EMBED_CPU_SHARE of its
    CPUs (at least MIN_ACTOR_CPUS) with as many ONNX threads; feature tasks take one
    CPU, or half of one on 1-CPU nodes so a task and the actor share the node.  Each
    actor is pinned to its node: a node that dies takes its actors with it instead of
    crowding them onto the survivors, where they would hold the CPUs feature tasks need.
    ``actors`` overrides the actors per node.
    """
    alive = [n for n in nodes if n.get("Alive")]
    if not alive:
        raise EmberdError("the Ray cluster has no alive node")
    cpus = [float(n["Resources"].get("CPU", 0.0)) for n in alive]
    gpus = [int(n["Resources"].get("GPU", 0.0)) for n in alive]
    min_cpus = min(c for c in cpus if c > 0) if any(c > 0 for c in cpus) else 0.0
    if min_cpus <= 0:
        raise EmberdError("the Ray cluster has no CPUs for feature tasks")
    if sum(gpus) >= 1:
        per_node = [actors or g for g in gpus]
        actor_cpus, actor_gpus, threads = 1.0, 1, 1
    else:
        per_node = [actors or 1 for _ in alive]
        actor_cpus = max(MIN_ACTOR_CPUS, float(int(min_cpus * EMBED_CPU_SHARE)))
        actor_gpus, threads = 0, max(1, int(actor_cpus))
    placement = tuple((str(n["NodeID"]), k) for n, k in zip(alive, per_node, strict=True) if k)
    task_cpus = 1.0 if min_cpus >= 2 else 0.5
    return Resources(
        nodes=len(alive), cpus=sum(cpus), gpus=float(sum(gpus)), actors=sum(per_node),
        actor_cpus=actor_cpus, actor_gpus=actor_gpus, threads=threads, task_cpus=task_cpus,
        placement=placement,
    )


# The run's front end in this worker: [its ObjectRef, the fetched value] (empty until the
# first task).  Keeping the reference also keeps the worker: Ray's idle-worker reaper asks
# an idle worker to exit, and a worker that holds an object reference declines.  Without it,
# on a node where the embedding actor and the task workers outnumber the node's CPUs (Ray's
# worker soft limit; a 1-CPU node: actor + one task worker), the feature worker was killed
# after 1 s waiting for the actor, and each restart cost ~1 CPU-s of start-up and imports
# (7 workers for 300 files on a 1-CPU node at load 8; see README, Scaling out).
_FRONTEND: list[Any] = []


def _run_frontend(frontend: Any) -> Any:
    """The front end a task was given: ``[ref]`` (a run's tasks: fetched once per worker
    and kept, see ``_FRONTEND``) or the value itself."""
    if not isinstance(frontend, list):
        return frontend
    ref = frontend[0]
    if not _FRONTEND or _FRONTEND[0] != ref:
        import ray

        _FRONTEND[:] = [ref, ray.get(ref)]  # a new run: drop the last run's reference
    return _FRONTEND[1]


def prepare_on_node(job: _Job, frontend: Any) -> dict[str, Any]:
    """:func:`emberd.library.indexer.prepare_file` as a Ray task: a file this node cannot
    read is reported with the node's address (the shared-filesystem rule).

    Parameters
    ----------
    job : _Job
        The file and what to compute for it.
    frontend : FrontEndConfig or list of ObjectRef
        The front end, or ``[ref]`` to it in the object store (nested, so the worker
        fetches it once and keeps the reference between tasks).
    """
    if not os.access(job.path, os.R_OK):
        why = "no such file" if not os.path.exists(job.path) else "permission denied"
        return {
            "ok": False,
            "reason": f"cannot read it on Ray node {_node_address()}: {why} (every node must "
            "see the indexed folders at the same path)",
        }
    return prepare_file(job, _run_frontend(frontend))


def _runs_onnx_file(manifest: Any) -> bool:
    """Whether emberd builds this model's encoder from its ``.onnx`` file (built-ins and
    imported models), so actors can run a shipped copy."""
    if manifest.origin == "user":
        return True
    from emberd import plugins

    return bool(plugins.require(plugins.GROUP_ENCODERS, manifest.name).builtin)


def _node_address() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # outside a Ray worker: the host name says as much
        return socket.gethostname()


@contextlib.contextmanager
def _node_copy(model_bytes: bytes, name: str) -> Iterator[str]:
    """The node's copy of a shipped model file while an actor builds its session.

    Actors are killed (``ray.kill``, a lost node, a pool that shrinks while one still
    starts), never finalised, so a temporary folder per actor was left behind on every
    run. The copy lives in the user's cache instead (``ray-models/<sha256>/``), written
    once per model content and reused by every later actor; a concurrent writer replaces
    it atomically with the same bytes. Where the node has no writable cache, a private
    temporary folder serves the session's start and is removed when it is built (ONNX
    Runtime reads the file only then).
    """
    import hashlib

    from emberd.paths import cache_dir

    digest = hashlib.sha256(model_bytes).hexdigest()[:MODEL_DIGEST_CHARS]
    try:
        folder = cache_dir() / "ray-models" / digest
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        with tempfile.TemporaryDirectory(prefix="emberd-ray-model-") as tmp:
            path = os.path.join(tmp, name)
            with open(path, "wb") as fh:
                fh.write(model_bytes)
            yield path
        return
    path = str(folder / name)
    if not _same_bytes(path, model_bytes):
        now = time.time()
        for part in folder.glob(".part-*"):  # left by an actor killed while writing
            with contextlib.suppress(OSError):
                if now - part.stat().st_mtime > PART_STALE_S:
                    part.unlink()
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(model_bytes)
            os.replace(tmp_path, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
    yield path


def _same_bytes(path: str, data: bytes) -> bool:
    """Whether ``path`` holds exactly ``data`` (the size first: no read of a wrong file)."""
    try:
        if os.path.getsize(path) != len(data):
            return False
        with open(path, "rb") as fh:
            return fh.read() == data
    except OSError:
        return False


class EmbedActor:
    """One ONNX Runtime session; embeds the windows of a group of prepared files.

    Parameters
    ----------
    manifest : ModelManifest
        The model (its ``path`` is replaced by a local copy of ``model_bytes``).
    model : list of ObjectRef
        ``[ref]`` to the ``.onnx`` file's bytes in the object store (nested, so the
        actor fetches it itself), or ``[None]`` for a third-party encoder, loaded through
        its entry point on the node.
    device : {"cpu", "auto"}
        ``auto`` on GPU actors (CUDA provider, CPU fallback with a warning).
    threads : int
        Intra-op threads (inter-op is always 1).
    skip_silence : bool or None
        As the local indexer's encoder (None: the manifest decides).
    """

    def __init__(self, manifest: Any, model: list[Any], device: str, threads: int,
                 skip_silence: bool | None) -> None:
        import ray

        from emberd.models.plugin import load_encoder
        from emberd.models.runtime import Encoder

        self.manifest = manifest
        if model[0] is None:
            self.encoder = load_encoder(manifest, device=device, threads=threads,
                                        skip_silence=skip_silence)
            return
        with _node_copy(ray.get(model[0]), os.path.basename(str(manifest.path))) as path:
            # The same Encoder the built-in entry points build, on the shipped copy.
            self.manifest = dataclasses.replace(manifest, path=type(manifest.path)(path))
            self.encoder = Encoder(self.manifest, device=device, threads=threads,
                                   skip_silence=skip_silence)

    def ping(self) -> str:
        """The active execution provider (also: the actor is up)."""
        return str(getattr(self.encoder, "provider", "plug-in"))

    def embed(self, refs: list[Any]) -> list[dict[str, Any]]:
        """Wait for a group's feature tasks and embed their windows in one pass.

        A file whose task failed for good (its decoder crashed on every retry, or raised)
        comes back skipped with the reason; any other Ray failure fails the call, and the
        driver submits the group again.
        """
        import ray

        results: list[dict[str, Any]] = []
        for ref in refs:
            try:
                res = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError) as exc:
                res = {"ok": False, "reason": f"decoder failed ({_cause(exc)})"}
            results.append(res)
        todo = [r for r in results if r["ok"] and r["need_embedding"]]
        for res, span in zip(
            todo, embed_files(self.encoder, [r["mel"] for r in todo], self.manifest), strict=True
        ):
            res["embedded"] = (span[0], np.ascontiguousarray(span[1]))
        for res in results:
            res.pop("mel", None)  # the driver stores vectors, never mels: keep transfers small
        return results


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__


class RayIndexer(Indexer):
    """:class:`~emberd.library.indexer.Indexer` whose decoding and embedding run on Ray.

    Parameters
    ----------
    library, model
        As for :class:`Indexer`.
    address : str
        ``"local"``, ``"auto"`` or a head address (see :func:`connect`).
    actors : int
        Embedding actors per node (0: one per GPU, or one per CPU node).
    skip_silence, on_wait
        As for :class:`Indexer` (the actors' encoders skip silence the same way).
    """

    def __init__(
        self,
        library: str | os.PathLike[str],
        model: str,
        *,
        address: str = LOCAL,
        actors: int = 0,
        skip_silence: bool | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        from emberd.models.registry import resolve

        manifest = resolve(model)  # an unknown model: no Ray start, no library writes
        if actors < 0:
            raise EmberdError(f"--ray-actors {actors}: must be 0 (automatic) or more per node")
        self.ray = connect(address)
        self.address = address
        try:
            super().__init__(library, model, jobs=0, threads=1, skip_silence=skip_silence,
                             on_wait=on_wait)
            self.resources = plan_resources(self.ray.nodes(), actors=actors)
            self._model_ref = None  # a third-party encoder loads on each node (installed there)
            if _runs_onnx_file(manifest):
                with open(manifest.path, "rb") as fh:
                    self._model_ref = self.ray.put(fh.read())
        except BaseException:
            self.ray.shutdown()
            raise
        self._actors: list[Any] = []

    def close(self) -> None:
        """Close the library and disconnect from Ray (a local Ray stops)."""
        try:
            super().close()
        finally:
            self.ray.shutdown()

    # -- the pool -------------------------------------------------------------------

    def _new_actor(self, node_id: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        r = self.resources
        cls = self.ray.remote(EmbedActor).options(
            num_cpus=r.actor_cpus,
            num_gpus=r.actor_gpus,
            max_restarts=0,  # the driver replaces a dead actor and resubmits its calls
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        device = "auto" if r.actor_gpus else "cpu"
        return cls.remote(self.manifest, [self._model_ref], device, r.threads, self.skip_silence)

    def _prepared(self, jobs: list[_Job]) -> Iterator[tuple[_Job, dict[str, Any]]]:
        """Yield (job, result with embeddings) in job order, computed on the cluster."""
        if not jobs:
            return
        ray = self.ray
        r = self.resources
        task = ray.remote(prepare_on_node).options(
            num_cpus=r.task_cpus, max_retries=TASK_RETRIES, retry_exceptions=False
        )
        frontend_ref = ray.put(self.frontend)
        pool = _Pool(ray, self._new_actor, r.placement)
        groups = [jobs[i : i + GROUP_FILES] for i in range(0, len(jobs), GROUP_FILES)]
        # Enough groups queued to keep every actor and every feature-task slot busy.
        task_slots = r.cpus / r.task_cpus
        window = max(r.actors * IN_FLIGHT_GROUPS_PER_ACTOR,
                     math.ceil(TASKS_AHEAD_PER_SLOT * task_slots / GROUP_FILES))
        pending: deque[_Slot] = deque()
        it = iter(groups)

        def submit(slot: _Slot) -> None:
            slot.attempts += 1
            if slot.tasks is None:  # a resubmitted group reuses its tasks (lineage rebuilds
                # an output lost with its node)
                slot.tasks = [task.remote(job, [frontend_ref]) for job in slot.jobs]
            slot.actor = pool.pick()
            slot.ref = slot.actor.embed.remote(slot.tasks)

        try:
            while True:
                while len(pending) < window:
                    group = next(it, None)
                    if group is None:
                        break
                    slot = _Slot(group)
                    submit(slot)
                    pending.append(slot)
                if not pending:
                    return
                slot = pending[0]
                try:
                    results = self._wait(slot, pool, submit)
                except ray.exceptions.RayActorError as exc:
                    pool.suspect(slot.actor, exc)
                    if slot.attempts >= GROUP_ATTEMPTS:
                        raise EmberdError(
                            f"Ray: embedding failed on {slot.attempts} attempts for "
                            f"{slot.jobs[0].path} and {len(slot.jobs) - 1} more "
                            f"({type(exc).__name__}); every committed file is in the library: "
                            "run the same command again"
                        ) from None
                    log.warning("Ray actor lost (%s); resubmitting %d files",
                                type(exc).__name__, len(slot.jobs))
                    submit(slot)
                    continue
                except ray.exceptions.RayError as exc:
                    cause = getattr(exc, "cause", None)
                    lost = isinstance(exc, ray.exceptions.ObjectLostError) or isinstance(
                        cause, ray.exceptions.ObjectLostError)
                    if lost and slot.attempts < GROUP_ATTEMPTS:
                        # A feature task's output went with its node and Ray could not
                        # rebuild it (ObjectReconstructionFailedError): compute the group's
                        # features again from the files, on the nodes that are left.
                        log.warning("Ray lost %d files' features (%s); computing them again",
                                    len(slot.jobs), type(exc).__name__)
                        slot.tasks = None
                        submit(slot)
                        continue
                    raise EmberdError(
                        f"Ray: {type(exc).__name__} for {slot.jobs[0].path}; every committed "
                        "file is in the library: run the same command again"
                    ) from None
                pending.popleft()
                yield from zip(slot.jobs, results, strict=True)
        finally:
            for slot in pending:  # Ctrl-C or an error: stop the cluster's work on our files
                for ref in [slot.ref, *(slot.tasks or [])]:
                    try:
                        ray.cancel(ref)
                    except Exception:  # already finished or its owner is going away
                        pass
            pool.close()

    def _wait(self, slot: _Slot, pool: _Pool, submit: Callable[[_Slot], None]) -> Any:
        """The group's results; a call queued on an actor that was replaced meanwhile is
        moved to a live one, and a cluster that makes no progress for STALL_S stops the run."""
        ray = self.ray
        waited = 0.0
        while True:
            done, _ = ray.wait([slot.ref], timeout=POLL_S)
            if done:
                return ray.get(slot.ref)
            waited += POLL_S
            if pool.is_down(slot.actor):
                log.warning("Ray actor down; moving %d files to another", len(slot.jobs))
                submit(slot)
                waited = 0.0
            elif waited >= STALL_S:
                alive = sum(bool(n.get("Alive")) for n in ray.nodes())
                raise EmberdError(
                    f"Ray made no progress for {STALL_S:.0f} s ({alive} alive nodes); every "
                    "committed file is in the library: run the same command again"
                )

    def _embed_batch(
        self, batch: list[tuple[Candidate, dict[str, Any]]]
    ) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """The actors embedded already: hand their windows to the common writer."""
        return [res["embedded"] if res["need_embedding"] else None for _cand, res in batch]


@dataclass
class _Slot:
    """One group of files in flight, in scan order."""

    jobs: list[_Job]
    tasks: list[Any] | None = None
    actor: Any = None
    ref: Any = None
    attempts: int = 0


class _Pool:
    """Round-robin over embedding actors pinned to nodes.  An actor that died is replaced
    on its node while the node lives, and dropped with its node otherwise; a replacement
    is skipped until it answers."""

    def __init__(self, ray: Any, make: Callable[[str], Any],
                 placement: tuple[tuple[str, int], ...]) -> None:
        self.ray = ray
        self.make = make
        self.nodes = [node for node, k in placement for _ in range(k)]
        self.actors = [make(node) for node in self.nodes]
        self._next = 0
        self.replaced = 0
        self._suspect: dict[int, Any] = {}  # actor index -> ping ref of its replacement

    def suspect(self, actor: Any, exc: BaseException) -> None:
        """``actor`` raised ``exc`` (RayActorError): replace or drop it."""
        for i, a in enumerate(self.actors):
            if a is not actor or i in self._suspect:
                continue
            self.replaced += 1
            if self.replaced > MAX_REPLACEMENTS:
                raise EmberdError(
                    f"Ray: embedding actors keep dying ({self.replaced - 1} replaced; last: "
                    f"{_first_line(exc)}); every committed file is in the library: run the "
                    "same command again"
                )
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # already gone with its node
                pass
            alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
            if self.nodes[i] in alive:
                self.actors[i] = self.make(self.nodes[i])
                self._suspect[i] = self.actors[i].ping.remote()
                return
            self._drop(i)
            if not self.actors:
                raise EmberdError(
                    "Ray: every node holding an embedding actor is gone; every committed "
                    "file is in the library: run the same command again"
                )
            return

    def _drop(self, i: int) -> None:
        del self.actors[i], self.nodes[i]
        self._suspect = {(j if j < i else j - 1): ref for j, ref in self._suspect.items()
                         if j != i}

    def is_down(self, actor: Any) -> bool:
        """Whether ``actor`` is gone (replaced or dropped) or a replacement not yet up
        while another actor is."""
        self._refresh()
        for i, a in enumerate(self.actors):
            if a is actor:
                return i in self._suspect and len(self._suspect) < len(self.actors)
        return True

    def _refresh(self) -> None:
        for i, ref in list(self._suspect.items()):
            if i >= len(self.actors) or self._suspect.get(i) is not ref:
                continue  # indices moved by a drop meanwhile
            done, _ = self.ray.wait([ref], timeout=0)
            if done:
                try:
                    self.ray.get(ref)
                    del self._suspect[i]
                except self.ray.exceptions.RayError as exc:  # the replacement died too
                    del self._suspect[i]
                    self.suspect(self.actors[i], exc)

    def pick(self) -> Any:
        """The next actor that is not known to be down (any, if all are)."""
        self._refresh()
        n = len(self.actors)
        for k in range(n):
            i = (self._next + k) % n
            if i not in self._suspect:
                self._next = i + 1
                return self.actors[i]
        i = self._next % n
        self._next = i + 1
        return self.actors[i]

    def close(self) -> None:
        """Stop the actors (a remote cluster keeps running for other jobs)."""
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # already dead
                pass
