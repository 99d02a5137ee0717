"""Analysers: per-hop and per-hit functions that add fields to the published messages.

Every analyser comes from the ``emberd.analyzers`` entry-point group, emberd's own
included: ``tags`` (folder-tag vote over the matches -> ``tag.<c>``), ``levels``
(RMS/peak/onset -> ``level.<c>``) and ``similarity`` (channel cosine matrix ->
``similarity``) are declared in emberd's ``pyproject.toml`` beside any third-party one.

Contract (``docs/plugins.md``): ``factory(options: dict[str, str]) -> analyzer`` with

* ``kind``: the message kind it writes into (``match``, ``tag``, ``level``, ``emb``,
  ``similarity`` for hop analysers; ``hit`` for hit analysers);
* ``stage``: ``"hop"`` (default) or ``"hit"``;
* ``analyze(item)``: for a hop, a :class:`~emberd.daemon.worker.HopResult` -> a list of
  one ``dict`` of fields per channel (one dict for ``similarity``; the key ``"array"``
  is that message's payload); for a hit, the hit's header fields -> one dict.

Analysers run on the worker thread while the hop's messages are built, so they must be
quick (a classifier head over the embedding, not a second encoder). A raising analyser
is counted in status (``analyzers.<name>.errors``), logged once, and disabled with one
warning after :data:`MAX_CONSECUTIVE_ERRORS`; the hop is published without its fields.
Fields may not replace the wire format's own (``seq``, ``capture_time``, ...).

Shared attributes (written by -> read by): ``AnalyzerSlot.errors/disabled/calls``
(worker -> status snapshot).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from emberd import plugins
from emberd.daemon.analysis import vote_tags
from emberd.daemon.mixdown import SILENT_RMS_DB, centred_similarity
from emberd.errors import EmberdError

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 20  # failed calls in a row before an analyser is disabled
RESERVED_FIELDS = frozenset(
    {"v", "kind", "seq", "capture_time", "publish_time", "model", "channel", "hop", "stream_s",
     "window_end_s", "shape", "dtype"}
)  # fmt: skip
HOP_KINDS = ("match", "tag", "level", "emb", "similarity")
# What a third-party analyser may not set, per kind, besides RESERVED_FIELDS: emberd's own.
OWN_FIELDS = {"match": {"matches"}, "hit": {"hit", "stage", "onset_time", "onset_s",
                                            "window_ms", "latency_ms", "peak_db", "answer",
                                            "matches"}}  # fmt: skip
STAGES = ("hop", "hit")


class TagsAnalyzer:
    """Built-in ``tags``: weighted folder-tag vote over each channel's matches."""

    kind = "tag"
    stage = "hop"

    def analyze(self, hop: Any) -> list[dict[str, Any]]:
        return [{"tags": vote_tags(m)} for m in hop.matches]


class LevelsAnalyzer:
    """Built-in ``levels``: the worker's per-hop RMS/peak level and onset flag."""

    kind = "level"
    stage = "hop"

    def analyze(self, hop: Any) -> list[dict[str, Any]]:
        return [
            {"rms_db": round(rms, 2), "peak_db": round(peak, 2), "onset": bool(onset)}
            for rms, peak, onset in hop.levels
        ]


class SimilarityAnalyzer:
    """Built-in ``similarity``: channel cosine matrix centred on the library mean, silent
    channels NaN (several channels only; :func:`emberd.daemon.mixdown.centred_similarity`)."""

    kind = "similarity"
    stage = "hop"

    def analyze(self, hop: Any) -> list[dict[str, Any]]:
        if len(hop.channels) < 2:
            return []
        silent = [rms_db < SILENT_RMS_DB for rms_db, _peak, _onset in hop.levels]
        sim = centred_similarity(hop.embeddings, getattr(hop, "centre", None), silent)
        dead = [ch for ch, s in zip(hop.channels, silent, strict=True) if s]
        return [{"channels": list(hop.channels), "silent": dead, "array": sim}]


def tags(options: dict[str, str]) -> TagsAnalyzer:
    """Entry point ``emberd.analyzers: tags``."""
    return TagsAnalyzer()


def levels(options: dict[str, str]) -> LevelsAnalyzer:
    """Entry point ``emberd.analyzers: levels``."""
    return LevelsAnalyzer()


def similarity(options: dict[str, str]) -> SimilarityAnalyzer:
    """Entry point ``emberd.analyzers: similarity``."""
    return SimilarityAnalyzer()


@dataclass
class AnalyzerSlot:
    """One loaded analyser and its counters (all written by the worker)."""

    info: plugins.PluginInfo
    analyzer: Any
    kind: str
    stage: str
    calls: int = 0
    errors: int = 0
    consecutive: int = 0
    disabled: bool = False
    last_error: str = ""

    def describe(self) -> dict[str, Any]:
        return {"dist": self.info.dist, "kind": self.kind, "stage": self.stage,
                "calls": self.calls, "errors": self.errors, "disabled": self.disabled,
                "last_error": self.last_error}  # fmt: skip


