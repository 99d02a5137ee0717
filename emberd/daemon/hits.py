"""Live hits: the decision ladder that names the sample of every hit (placeholder, see below)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class HitResult:
    """One stage of the answer for one hit (built by the worker, read-only after).

    ``capture_time`` is the Unix time when the newest sample the stage used was
    captured; ``onset_time`` the Unix time of the onset sample.
    """

    channel: int
    hit: int
    stage: str  # one of emberd.clients.wire.HIT_STAGES
    onset_time: float
    onset_s: float  # the onset in seconds since the input began
    capture_time: float
    window_ms: float  # sound after the onset this stage used
    peak_db: float  # the hit's peak so far, dBFS
    model: str
    matches: list[dict[str, Any]] = field(default_factory=list)
