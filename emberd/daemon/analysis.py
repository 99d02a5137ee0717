"""Per-hop analysis besides the encoder: tag vote, level and onset.

The channel similarity matrix lives in :mod:`emberd.daemon.mixdown` (centred on the
library mean, silent channels NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SILENCE_DB = -120.0  # dBFS reported for digital silence
ONSET_RISE_DB = 9.0  # level jump over the recent minimum that counts as an onset
ONSET_FLOOR_DB = -50.0  # dBFS below which nothing is an onset
ONSET_HISTORY_HOPS = 4  # hops the recent minimum looks back (~93 ms at 23 ms)
ONSET_REFRACTORY_HOPS = 4  # hops after an onset before another may fire


def vote_tags(matches: Sequence[dict[str, Any]], *, max_tags: int = 8) -> list[dict[str, Any]]:
    """Weighted vote over the matches' folder tags.

    Each match weighs ``max(score, 0)`` and shares its weight equally among its
    tags; a tag's confidence is its share of the total weight, so confidences sum
    to at most 1 (less when some matches have no folder tags).

    Returns
    -------
    list of dict
        ``{"tag": str, "confidence": float}``, highest first (ties by name).
    """
    votes: dict[str, float] = {}
    total = 0.0
    for match in matches:
        score = match.get("score", 0.0)
        weight = float(score) if isinstance(score, (int, float)) and math.isfinite(score) else 0.0
        weight = max(weight, 0.0)
        total += weight
        tags = [t for t in match.get("tags") or [] if isinstance(t, str) and t]
        for tag in dict.fromkeys(tags):  # a folder named twice in one path votes once
            votes[tag] = votes.get(tag, 0.0) + weight / len(dict.fromkeys(tags))
    if total <= 0.0:
        return []
    ranked = sorted(((t, v) for t, v in votes.items() if v > 0.0), key=lambda kv: (-kv[1], kv[0]))
    ranked = ranked[:max_tags]
    return [{"tag": tag, "confidence": round(v / total, 6)} for tag, v in ranked]


def level_db(samples: np.ndarray) -> tuple[float, float]:
    """RMS and peak level of ``samples`` in dBFS (``SILENCE_DB`` for silence)."""
    if samples.size == 0:
        return SILENCE_DB, SILENCE_DB
    rms = math.sqrt(float(np.dot(samples, samples)) / samples.size)
    peak = float(np.max(np.abs(samples)))
    to_db = lambda v: max(SILENCE_DB, 20.0 * math.log10(v)) if v > 0 else SILENCE_DB  # noqa: E731
    return to_db(rms), to_db(peak)


class OnsetDetector:
    """Level-jump onset detector, one per channel, fed one hop RMS level at a time."""

    def __init__(self) -> None:
        self._history = [SILENCE_DB] * ONSET_HISTORY_HOPS
        self._quiet = ONSET_REFRACTORY_HOPS

    def push(self, rms_db: float) -> bool:
        """Return True when this hop starts an onset."""
        onset = (
            self._quiet >= ONSET_REFRACTORY_HOPS
            and rms_db > ONSET_FLOOR_DB
            and rms_db - min(self._history) >= ONSET_RISE_DB
        )
        self._history.pop(0)
        self._history.append(rms_db)
        self._quiet = 0 if onset else self._quiet + 1
        return onset
