"""Indexing throughput: ``emberd index`` vs a plain one-file-at-a-time pipeline, same run.

All run in this process on the same files with the same encoder threads:

* reference: for each file, ``librosa.load`` (resampled to 44.1 kHz, mono),
  ``librosa.feature.melspectrogram`` (n_fft 2048, hop 1024, 96 bands, log),
  windows of the model's length, one ``Encoder.embed`` call for the file on the
  same aiSFX ONNX network, full windows (no silence skipping);
* emberd: :class:`emberd.library.indexer.Indexer` into a fresh library
  (decode + resample + mel + landmarks in ``--jobs`` worker processes, windows
  of many files batched, SHA-256, one SQLite transaction per batch, Annoy),
  three times: aiSFX with exact silence skipping (the default), aiSFX on full
  windows (``skip_silence=False``), and ``aisfx-int8``.

``vectors_max_abs_diff`` compares every stored vector (per file and per
segment) of the silence-skipping library with the full-window library.
``int8_top1_delta`` is the change, in points, of embedding top-1 on held-out
queries: every file of the hydrogen kits in half "B" (kits sorted by name,
every other one from the second), -6 dB plus white noise 20 dB below its RMS
(seed 2), searched among all stored file vectors, int8 library minus fp32
library. The whole-pipeline identification figures of both models come from
``bench/identify.py --models aisfx aisfx-int8``.

The last line: ``speedup=… amdahl_bound=… files_per_s=… vectors_max_abs_diff=…
int8_speedup=… int8_top1_delta=…`` (speedups: wall-clock files/s against the
reference's). The table also gives CPU seconds (process + indexer workers): on
a shared machine whose load changes between the runs they compare the work of
the pipelines more fairly than wall time.

Usage: ``python bench/index_throughput.py [--limit N] [--jobs N] [DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from emberd.library.indexer import Indexer
from emberd.library.scan import scan
from emberd.models.embedding import frame_windows
from emberd.models.registry import resolve
from emberd.models.runtime import Encoder

KITS = "/usr/share/hydrogen/data/drumkits"
SR = 44100  # Hz
N_FFT = 2048
HOP = 1024
N_MELS = 96
ENCODER_THREADS = 2
MODEL = "aisfx"
INT8_MODEL = "aisfx-int8"
NOISE_SNR_DB = 20.0  # held-out query transform: white noise this far below the RMS
GAIN_DB = -6.0
QUERY_SEED = 2

Vectors = dict[tuple[str, float], np.ndarray]


def cpu_s() -> float:
    """CPU seconds used so far by this process and its finished children (the indexer's
    workers): on a shared machine whose load changes between runs this compares the work
    of the pipelines more fairly than wall time, so both are printed."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def reference(files: list[str]) -> tuple[float, float, float]:
    """Wall seconds for the plain pipeline over ``files`` (encoder creation excluded), the part
    of them spent in the network, and CPU seconds."""
    import librosa

    manifest = resolve(MODEL)
    enc = Encoder(manifest, device="cpu", threads=ENCODER_THREADS, skip_silence=False)
    t0 = time.perf_counter()
    c0 = cpu_s()
    network = 0.0
    for path in files:
        y, _ = librosa.load(path, sr=SR, mono=True)
        mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
        logmel = np.clip((librosa.power_to_db(mel, top_db=80.0).T + 80.0) / 80.0, 0.0, 1.0)
        windows, _ = frame_windows(
            logmel.astype(np.float32),
            window_frames=manifest.window_frames,
            hop_frames=manifest.hop_frames,
            tail="pad",
        )
        t = time.perf_counter()
        enc.embed(windows)
        network += time.perf_counter() - t
    return time.perf_counter() - t0, network, cpu_s() - c0


def emberd_index(
    root: str, lib: Path, model: str, jobs: int, skip_silence: bool | None
) -> tuple[float, float, int, Vectors]:
    """Wall and CPU seconds, files indexed by emberd's indexer into ``lib``, stored vectors."""
    ix = Indexer(lib, model, jobs=jobs, threads=ENCODER_THREADS, skip_silence=skip_silence)
    try:
        t0 = time.perf_counter()
        c0 = cpu_s()
        summary = ix.run([root])
        seconds = time.perf_counter() - t0
        cpu = cpu_s() - c0
        _ids, fids, starts, matrix = ix.store.vectors(model)
        paths = {rec.id: p for p, rec in ix.store.files().items()}
    finally:
        ix.close()
    keys = [(paths[int(f)], float(s)) for f, s in zip(fids, starts, strict=True)]
    vectors = dict(zip(keys, matrix, strict=True))
    return seconds, cpu, summary.indexed, vectors


def held_out_queries(files: list[str]) -> list[tuple[str, np.ndarray]]:
    """(source path, transformed audio at SR) for every file of the kits in half "B"."""
    from emberd.dsp.sources import load_audio

    kits = Path(KITS)
    names = sorted(p.name for p in kits.iterdir() if p.is_dir())
    rng = np.random.default_rng(QUERY_SEED)
    out = []
    for path in files:
        real = Path(path).resolve()
        if not real.is_relative_to(kits.resolve()):
            continue
        if names.index(real.relative_to(kits.resolve()).parts[0]) % 2 != 1:
            continue
        y, _ = load_audio(path, sr=SR, mono=True)
        rms = float(np.sqrt(np.mean(y**2))) if y.size else 0.0
        if rms <= 0.0:
            continue
        noise = rng.standard_normal(y.size).astype(np.float32) * rms * 10 ** (-NOISE_SNR_DB / 20)
        out.append((path, (y * 10 ** (GAIN_DB / 20) + noise).astype(np.float32)))
    return out


