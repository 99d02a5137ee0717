"""Encoder benchmark: ONNX Runtime settings vs a straightforward numpy run.

For each encoder (aiSFX, DSP baseline), intra-op threads 1 and 2, spinning on
and off: per-window latency p50/p99 at batch 1 (the live path, one window per
hop) and throughput in windows/s at batch 32 (indexing). CPU seconds per
window show what spinning costs. Every figure is also printed as a ratio
against the anchor of its encoder, a plain numpy implementation of the same
network run in this process (im2col + BLAS matmul for aiSFX), so the numbers
compare across machines.

Usage: ``python bench/encoders.py [--quick]``. Fetches aiSFX if needed.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from emberd.models import aisfx, baseline, registry
from emberd.models.runtime import Encoder

WINDOW_FRAMES = 100  # 2.32 s at 44.1 kHz / 1024 hop
N_MELS = 96
BATCH = 32  # windows per indexing call


def numpy_aisfx(folded: aisfx.Folded) -> Callable[[np.ndarray], np.ndarray]:
    """A straightforward numpy EmbeddingNet: im2col + one matmul per conv."""

    def forward(x: np.ndarray) -> np.ndarray:
        h = x[:, None].astype(np.float32)
        for i, (w, b) in enumerate(folded):
            bsz, ch, t, f = h.shape
            hp = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
            cols = np.lib.stride_tricks.sliding_window_view(hp, (3, 3), axis=(2, 3))
            cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(bsz * t * f, ch * 9)
            out = cols @ w.reshape(w.shape[0], -1).T + b
            h = np.maximum(out, 0.0).reshape(bsz, t, f, -1).transpose(0, 3, 1, 2)
            if i % 2 == 1 and i < 7:
                h = h[:, :, : t // 2 * 2, : f // 2 * 2]
                h = h.reshape(bsz, h.shape[1], t // 2, 2, f // 2, 2).max(axis=(3, 5))
        return np.asarray(h.mean(axis=3).max(axis=2))

    return forward


def latency(
    fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, n: int
) -> tuple[float, float, float]:
    """p50 and p99 wall ms per call, and CPU ms per call."""
    fn(x)
    times = np.empty(n)
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        fn(x)
        times[i] = time.perf_counter() - t0
    cpu = (time.process_time() - cpu0) / n
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3), cpu * 1e3


def throughput(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, reps: int) -> float:
    """Windows per second at the batch size of ``x``."""
    fn(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return x.shape[0] * reps / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    n_lat, n_thr = (20, 2) if args.quick else (100, 5)

    try:
        aisfx_manifest = registry.resolve("aisfx")
    except Exception:
        aisfx_manifest = registry.fetch("aisfx")
    baseline_manifest = registry.resolve("dsp-baseline")
    from emberd.paths import cache_dir

    state, _ = aisfx.load_checkpoint(cache_dir() / aisfx.WHEEL_NAME)
    anchors = {
        "aisfx": (aisfx_manifest, numpy_aisfx(aisfx.folded_weights(state))),
        "dsp-baseline": (baseline_manifest, baseline.reference),
    }
    rng = np.random.default_rng(0)
    x1 = rng.random((1, WINDOW_FRAMES, N_MELS), dtype=np.float32)
    x32 = rng.random((BATCH, WINDOW_FRAMES, N_MELS), dtype=np.float32)

    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"usable cpu cores: {len(os.sched_getaffinity(0))}, OPENBLAS_NUM_THREADS: {blas}")
    header = (
        f"{'encoder':<13} {'runtime':<18} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>7} "
        f"{'win/s@32':>9} {'p50 x':>7} {'win/s x':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, (manifest, ref) in anchors.items():
        slow = name == "aisfx"
        a50, a99, acpu = latency(ref, x1, max(5, n_lat // 5) if slow else n_lat)
        athr = throughput(ref, x32, 1 if slow else n_thr)
        print(
            f"{name:<13} {'numpy (anchor)':<18} {a50:8.2f} {a99:8.2f} {acpu:7.2f} "
            f"{athr:9.1f} {1.0:7.2f} {1.0:8.2f}"
        )
        for threads in (1, 2):
            for spinning in (False, True):
                enc = Encoder(manifest, device="cpu", threads=threads, spinning=spinning)
                p50, p99, cpu = latency(enc.embed, x1, n_lat)
                thr = throughput(enc.embed, x32, n_thr)
                label = f"ort t={threads} spin={'on' if spinning else 'off'}"
                print(
                    f"{name:<13} {label:<18} {p50:8.2f} {p99:8.2f} {cpu:7.2f} "
                    f"{thr:9.1f} {a50 / p50:7.2f} {thr / athr:8.2f}"
                )
                del enc
    print("p50 x: numpy p50 / this p50 (higher is faster); win/s x: this / numpy throughput")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