class Analyzers:
    """Every installed analyser, run in order; isolation as in the module docstring."""

    def __init__(self, slots: list[AnalyzerSlot]) -> None:
        self.slots = slots

    @classmethod
    def load(cls, requested: list[str] | None = None) -> Analyzers:
        """Load every installed analyser (built-ins first).

        An analyser that fails to import or construct is one warning naming its package
        and is left out, unless it is in ``requested`` (``--analyzer NAME``): then this
        raises :class:`~emberd.errors.EmberdError` (``emberd run`` exits 2).
        """
        requested = list(requested or [])
        installed = plugins.discover(plugins.GROUP_ANALYZERS)
        for name in requested:
            plugins.require(plugins.GROUP_ANALYZERS, name)
        slots = []
        for info in installed:
            try:
                obj = plugins.construct(info, {})
                kind, stage = str(getattr(obj, "kind", "match")), str(getattr(obj, "stage", "hop"))
                allowed = HOP_KINDS if stage == "hop" else ("hit",)
                if stage not in STAGES or kind not in allowed or not callable(
                    getattr(obj, "analyze", None)
                ):
                    raise EmberdError(
                        f"plug-in {info.group} {info.label}: needs analyze() and stage in "
                        f"{STAGES} with kind in {allowed}, has stage={stage!r} kind={kind!r}"
                    )
            except EmberdError as exc:
                if info.name in requested or info.builtin:
                    raise
                log.warning("%s (left out)", exc)
                continue
            slots.append(AnalyzerSlot(info, obj, kind, stage))
        return cls(slots)

    def hop_fields(self, hop: Any) -> dict[str, list[dict[str, Any]]]:
        """Fields per message kind, one dict per channel (``similarity``: at most one)."""
        out: dict[str, list[dict[str, Any]]] = {}
        n = len(hop.channels)
        for slot in self.slots:
            if slot.disabled or slot.stage != "hop":
                continue
            rows = self._call(slot, hop)
            if rows is None:
                continue
            want = 1 if slot.kind == "similarity" else n
            if not isinstance(rows, list) or (rows and len(rows) != want) or not all(
                isinstance(r, dict) for r in rows
            ):
                self._fail(slot, f"returned {type(rows).__name__}, expected a list of {want} dict")
                continue
            if not self._check_fields(slot, rows):
                continue
            slot.consecutive = 0
            merged = out.setdefault(slot.kind, [{} for _ in range(want)] if rows else [])
            for target, row in zip(merged, rows, strict=False):
                target.update(row)
        return out

    def hit_fields(self, header: dict[str, Any]) -> dict[str, Any]:
        """Fields that the hit analysers add to one hit message."""
        out: dict[str, Any] = {}
        for slot in self.slots:
            if slot.disabled or slot.stage != "hit":
                continue
            row = self._call(slot, dict(header))
            if row is None:
                continue
            if not isinstance(row, dict):
                self._fail(slot, f"returned {type(row).__name__}, expected a dict")
                continue
            if self._check_fields(slot, [row]):
                slot.consecutive = 0
                out.update(row)
        return out

    def _call(self, slot: AnalyzerSlot, arg: Any) -> Any:
        try:
            result = slot.analyzer.analyze(arg)
        except Exception as exc:  # third-party code: counted, logged once, disabled if it persists
            self._fail(slot, f"{type(exc).__name__}: {exc}", exc)
            return None
        slot.calls += 1
        return result

    def _check_fields(self, slot: AnalyzerSlot, rows: list[dict[str, Any]]) -> bool:
        for row in rows:
            own = set() if slot.info.builtin else OWN_FIELDS.get(slot.kind, set())
            clash = RESERVED_FIELDS.union(own).intersection(row)
            if clash:
                self._fail(slot, f"may not set the wire field(s) {', '.join(sorted(clash))}")
                return False
            if slot.info.builtin:
                continue
            try:  # a third-party value must survive every sink (JSON over ZeroMQ)
                json.dumps({k: v for k, v in row.items() if k != "array"})
            except (TypeError, ValueError) as exc:
                self._fail(slot, f"fields are not JSON: {exc}")
                return False
            array = row.get("array")
            if array is not None and not (
                isinstance(array, np.ndarray) and np.isfinite(array).all()
            ):
                self._fail(slot, "array is not a finite numpy array")
                return False
        return True

    def _fail(self, slot: AnalyzerSlot, why: str, exc: BaseException | None = None) -> None:
        slot.errors += 1
        slot.consecutive += 1
        slot.last_error = why
        if slot.errors == 1:
            log.warning("analyser %s: %s (counted in status from now on)", slot.info.label, why,
                        exc_info=exc is not None)  # fmt: skip
        if slot.consecutive >= MAX_CONSECUTIVE_ERRORS and not slot.disabled:
            slot.disabled = True
            log.warning("analyser %s: disabled after %d failures in a row", slot.info.label,
                        slot.consecutive)  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """``analyzers`` in the status object."""
        return {s.info.name: s.describe() for s in self.slots}