def embedding_top1(lib: Path, model: str, queries: list[tuple[str, np.ndarray]]) -> float:
    """Share of queries whose nearest stored file vector (cosine) is their source file."""
    from emberd.library.query import query_vector
    from emberd.library.store import Store

    store = Store(lib)
    try:
        rows = store.conn.execute(
            "SELECT file_id, vector FROM vectors WHERE model=? AND is_file=1", (model,)
        ).fetchall()
        paths = {rec.id: p for p, rec in store.files().items()}
    finally:
        store.close()
    names = [paths[int(r[0])] for r in rows]
    mat = np.stack([np.frombuffer(r[1], np.float32) for r in rows])
    mat /= np.linalg.norm(mat, axis=1, keepdims=True) + 1e-12
    hits = 0
    for path, y in queries:
        q = query_vector(y, SR, model)
        best = names[int(np.argmax(mat @ (q / (np.linalg.norm(q) + 1e-12))))]
        hits += os.path.realpath(best) == os.path.realpath(path)
    return hits / max(1, len(queries))


def main() -> None:
    """Run every pipeline and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=KITS)
    ap.add_argument("--limit", type=int, default=0, help="files (0: all)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    files = [c.path for c in scan([args.dir]).candidates]
    root = args.dir
    tmp = Path(tempfile.mkdtemp(prefix="emberd-throughput-"))
    if args.limit and args.limit < len(files):
        files = files[: args.limit]
        (tmp / "files").mkdir()
        for i, f in enumerate(files):  # the same files for every pipeline
            os.symlink(f, tmp / "files" / f"{i:05d}{Path(f).suffix}")
        root = str(tmp / "files")
    resolve(INT8_MODEL)  # built once from aisfx before timing (a few seconds)
    print(
        f"{len(files)} files, {os.cpu_count()} CPUs, jobs {args.jobs}, "
        f"encoder threads {ENCODER_THREADS}"
    )
    try:
        skip_s, skip_cpu, n, skip_vec = emberd_index(root, tmp / "skip", MODEL, args.jobs, None)
        full_s, full_cpu, n_full, full_vec = emberd_index(
            root, tmp / "full", MODEL, args.jobs, False
        )
        int8_s, int8_cpu, n_int8, _ = emberd_index(root, tmp / "int8", INT8_MODEL, args.jobs, None)
        ref_s, ref_net_s, ref_cpu = reference(files)
        queries = held_out_queries(files)
        top1 = {}
        if queries:
            top1 = {
                MODEL: embedding_top1(tmp / "skip", MODEL, queries),
                INT8_MODEL: embedding_top1(tmp / "int8", INT8_MODEL, queries),
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common = skip_vec.keys() & full_vec.keys()
    diff = max((float(np.abs(skip_vec[k] - full_vec[k]).max()) for k in common), default=0.0)
    ref_rate = len(files) / ref_s
    rows = [
        ("reference (librosa, one file at a time, full windows)", ref_s, ref_cpu, len(files)),
        ("emberd index, aisfx, silence skipping", skip_s, skip_cpu, n),
        ("emberd index, aisfx, full windows", full_s, full_cpu, n_full),
        ("emberd index, aisfx-int8 (silence skipping)", int8_s, int8_cpu, n_int8),
    ]
    print(f"{'pipeline':56s} {'wall s':>7s} {'files/s':>8s} {'speedup':>8s} {'CPU s':>7s} "
          f"{'CPU speedup':>11s}")  # fmt: skip
    ref_cpu_rate = len(files) / ref_cpu
    for label, secs, cpu, count in rows:
        rate = count / secs
        print(f"{label:56s} {secs:7.1f} {rate:8.2f} {rate / ref_rate:7.2f}x {cpu:7.1f} "
              f"{count / cpu / ref_cpu_rate:10.2f}x")  # fmt: skip
    print(
        f"vectors: {len(common)} of {len(skip_vec)} stored vectors compared, skipping vs full "
        f"windows max abs diff {diff:.2e}"
    )
    # The reference and emberd's full-window run do the same network arithmetic: that run
    # cannot pass reference time / reference network time (Amdahl). Skipping and int8 do less.
    bound = ref_s / ref_net_s
    print(f"reference network share: {ref_net_s / ref_s:.1%}; same-arithmetic bound {bound:.2f}x")
    delta = 100.0 * (top1[INT8_MODEL] - top1[MODEL]) if top1 else float("nan")
    if top1:
        print(
            f"embedding top-1 on {len(queries)} held-out queries (kits B, -6 dB + noise): "
            f"{MODEL} {top1[MODEL]:.3f}, {INT8_MODEL} {top1[INT8_MODEL]:.3f}"
        )
    print(
        f"speedup={(n / skip_s) / ref_rate:.2f} amdahl_bound={bound:.2f} "
        f"files_per_s={n / skip_s:.1f} vectors_max_abs_diff={diff:.2e} "
        f"int8_speedup={(n_int8 / int8_s) / ref_rate:.2f} int8_top1_delta={delta:+.1f}"
    )


if __name__ == "__main__":
    main()
