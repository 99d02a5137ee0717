"""A match without a measured score (a bare identification) is read as "not measured", not 0."""

from __future__ import annotations

import math

from emberd.clients.messages import Match


def test_match_without_score_reads_as_not_measured() -> None:
    m = Match.from_dict(0, {"path": "/lib/a.wav", "kind": "exact", "landmarks": 31})
    assert math.isnan(m.score) and math.isnan(m.distance) and m.kind == "exact"
    m = Match.from_dict(1, {"path": "/lib/b.wav", "score": 0.8, "distance": 0.63})
    assert m.score == 0.8 and m.distance == 0.63
