"""``emberd index``: scan, decode in worker processes, embed in batches, commit per batch.

Pipeline::

    scan (main) -> decode + resample + mel + landmarks (N worker processes)
                -> windows of all files in a batch -> Encoder.embed (main, batched)
                -> one SQLite transaction per batch -> Annoy index rebuilt at the end

Workers are started before the encoder exists, from a module-level function,
so the code runs under the ``spawn`` start method (no inherited ONNX Runtime
threads, no closures).  A SIGKILL loses at most the batch in flight: every
committed batch is complete (file row + vectors + landmarks together), and
the previous Annoy index stays in place until its replacement is renamed in.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emberd.dsp.resample import mono_at
from emberd.dsp.silence import SILENCE_PEAK_DBFS, no_sound_reason
from emberd.errors import EmberdError
from emberd.library import fingerprint, waveform
from emberd.library.classifier import fit_library_head
from emberd.library.scan import Candidate, ScanResult, Skip, scan
from emberd.library.store import Store

log = logging.getLogger(__name__)

BATCH_FILES = 16  # files per transaction: small enough that a kill loses little
EMBED_BATCH_WINDOWS = 64  # windows per encoder call
IN_FLIGHT_PER_JOB = 4  # decoded files queued per worker (bounds memory)
HASH_CHUNK_BYTES = 1 << 20
MAX_FILE_S = 600.0  # s; longer files (mixes, field recordings) are skipped: decoding one whole
# takes ~2 MB of worker memory per second of audio (a 2-hour file peaked at 14 GB)


@dataclass
class Summary:
    """What an index run did (printed at the end)."""

    indexed: int = 0
    unchanged: int = 0
    refreshed: int = 0  # unchanged files whose identification data was recomputed
    removed: int = 0
    skipped: list[Skip] = field(default_factory=list)
    seconds: float = 0.0
    annoy_items: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # labelled sounds per learnt class

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        rate = self.indexed / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"indexed {self.indexed}, unchanged {self.unchanged}, removed {self.removed}, "
            f"skipped {len(self.skipped)} ({self.seconds:.1f} s, {rate:.1f} files/s)"
        ]
        if self.refreshed:
            out.append(
                f"identification data (landmarks, templates, snippets) recomputed for "
                f"{self.refreshed} unchanged files"
            )
        if self.classes:
            learnt = ", ".join(f"{c} {n}" for c, n in self.classes.items())
            out.append(f"instrument classes learnt from named sounds: {learnt}")
        out += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return out


@dataclass(frozen=True)
class _Job:
    path: str
    need_fingerprint: bool
    need_embedding: bool = True


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _header_duration_s(path: str) -> float | None:
    """Duration from the file header without decoding; None if the header is unreadable
    (``load_audio`` then says why)."""
    import soundfile

    try:
        info = soundfile.info(path)
    except Exception:  # any header problem is reported by load_audio with its reason
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


def prepare_file(job: _Job, frontend: Any) -> dict[str, Any]:
    """Decode one file and compute what the main process stores (runs in a worker).

    Returns
    -------
    dict
        ``{"ok": False, "reason": str}`` or ``{"ok": True, ...}`` with the
        metadata, the mel matrix and (if asked) the landmarks.
    """
    from emberd.dsp.frontend import melspectrogram
    from emberd.dsp.sources import load_audio

    path = job.path
    if not os.path.exists(path):
        return {"ok": False, "reason": "vanished before decoding"}
    duration = _header_duration_s(path)
    if duration is not None and duration > MAX_FILE_S:
        return {"ok": False, "reason": f"too long ({duration:.0f} s > {MAX_FILE_S:.0f} s limit)"}
    try:
        sha = _sha256(path)
        st = os.stat(path)
        y, info = load_audio(path, sr=frontend.sr, mono=True)
    except EmberdError as exc:
        reason = str(exc)
        return {"ok": False, "reason": reason.split(": ", 1)[1] if ": " in reason else reason}
    except PermissionError:
        return {"ok": False, "reason": "permission denied"}
    except OSError as exc:
        return {"ok": False, "reason": f"cannot read ({exc.strerror or exc})"}
    silent = no_sound_reason(y, floor_dbfs=SILENCE_PEAK_DBFS)
    if silent is not None:  # never stored: silence is never a match
        return {"ok": False, "reason": f"silent: {silent}"}
    if len(y) < frontend.n_fft:
        # A 20 ms tick: pad with silence to one FFT frame; the windowing pads the rest.
        y = np.pad(y, (0, frontend.n_fft - len(y)))
    mel = melspectrogram(y, frontend)
    out: dict[str, Any] = {
        "ok": True,
        "need_embedding": job.need_embedding,
        "sha256": sha,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "duration_s": info.duration_s,
        "sr": info.sr,
        "channels": info.channels,
        "mel": mel,
        "energy_per_frame": frame_energy(y, frontend.hop_length, mel.shape[0]),
    }
    if job.need_fingerprint:
        # One resampling to the fingerprint rate for the three (each would redo it).
        y_fp, sr_fp = mono_at(y, frontend.sr, fingerprint.FP_SR), fingerprint.FP_SR
        hashes, times, _bands = fingerprint.landmarks(y_fp, sr_fp)
        out["fp"] = (
            hashes,
            times,
            fingerprint.template(y_fp, sr_fp),
            waveform.snippet(y_fp, sr_fp),
        )
    return out


def frame_energy(y: np.ndarray, hop: int, n_frames: int) -> np.ndarray:
    """Mean square per hop-sized block (for energy-weighted pooling)."""
    n = n_frames * hop
    padded = np.zeros(n, np.float32)
    padded[: min(n, len(y))] = y[:n]
    return np.asarray((padded.reshape(n_frames, hop) ** 2).mean(axis=1), np.float32)


def window_weights(energy: np.ndarray, starts: np.ndarray, window_frames: int) -> np.ndarray:
    """Each window's mean frame energy (0 past the end): silent tails count little."""
    return np.array(
        [energy[s : s + window_frames].mean() if s < len(energy) else 0.0 for s in starts],
        np.float64,
    )


