"""The fitted identification parameters, loaded from ``identify_fit.json`` beside this module.

``bench/fit_identify.py`` writes that file (deterministically, from Debian's
hydrogen-drumkits: fitted on kits A, evaluated on the disjoint kits B); it
holds the re-ranker's logistic weights and bias, the probability above which a
re-ranked answer is ``"exact"``, the waveform stage's decision thresholds, and
the fit's provenance and held-out figures. Nothing here is hand-tuned.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

FIT_FILE = Path(__file__).with_name("identify_fit.json")


@lru_cache(maxsize=1)
def params() -> dict[str, Any]:
    """The parsed ``identify_fit.json`` (cached)."""
    data: dict[str, Any] = json.loads(FIT_FILE.read_text())
    return data
