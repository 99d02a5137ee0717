"""The re-ranker's row median equals numpy's nanmedian exactly (it replaces it for speed)."""

from __future__ import annotations

import numpy as np
import pytest

from emberd.library.rerank import row_nanmedian


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_nanmedian_equals_numpy(dtype: type) -> None:
    rng = np.random.default_rng(0)
    for trial in range(100):
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 1500))
        cells = (rng.standard_normal((n, m)) * 30).astype(dtype)
        nan = rng.random((n, m)) < rng.uniform(0.0, 0.99)
        nan[np.arange(n), rng.integers(0, m, n)] = False  # every row holds a number
        cells[nan] = np.nan
        want, got = np.nanmedian(cells, axis=1), row_nanmedian(cells)
        assert got.dtype == want.dtype and np.array_equal(got, want), (dtype, trial)