def embed_files(
    encoder: Any, mels: list[np.ndarray], manifest: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Window several files' mel matrices and embed all windows in encoder batches.

    Returns
    -------
    list of (starts, embeddings)
        Per file: the first frame of each window (int64 ``[W]``) and the window
        embeddings (float32 ``[W, dim]``).
    """
    from emberd.models.embedding import frame_windows

    m = manifest
    all_windows = [np.zeros((0, m.window_frames, m.n_mels), np.float32)]
    spans = []
    for mel in mels:
        windows, starts = frame_windows(
            mel, window_frames=m.window_frames, hop_frames=m.hop_frames, tail="pad"
        )
        all_windows.append(windows)
        spans.append(starts)
    stacked = np.concatenate(all_windows)
    emb = np.empty((len(stacked), m.dim), np.float32)
    for i in range(0, len(stacked), EMBED_BATCH_WINDOWS):
        emb[i : i + EMBED_BATCH_WINDOWS] = encoder.embed(stacked[i : i + EMBED_BATCH_WINDOWS])
    out, pos = [], 0
    for starts in spans:
        out.append((starts, emb[pos : pos + len(starts)]))
        pos += len(starts)
    return out


PARENT_POLL_S = 0.5  # how quickly an orphaned worker notices its parent is gone


def single_threaded_blas() -> None:
    """One BLAS thread in this process: the per-file matrix products (fingerprint
    templates) are tiny, and OpenBLAS's second thread cost 4 ms of CPU per file where the
    product itself takes 0.7 ms, and far more wall time on a loaded machine. Results are
    the same (BLAS splits rows between threads, not the sums)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: exit when the indexer dies (SIGKILL leaves no one to stop us)."""
    import threading

    single_threaded_blas()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="emberd-parent-watch", daemon=True).start()


def _prepare_inline(job: _Job, frontend: Any) -> Future[dict[str, Any]]:
    fut: Future[dict[str, Any]] = Future()
    try:
        fut.set_result(prepare_file(job, frontend))
    except Exception as exc:  # pragma: no cover - mirrors a worker's failure
        fut.set_exception(exc)
    return fut


class Indexer:
    """Index folders into a library for one model.

    Parameters
    ----------
    library : path-like
        Library folder (created if absent).
    model : str
        Model name (see ``emberd models list``).
    jobs : int
        Decoder worker processes; 0 decodes in this process.
    threads : int
        Encoder threads.
    on_wait : callable, optional
        ``on_wait(holder)`` when another ``emberd index`` holds the library (we wait).
    """

    def __init__(
        self,
        library: str | os.PathLike[str],
        model: str,
        *,
        jobs: int = 0,
        threads: int = 2,
        skip_silence: bool | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        from emberd.library.librarylock import lock_for_writing
        from emberd.models.registry import resolve

        self.manifest = resolve(model)  # before touching the library: unknown model -> no writes
        # One writer per library: a second `emberd index` waits here (librarylock).
        self._lock = lock_for_writing(library, on_wait)
        try:
            self.store = Store(library)
        except BaseException:
            self._lock.close()
            raise
        self.model = model
        self.jobs = jobs
        self.threads = threads
        self.skip_silence = skip_silence  # None: the manifest decides (emberd.models.silence_skip)
        self.frontend = self.manifest.frontend()
        self._encoder: Any = None

    def close(self) -> None:
        """Close the library database and let the next writer in."""
        self.store.close()
        self._lock.close()

    def plan(
        self, result: ScanResult, roots: list[str]
    ) -> tuple[list[Candidate], list[Candidate], list[int]]:
        """Split scan candidates into (to do, unchanged) and list stored files under ``roots``
        that the scan no longer found (deleted, or now unreadable)."""
        stored = self.store.files()
        # Unchanged = same size and mtime, embedded with this model and fingerprinted with the
        # current landmark definition (a new definition re-does every file once).
        embedded = self.store.embedded_file_ids(self.model) & self.store.fingerprinted_ids(
            fingerprint.PARAMS
        )
        self._embedded = self.store.embedded_file_ids(self.model)
        todo, unchanged = [], []
        seen = set()
        for cand in result.candidates:
            seen.add(cand.path)
            rec = stored.get(cand.path)
            if (
                rec is not None
                and rec.size == cand.size
                and rec.mtime_ns == cand.mtime_ns
                and rec.id in embedded
            ):
                unchanged.append(cand)
            else:
                todo.append(cand)
        gone = [
            rec.id
            for rec in stored.values()
            if rec.path not in seen and any(_under(rec.path, r) for r in roots)
        ]
        return todo, unchanged, gone

    def run(
        self,
        roots: list[str],
        *,
        progress: Callable[[int, int], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> Summary:
        """Index ``roots``; returns the summary.

        Parameters
        ----------
        roots : list of str
            Folders (or files) to index.
        progress : callable, optional
            ``progress(done, total)`` after each file.
        on_start : callable, optional
            ``on_start(total)`` once the work list is known.
        """
        t0 = time.monotonic()
        result = scan(roots)
        return self.run_scanned(
            result, [os.path.abspath(r) for r in roots], progress=progress, on_start=on_start, t0=t0
        )

    def run_scanned(
        self,
        result: ScanResult,
        roots: list[str],
        *,
        progress: Callable[[int, int], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        t0: float | None = None,
    ) -> Summary:
        """Index the candidates of an earlier :func:`scan` of ``roots`` (absolute paths);
        files may have changed or vanished since."""
        t0 = time.monotonic() if t0 is None else t0
        summary = Summary(skipped=list(result.skipped))
        todo, unchanged, gone = self.plan(result, roots)
        summary.unchanged = len(unchanged)
        if gone:
            with self.store.transaction():
                self.store.remove_files(gone)
                self.store.bump_generation()
            summary.removed = len(gone)
        if on_start is not None:
            on_start(len(todo))
        done_fp = self.store.fingerprinted_ids(fingerprint.PARAMS)
        stored = self.store.files()
        jobs = []
        for c in todo:
            rec = stored.get(c.path)
            same = rec is not None and rec.size == c.size and rec.mtime_ns == c.mtime_ns
            jobs.append(
                _Job(
                    c.path,
                    need_fingerprint=not (same and rec is not None and rec.id in done_fp),
                    need_embedding=not (same and rec is not None and rec.id in self._embedded),
                )
            )
        by_path = {c.path: c for c in todo}
        batch: list[tuple[Candidate, dict[str, Any]]] = []
        done = 0
        for job, res in self._prepared(jobs):
            done += 1
            if not res["ok"]:
                summary.skipped.append(Skip(job.path, res["reason"]))
            else:
                batch.append((by_path[job.path], res))
                if len(batch) >= BATCH_FILES:
                    summary.indexed += self._commit(batch, summary)
                    batch = []
            if progress is not None:
                progress(done, len(jobs))
        if batch:
            summary.indexed += self._commit(batch, summary)
        summary.refreshed = sum(not j.need_embedding for j in jobs)
        summary.indexed -= summary.refreshed
        summary.unchanged += summary.refreshed
        summary.annoy_items = self._rebuild_index()
        head = fit_library_head(self.store, self.model, self.store.path)
        summary.classes = dict(head.counts or {}) if head is not None else {}
        summary.seconds = time.monotonic() - t0
        return summary

    def _prepared(self, jobs: list[_Job]) -> Iterator[tuple[_Job, dict[str, Any]]]:
        """Yield (job, prepared) in order, decoding ahead in worker processes."""
        if not jobs:
            return
        if self.jobs <= 0:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1, user_api="blas"):  # see single_threaded_blas
                for job in jobs:
                    yield job, _prepare_inline(job, self.frontend).result()
            return
        ctx = multiprocessing.get_context("spawn")
        window = max(1, self.jobs * IN_FLIGHT_PER_JOB)
        with ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=ctx,
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            pending: list[tuple[_Job, Future[dict[str, Any]]]] = []
            it = iter(jobs)
            for job in it:
                pending.append((job, pool.submit(prepare_file, job, self.frontend)))
                if len(pending) >= window:
                    break
            while pending:
                job, fut = pending.pop(0)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(prepare_file, nxt, self.frontend)))
                try:
                    res = fut.result()
                except Exception as exc:  # a worker died (e.g. a decoder crash): skip the file
                    res = {"ok": False, "reason": f"decoder failed ({type(exc).__name__})"}
                yield job, res

    @property
    def encoder(self) -> Any:
        """The model's encoder, created on first use (after the workers started)."""
        if self._encoder is None:
            from emberd.models.plugin import load_encoder

            self._encoder = load_encoder(
                self.manifest, device="auto", threads=self.threads, skip_silence=self.skip_silence
            )
        return self._encoder

    def _commit(self, batch: list[tuple[Candidate, dict[str, Any]]], summary: Summary) -> int:
        """Embed a batch of decoded files and store them in one transaction."""
        return self._store_batch(batch, self._embed_batch(batch), summary)

    def _embed_batch(
        self, batch: list[tuple[Candidate, dict[str, Any]]]
    ) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per file: ``(window starts, window embeddings)``, or None when only the
        identification data is refreshed (emberd.library.ray_index embeds in Ray actors)."""
        need = [res["mel"] for _cand, res in batch if res["need_embedding"]]
        it = iter(embed_files(self.encoder, need, self.manifest))
        return [next(it) if res["need_embedding"] else None for _cand, res in batch]

    def _store_batch(
        self,
        batch: list[tuple[Candidate, dict[str, Any]]],
        embedded: list[tuple[np.ndarray, np.ndarray] | None],
        summary: Summary,
    ) -> int:
        """Pool and store a batch of embedded files in one transaction (the only writer)."""
        from emberd.models.embedding import pool

        m = self.manifest
        hop_s = self.frontend.hop_seconds
        stored = 0
        rows: list[tuple[Candidate, dict[str, Any], np.ndarray | None, list[Any]]] = []
        for (cand, res), span in zip(batch, embedded, strict=True):
            if span is None:  # landmarks only: the stored vectors are current
                rows.append((cand, res, None, []))
                continue
            starts, file_emb = span
            weights = window_weights(res["energy_per_frame"], starts, m.window_frames)
            vec = pool(file_emb, "energy", weights)
            bad = not np.all(np.isfinite(file_emb)) or not np.all(np.isfinite(vec))
            if bad or float(np.linalg.norm(vec)) < 1e-12:
                summary.skipped.append(Skip(cand.path, "encoder gave a NaN or zero embedding"))
                continue
            segs = (
                [
                    (float(s * hop_s), file_emb[j])
                    for j, s in enumerate(starts)
                    if np.linalg.norm(file_emb[j]) > 1e-12 and np.all(np.isfinite(file_emb[j]))
                ]
                if len(starts) > 1
                else []
            )
            rows.append((cand, res, vec, segs))
        if not rows:
            return 0
        with self.store.transaction():
            self.store.ensure_model(self.model, m.version, m.dim)
            for cand, res, fvec, segs in rows:
                fid = self.store.upsert_file(
                    cand.path,
                    cand.root,
                    res["size"],
                    res["mtime_ns"],
                    res["sha256"],
                    res["duration_s"],
                    res["sr"],
                    res["channels"],
                    cand.tags,
                )
                if fvec is not None:
                    self.store.put_vectors(fid, self.model, fvec, segs)
                if "fp" in res:
                    self.store.put_fingerprints(fid, fingerprint.PARAMS, *res["fp"])
                stored += 1
            self.store.bump_generation()
        return stored

    def _rebuild_index(self) -> int:
        """Rebuild the model's Annoy index if the vectors changed or the index is damaged."""
        from emberd.library.search import AnnoySearch, build_annoy, read_manifest

        index_dir = self.store.path / "index"
        generation = self.store.generation()
        try:
            current = read_manifest(index_dir, self.model)
            if current is not None and current.generation == generation:
                ann = AnnoySearch.open(index_dir, self.model, dim=self.manifest.dim)
                if ann is not None:
                    ann.unload()
                    return current.items
        except EmberdError as exc:
            log.warning("rebuilding the Annoy index: %s", exc)
        ids, _fids, _starts, matrix = self.store.vectors(self.model)
        if len(ids) == 0:
            return 0
        manifest = build_annoy(
            index_dir, self.model, self.manifest.version, ids, matrix, generation=generation
        )
        return manifest.items


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
