"""Indexing throughput: ``emberd index`` vs a plain one-file-at-a-time pipeline.

Both run in this process on the same files, with the same ONNX network and
the same encoder threads:

* reference: for each file, ``librosa.load`` (resampled to 44.1 kHz, mono),
  ``librosa.feature.melspectrogram`` (n_fft 2048, hop 1024, 96 bands, log),
  windows of the model's length, one ``Encoder.embed`` call for the file;
* emberd: :class:`emberd.library.indexer.Indexer` into a fresh library:
  decode + resample + mel + landmarks in ``--jobs`` worker processes,
  windows of many files batched into encoder calls, SHA-256 of every file,
  one SQLite transaction per batch, Annoy index built at the end.

Prints files/s for each and the ratio (goal: >= 10x).  Default files: the
hydrogen-drumkits samples (``--limit`` to take fewer).

Usage: ``python bench/index_throughput.py [--model aisfx] [--limit N] [--jobs N] [DIR]``
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


def reference(files: list[str], model: str) -> tuple[float, float]:
    """Seconds for the plain pipeline over ``files`` (encoder creation excluded), and the part
    of them spent in the network."""
    import librosa

    manifest = resolve(model)
    enc = Encoder(manifest, device="cpu", threads=ENCODER_THREADS)
    t0 = time.perf_counter()
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
    return time.perf_counter() - t0, network


def emberd_index(root: str, model: str, jobs: int) -> tuple[float, int]:
    """Seconds and files indexed by emberd's indexer into a fresh library."""
    lib = Path(tempfile.mkdtemp(prefix="emberd-throughput-")) / "lib"
    try:
        ix = Indexer(lib, model, jobs=jobs, threads=ENCODER_THREADS)
        t0 = time.perf_counter()
        summary = ix.run([root])
        seconds = time.perf_counter() - t0
        ix.close()
    finally:
        shutil.rmtree(lib.parent, ignore_errors=True)
    return seconds, summary.indexed


def main() -> None:
    """Run both pipelines and print the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=KITS)
    ap.add_argument("--model", default="aisfx")
    ap.add_argument("--limit", type=int, default=0, help="files (0: all)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    files = [c.path for c in scan([args.dir]).candidates]
    root = args.dir
    tmp = None
    if args.limit and args.limit < len(files):
        files = files[: args.limit]
        tmp = Path(tempfile.mkdtemp(prefix="emberd-throughput-files-"))
        for i, f in enumerate(files):  # the same files for both pipelines
            os.symlink(f, tmp / f"{i:05d}{Path(f).suffix}")
        root = str(tmp)
    print(
        f"{len(files)} files, model {args.model}, {os.cpu_count()} CPUs, jobs {args.jobs}, "
        f"encoder threads {ENCODER_THREADS}"
    )
    try:
        ours_s, n = emberd_index(root, args.model, args.jobs)
        ref_s, ref_net_s = reference(files, args.model)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    ref_rate = len(files) / ref_s
    ours_rate = n / ours_s
    print(f"reference (librosa, one file at a time): {ref_s:.1f} s, {ref_rate:.1f} files/s")
    print(f"emberd index ({n} indexed):              {ours_s:.1f} s, {ours_rate:.1f} files/s")
    print(f"ratio emberd / reference: {ours_rate / ref_rate:.2f}x (goal >= 10x)")
    # Both run the same network on the same windows: however fast everything else gets, the
    # ratio cannot pass reference time / reference network time (Amdahl).
    print(
        f"reference network share: {ref_net_s / ref_s:.1%}; the bound for any pipeline running "
        f"the same network arithmetic: {ref_s / ref_net_s:.2f}x"
    )


if __name__ == "__main__":
    main()
