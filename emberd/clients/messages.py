"""Typed messages: what a client gets from emberd, whichever transport carried it.

ZeroMQ messages (:mod:`emberd.clients.wire`) and OSC messages
(:mod:`emberd.clients.osc_client`) decode into the same dataclasses, so the
terminal monitor, the web panel and user scripts share one vocabulary.

Connection changes are not data but clients need them: :class:`ConnectionEvent`
reports "waiting for daemon", "connected", "silent" and "restarted".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from emberd.clients import wire
from emberd.errors import EmberdError


@dataclass(frozen=True)
class Match:
    """One library match, as in ``emberd query --json``."""

    rank: int
    name: str
    path: str
    score: float = math.nan  # embedding cosine; nan when the daemon did not measure it
    distance: float = math.nan
    segment_start_s: float = 0.0
    tags: tuple[str, ...] = ()
    kind: str = "similar"
    id: int | None = None
    confidence: float = math.nan  # hits: calibrated probability that the answer is right

    @classmethod
    def from_dict(cls, rank: int, obj: dict[str, Any]) -> Match:
        """Build a match from a ``matches`` list entry; raises :class:`wire.WireError`."""
        try:
            tags = obj.get("tags") or ()
            raw_id = obj.get("id", obj.get("file_id"))
            return cls(
                rank=int(obj.get("rank", rank)),
                name=str(obj.get("name") or obj.get("path", "").rsplit("/", 1)[-1]),
                path=str(obj.get("path", "")),
                score=float(obj.get("score", math.nan)),  # absent: not measured
                distance=float(obj.get("distance", math.nan)),
                segment_start_s=float(obj.get("segment_start_s") or 0.0),
                tags=tuple(str(t) for t in tags),
                kind=str(obj.get("kind", "similar")),
                id=None if raw_id is None else int(raw_id),
                confidence=float(obj.get("confidence", math.nan)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise wire.WireError(f"bad match object: {exc}") from exc


@dataclass(frozen=True)
class Tag:
    """A live tag and its vote confidence in [0, 1]."""

    tag: str
    confidence: float


@dataclass(frozen=True)
class _Base:
    """Fields every emberd message carries."""

    seq: int
    capture_time: float  # Unix seconds of the first sample described
    publish_time: float  # Unix seconds when the daemon sent it
    model: str

    @property
    def latency_s(self) -> float:
        """Capture-to-publish latency in seconds, as the daemon measured it."""
        return self.publish_time - self.capture_time


@dataclass(frozen=True)
class MatchMessage(_Base):
    """Top-k library matches of one channel for one hop, best first."""

    channel: int = 0
    matches: tuple[Match, ...] = ()


@dataclass(frozen=True)
class TagMessage(_Base):
    """Live tags of one channel (weighted vote over the matches' folder tags)."""

    channel: int = 0
    tags: tuple[Tag, ...] = ()


@dataclass(frozen=True)
class EmbMessage(_Base):
    """The embedding of one channel for one hop (float32, shape ``[dim]``)."""

    channel: int = 0
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass(frozen=True)
class LevelMessage(_Base):
    """Level of one channel for one hop."""

    channel: int = 0
    rms_db: float = -math.inf
    peak_db: float = -math.inf
    onset: bool = False


@dataclass(frozen=True)
class SimilarityMessage(_Base):
    """Channel-by-channel cosine similarity matrix ``[C, C]``."""

    channels: tuple[int, ...] = ()
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))


@dataclass(frozen=True)
class StatusMessage(_Base):
    """The daemon's status object (latency, overflows, model, provider, ...)."""

    status: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HitMessage(_Base):
    """One stage of the answer for one hit (see :mod:`emberd.clients.wire`, "Hits").

    ``capture_time`` is when the newest sample the stage used was captured;
    ``latency_ms`` is onset to publish.
    """

    channel: int = 0
    hit: int = 0
    stage: str = "provisional"
    onset_time: float = 0.0
    onset_s: float = 0.0
    window_ms: float = 0.0
    latency_ms: float = math.nan
    peak_db: float = -math.inf
    answer: str = "none"
    matches: tuple[Match, ...] = ()


@dataclass(frozen=True)
class ClassMessage(_Base):
    """Mix-down: a channel's instrument class (``None``: no signal or no class head)."""

    channel: int = 0
    cls: str | None = None
    confidence: float = 0.0
    signal: bool = False


@dataclass(frozen=True)
class LoudnessMessage(_Base):
    """Mix-down: a channel's loudness (LUFS), true peak (dBTP), crest factor and balance."""

    channel: int = 0
    momentary: float = -math.inf
    short_term: float = -math.inf
    integrated: float = -math.inf
    true_peak: float = -math.inf
    crest_db: float = 0.0
    signal: bool = False
    bands_hz: tuple[float, ...] = ()
    balance_db: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    reference_db: tuple[float, ...] | None = None


