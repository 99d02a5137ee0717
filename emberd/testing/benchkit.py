"""Small pieces the reliability benches share: units, percentiles, the result printout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
