"""One sound as mono float32 at a given rate: what every comparison stage starts from."""

from __future__ import annotations

import numpy as np


def mono_at(y: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """``y`` mixed to mono (channel mean) and resampled (soxr HQ) to ``target_sr``.

    Parameters
    ----------
    y : float array [n] or [n, channels]
        Audio.
    sr : int
        Its sample rate in Hz.
    target_sr : int
        The rate wanted in Hz (no resampling when equal to ``sr``).

    Returns
    -------
    float32 array [m]
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim > 1:
        y = y.mean(axis=1)
    if sr != target_sr:
        import soxr

        y = np.asarray(soxr.resample(y, sr, target_sr, quality="HQ"), np.float32)
    return y