@dataclass(frozen=True)
class MaskingMessage(_Base):
    """Mix-down: masked share per (masker, maskee, critical band) and the suggestions."""

    channels: tuple[int, ...] = ()
    band_edges_hz: tuple[float, ...] = ()
    fraction: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    suggestions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ConnectionEvent:
    """A change in the link to the daemon, surfaced by the subscriber.

    Attributes
    ----------
    state : str
        ``"waiting"`` (nothing heard yet), ``"connected"`` (messages flow),
        ``"silent"`` (no message for longer than the silence limit: daemon
        stopped, paused or unreachable), ``"stopped"`` (the daemon announced its
        shutdown in a final status), ``"restarted"`` (a sequence number went
        backwards: a new daemon process is publishing).
    detail : str
        Human-readable reason.
    """

    state: str
    detail: str = ""


DaemonMessage = Union[  # noqa: UP007 - a runtime alias; `X | Y` needs Python 3.10 at runtime too
    MatchMessage, TagMessage, EmbMessage, LevelMessage, SimilarityMessage, StatusMessage,
    HitMessage, ClassMessage, LoudnessMessage, MaskingMessage,
]
Item = Union[DaemonMessage, ConnectionEvent]  # noqa: UP007


def _base(header: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": int(header["seq"]),
        "capture_time": float(header["capture_time"]),
        "publish_time": float(header["publish_time"]),
        "model": str(header.get("model", "")),
    }


def from_wire(msg: wire.Message) -> DaemonMessage:
    """Turn a decoded :class:`wire.Message` into its typed message.

    Raises
    ------
    emberd.clients.wire.WireError
        If kind-specific fields are missing or malformed.
    """
    h = msg.header
    base = _base(h)
    ch = int(msg.channel) if msg.channel is not None else 0
    try:
        if msg.kind == wire.KIND_MATCH:
            matches = tuple(Match.from_dict(i, m) for i, m in enumerate(h.get("matches") or []))
            return MatchMessage(**base, channel=ch, matches=matches)
        if msg.kind == wire.KIND_TAG:
            tags = tuple(Tag(str(t["tag"]), float(t["confidence"])) for t in h.get("tags") or [])
            return TagMessage(**base, channel=ch, tags=tags)
        if msg.kind == wire.KIND_EMB:
            if msg.array is None:
                raise wire.WireError("emb message without payload")
            return EmbMessage(**base, channel=ch, embedding=msg.array.reshape(-1))
        if msg.kind == wire.KIND_LEVEL:
            return LevelMessage(
                **base,
                channel=ch,
                rms_db=float(h.get("rms_db", -math.inf)),
                peak_db=float(h.get("peak_db", -math.inf)),
                onset=bool(h.get("onset", False)),
            )
        if msg.kind == wire.KIND_SIMILARITY:
            if msg.array is None or msg.array.ndim != 2:
                raise wire.WireError("similarity message without a [C, C] payload")
            channels = tuple(int(c) for c in h.get("channels", range(msg.array.shape[0])))
            return SimilarityMessage(**base, channels=channels, matrix=msg.array)
        if msg.kind == wire.KIND_HIT:
            matches = tuple(Match.from_dict(i, m) for i, m in enumerate(h.get("matches") or []))
            return HitMessage(
                **base, channel=ch, hit=int(h["hit"]), stage=str(h["stage"]),
                onset_time=float(h["onset_time"]), onset_s=float(h.get("onset_s", 0.0)),
                window_ms=float(h.get("window_ms", 0.0)),
                latency_ms=float(h.get("latency_ms", math.nan)),
                peak_db=float(h.get("peak_db", -math.inf)), answer=str(h.get("answer", "none")),
                matches=matches,
            )  # fmt: skip
        if msg.kind == wire.KIND_CLASS:
            cls = h.get("class")
            return ClassMessage(**base, channel=ch, cls=None if cls is None else str(cls),
                                confidence=float(h.get("confidence", 0.0)),
                                signal=bool(h.get("signal", False)))  # fmt: skip
        if msg.kind == wire.KIND_LOUDNESS:
            ref = h.get("reference_db")
            return LoudnessMessage(
                **base, channel=ch, momentary=float(h["momentary"]),
                short_term=float(h["short_term"]), integrated=float(h["integrated"]),
                true_peak=float(h["true_peak"]), crest_db=float(h["crest_db"]),
                signal=bool(h["signal"]), bands_hz=tuple(float(f) for f in h["bands_hz"]),
                balance_db=msg.array.reshape(-1) if msg.array is not None else np.zeros(0),
                reference_db=None if ref is None else tuple(float(v) for v in ref),
            )  # fmt: skip
        if msg.kind == wire.KIND_MASKING:
            if msg.array is None or msg.array.ndim != 3:
                raise wire.WireError("masking message without a [C, C, bands] payload")
            return MaskingMessage(
                **base, channels=tuple(int(c) for c in h["channels"]),
                band_edges_hz=tuple(float(e) for e in h["band_edges_hz"]), fraction=msg.array,
                suggestions=tuple(dict(x) for x in h.get("suggestions") or []),
            )  # fmt: skip
        if msg.kind == wire.KIND_STATUS:
            status = h.get("status")
            if not isinstance(status, dict):
                raise wire.WireError("status message without a status object")
            return StatusMessage(**base, status=status)
    except (KeyError, TypeError, ValueError) as exc:
        raise wire.WireError(f"bad {msg.kind} message: {exc}") from exc
    raise wire.WireError(f"unknown kind {msg.kind!r}")


