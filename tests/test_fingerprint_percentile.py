"""The template scorer's per-band noise floor equals numpy's nanpercentile exactly (it
replaces it for speed)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from emberd.library.fingerprint import NOISE_FLOOR_PERCENTILE, column_nanpercentile


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_nanpercentile_equals_numpy(dtype: type) -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        frames, bands = int(rng.integers(1, 70)), int(rng.integers(1, 50))
        # Template cells: multiples of the storage step, 0 (padding) read as NaN.
        x = (rng.integers(0, 241, (frames, bands)) * 0.25).astype(dtype)
        x[rng.random((frames, bands)) < rng.uniform(0.0, 0.7)] = 0
        if trial % 4 == 0:
            x[:, rng.integers(0, bands)] = 0  # an all-NaN band
        cells = np.where(x > 0, x, np.nan)
        for pct in (NOISE_FLOOR_PERCENTILE, 50.0, 97.5):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                want = np.nanpercentile(cells, pct, axis=0)
            got = column_nanpercentile(cells, pct)
            assert got.dtype == want.dtype, (dtype, trial)
            assert np.array_equal(got, want, equal_nan=True), (dtype, trial, pct)
