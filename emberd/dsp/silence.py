"""Is there a sound at all? Silence, a DC offset and the noise floor are never a match.

One rule for the library (a silent or DC-only file is skipped, never stored as
a vector) and for queries (``emberd query`` answers no match, with the reason):
the signal's peak *after removing its mean* must reach a floor. Removing the
mean first makes a constant offset (a DC-coupled input, a broken converter)
count as what it is: no sound.
"""

from __future__ import annotations

import numpy as np

SILENCE_PEAK_DBFS = -80.0  # below this peak a file holds no sound (indexer's skip rule)
QUERY_FLOOR_DBFS = -60.0  # a query whose AC peak stays below this is the noise floor, not a sound


def _dbfs(x: float) -> float:
    return float(20.0 * np.log10(x)) if x > 0 else float("-inf")


def no_sound_reason(y: np.ndarray, *, floor_dbfs: float) -> str | None:
    """Why ``y`` holds no sound, or None when it does.

    Parameters
    ----------
    y : float array [n] or [n, channels]
        Audio in full-scale units (1.0 = 0 dBFS).
    floor_dbfs : float
        The peak (after removing the mean) that a sound must reach, in dBFS.

    Returns
    -------
    str or None
        ``"empty"``, ``"digital silence"``, ``"DC offset only ..."`` or
        ``"below the noise floor ..."``; None when ``y`` holds a sound.
    """
    x = np.asarray(y, dtype=np.float64)
    if x.size == 0:
        return "empty"
    if not np.any(x):
        return "digital silence"
    floor = 10.0 ** (floor_dbfs / 20.0)
    ac_peak = float(np.max(np.abs(x - x.mean(axis=0))))
    if ac_peak >= floor:
        return None
    raw_peak = float(np.max(np.abs(x)))
    if raw_peak >= floor:
        return (
            f"DC offset only (offset peak {_dbfs(raw_peak):.1f} dBFS, signal peak "
            f"{_dbfs(ac_peak):.1f} dBFS < {floor_dbfs:g} dBFS)"
        )
    return f"below the noise floor (peak {_dbfs(ac_peak):.1f} dBFS < {floor_dbfs:g} dBFS)"