def decode_frames(frames: list[bytes]) -> DaemonMessage:
    """Decode ZeroMQ multipart frames straight into a typed message."""
    return from_wire(wire.decode(frames))


def to_json(item: Item) -> dict[str, Any]:
    """A JSON-ready dict of a typed message (arrays as lists), for the web panel."""
    if isinstance(item, ConnectionEvent):
        return {"kind": "connection", "state": item.state, "detail": item.detail}
    out: dict[str, Any] = {
        "seq": item.seq,
        "capture_time": item.capture_time,
        "publish_time": item.publish_time,
        "model": item.model,
    }
    if isinstance(item, MatchMessage):
        out.update(kind="match", channel=item.channel,
                   matches=[{"rank": m.rank, "name": m.name, "score": m.score, "tags": list(m.tags),
                             "kind": m.kind, "path": m.path} for m in item.matches])
    elif isinstance(item, TagMessage):
        out.update(kind="tag", channel=item.channel,
                   tags=[{"tag": t.tag, "confidence": t.confidence} for t in item.tags])
    elif isinstance(item, EmbMessage):
        out.update(kind="emb", channel=item.channel)
    elif isinstance(item, LevelMessage):
        out.update(kind="level", channel=item.channel, rms_db=_finite(item.rms_db),
                   peak_db=_finite(item.peak_db), onset=item.onset)
    elif isinstance(item, SimilarityMessage):  # a silent channel's NaN row -> null
        out.update(kind="similarity", channels=list(item.channels),
                   matrix=_json_safe(item.matrix.astype(np.float64).round(4).tolist()))
    elif isinstance(item, ClassMessage):
        out.update(kind="class", channel=item.channel, cls=item.cls,
                   confidence=_json_safe(item.confidence), signal=item.signal)
    elif isinstance(item, LoudnessMessage):
        out.update(kind="loudness", channel=item.channel, signal=item.signal,
                   momentary=_finite(item.momentary), short_term=_finite(item.short_term),
                   integrated=_finite(item.integrated), true_peak=_finite(item.true_peak),
                   crest_db=_json_safe(item.crest_db), bands_hz=list(item.bands_hz),
                   balance_db=_json_safe(item.balance_db.astype(np.float64).round(2).tolist()),
                   reference_db=_json_safe(item.reference_db))
    elif isinstance(item, MaskingMessage):  # NaN (the maskee never played) -> null
        out.update(kind="masking", channels=list(item.channels),
                   band_edges_hz=list(item.band_edges_hz),
                   fraction=_json_safe(item.fraction.astype(np.float64).round(3).tolist()),
                   suggestions=_json_safe(list(item.suggestions)))
    elif isinstance(item, StatusMessage):
        out.update(kind="status", status=_json_safe(item.status))
    elif isinstance(item, HitMessage):
        out.update(kind="hit", channel=item.channel, hit=item.hit, stage=item.stage,
                   onset_time=item.onset_time, latency_ms=_json_safe(item.latency_ms),
                   peak_db=_finite(item.peak_db), answer=item.answer,
                   matches=[{"rank": m.rank, "name": m.name, "kind": m.kind, "path": m.path,
                             "confidence": _json_safe(m.confidence), "tags": list(m.tags)}
                            for m in item.matches])  # fmt: skip
    else:  # pragma: no cover - exhaustive above
        raise EmberdError(f"message: cannot serialise {type(item).__name__}")
    return out


def _json_safe(value: Any) -> Any:
    """Copy of a JSON-like value with NaN/inf as None (browsers reject NaN in JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _finite(x: float, floor_db: float = -120.0) -> float:
    """JSON has no -inf: clamp silence to a floor in dB."""
    return x if math.isfinite(x) else floor_db
