"""Small pieces the benches share: units, percentiles, call timing, the result printout."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emberd.testing import smalllib

MIB = 1024 * 1024  # bytes


def percentile_ms(x: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of intervals ``x`` (seconds) in milliseconds; NaN when empty."""
    return float(np.percentile(x, q) * 1000.0) if x.size else float("nan")


def report(results: dict[str, object], json_path: Path | None, *, width: int = 24) -> None:
    """Print ``results`` one per line (keys padded to ``width``); with ``json_path``, save them."""
    for key, value in results.items():
        print(f"{key:{width}s} {value}")
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))


def prepare(root: Path, *, per_folder: int, seconds: float, channels: int = 1,
            model: str = smalllib.FAST_MODEL) -> tuple[Path, Path] | None:
    """Build the small library under ``root`` and a performance file to loop.

    Returns
    -------
    (library, performance) or None
        ``None`` when indexing failed (its standard error is printed).
    """
    try:
        lib = smalllib.build_library(root, per_folder=per_folder, model=model)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return None
    perf = smalllib.write_performance(root / "perf.wav", seconds=seconds, channels=channels)
    return lib, perf


def quiet_window(settle_s: float, anchor_s: float) -> tuple[float, float]:
    """Wait ``settle_s``, then time an ``anchor_s`` window; return its monotonic bounds."""
    time.sleep(settle_s)
    a0 = time.monotonic()
    time.sleep(anchor_s)
    return a0, time.monotonic()


def call_ms(fn: Callable[[], object], runs: int, *, warm: int = 5) -> tuple[float, float]:
    """p50 and p99 wall milliseconds of ``runs`` calls of ``fn`` after ``warm`` unmeasured
    ones (the encoder benches: bench/oneshot.py, bench/gpu_encoders.py)."""
    for _ in range(warm):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return percentile_ms(times, 50), percentile_ms(times, 99)
