"""The identification fit's threshold rule (``bench/fit_identify.py``): ``kind: "exact"`` needs
a confidence at which the tuning answers were >= 99 % right AND no sound in no library was
claimed (issue 13: never a confident wrong "exact" for such a sound)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fit_identify.py"


def _fit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fit_identify", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_exact_threshold_sits_above_every_non_library_answer() -> None:
    fit = _fit_module()
    # 300 right library answers at 0.6..1.0 and one sound in no library at 0.9: precision alone
    # (300/301 > 0.99) would allow 0.6; the non-library rule lifts the threshold above 0.9.
    right = [(float(c), True, True) for c in np.linspace(0.6, 1.0, 300)]
    t = fit.exact_threshold([*right, (0.9, False, False)])
    assert 0.9 < t <= 0.91
    assert fit.exact_threshold(right) == fit.CONF_EXACT_GRID[0]  # without it, the lowest


def test_exact_threshold_reaches_the_target_precision() -> None:
    fit = _fit_module()
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 2000)
    ok = rng.uniform(0, 1, 2000) < conf  # calibrated answers
    scored = list(zip(conf.tolist(), ok.tolist(), [True] * len(conf), strict=True))
    t = fit.exact_threshold(scored)
    assert np.mean(ok[conf >= t]) >= fit.TARGET_PRECISION
    below = t - 0.05
    assert np.mean(ok[conf >= below]) < fit.TARGET_PRECISION  # and no higher than needed
