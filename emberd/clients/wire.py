"""The wire format, defined once and shared by the daemon and every client.

ZeroMQ (PUB/SUB)
----------------
Every message is multipart ``[topic, header, payload?]``:

* ``topic`` -- ASCII bytes. Per-channel topics are ``"<kind>.<channel>"``
  (``match.0``, ``emb.3``) so a subscriber can subscribe to ``b"match."`` for
  every channel or ``b"match.0"`` for one. ``status`` and ``similarity`` have
  no channel suffix.
* ``header`` -- UTF-8 JSON object. Always present: ``v`` (format version),
  ``kind``, ``seq`` (per-topic sequence number, starts at 0; a gap means the
  subscriber dropped messages), ``capture_time`` (Unix seconds of the first
  sample of the audio the message describes), ``publish_time`` (Unix seconds
  when the daemon sent it), ``model``. Per-channel kinds add ``channel``.
  Messages with an array add ``shape`` and ``dtype`` (always ``"float32"``,
  little-endian, C order).
* ``payload`` -- the raw array bytes, present exactly when ``shape`` is.

Kinds and their extra header fields:

=============  ==============================================================
``emb``        payload = the embedding, shape ``[dim]``
``match``      ``matches``: list of match objects, best first -- the same
               objects as ``emberd query --json`` (``path`` absolute,
               ``name``, ``score``, ``distance``, ``segment_start_s``,
               ``tags``, ``kind`` = ``"exact"`` or ``"similar"``, ``class`` = the
               instrument class the file's names give, or null)
``tag``        ``tags``: list of ``{"tag": str, "confidence": float}``,
               highest first, confidences sum to <= 1
``level``      ``rms_db`` (float, dBFS), ``peak_db`` (float), ``onset`` (bool)
``similarity`` ``channels``: list of channel numbers; payload = cosine matrix,
               shape ``[C, C]``
``status``     ``status``: the status object (see ``emberd.daemon.status``)
``hit``        one answer of the decision ladder for one hit (see below)
``class``      mix-down, 2.5/s: ``class`` (str, or null: no signal), ``confidence``,
               ``signal`` (bool)
``loudness``   mix-down, 5/s: ``momentary``, ``short_term``, ``integrated`` (LUFS),
               ``true_peak`` (dBTP), ``crest_db``, ``signal``, ``bands_hz``
               (1/3-octave centres), ``reference_db`` (target curve or null);
               payload = the stem's balance in dB re its total, shape ``[bands]``
``masking``    mix-down, 2.5/s, no channel suffix: ``channels``, ``band_edges_hz``,
               ``suggestions`` (list of ``{masker, maskee, lo_hz, hi_hz,
               margin_db, fraction, text}``, channel numbers); payload = share
               of the time each stem masks each other one per critical band,
               shape ``[C, C, bands]`` (masker, maskee, band), NaN where the
               maskee did not play (see ``emberd.dsp.masking``)
=============  ==============================================================

The ``similarity`` matrix is centred on the library's mean vector (0: as alike
as two library sounds on average, 1: the same sound); a silent channel's row
and column are NaN, and its number is listed in the header's ``silent``.

Hits (topic ``hit.<channel>``). Every hit is published up to three times, once
per stage, in order, the moment each answer exists: ``provisional`` (from the
attack, ~6 ms of sound), ``refined`` (onset-aligned waveform over ~50 and
~150 ms: one message each) and ``final`` (<= 300 ms or when the next hit
comes). Header fields besides the common ones:

* ``hit`` -- the hit's id, counting from 0 per channel; every stage of one hit
  carries the same id (stages of two hits may interleave).
* ``stage`` -- ``"provisional"``, ``"refined"`` or ``"final"``.
* ``window_ms`` -- how much sound after the onset the stage looked at.
* ``onset_time`` -- Unix seconds of the onset sample; ``onset_s`` -- the same
  in seconds since the input began (file input: position in the file).
* ``capture_time`` -- Unix seconds when the newest sample this stage used was
  captured (so ``publish_time - capture_time`` is the analysis time, and
  ``capture_time - onset_time`` the wait for the sound).
* ``latency_ms`` -- ``(publish_time - onset_time) * 1000``: onset to answer.
* ``peak_db`` -- the hit's peak level so far in dBFS (MIDI velocity).
* ``answer`` -- the top match's ``kind``, or ``"none"`` when ``matches`` is
  empty (nothing in the library is near enough to name).
* ``matches`` -- match objects as for ``match`` (best first), each with
  ``kind`` (``"exact"``: this library file; ``"similar"``: a library sound of
  the same instrument, the played sound is not in the library) and
  ``confidence`` in [0, 1], calibrated: of all answers given with confidence
  ~c, about c are right (fitted by ``bench/fit_hit_confidence.py`` on tuning
  kits, measured on held-out kits).

Control (REQ/REP)
-----------------
Request: a UTF-8 JSON object ``{"cmd": NAME, ...}``. Reply: a JSON object
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WIRE_VERSION = 1

# Message kinds (the part of the topic before the dot).
KIND_EMB = "emb"
KIND_MATCH = "match"
KIND_TAG = "tag"
KIND_LEVEL = "level"
KIND_SIMILARITY = "similarity"
KIND_STATUS = "status"
KIND_HIT = "hit"
KIND_CLASS = "class"
KIND_LOUDNESS = "loudness"
KIND_MASKING = "masking"
PER_CHANNEL_KINDS = frozenset(
    {KIND_EMB, KIND_MATCH, KIND_TAG, KIND_LEVEL, KIND_HIT, KIND_CLASS, KIND_LOUDNESS}
)

# Hit stages, in the order each hit publishes them, and answer kinds.
HIT_STAGES = ("provisional", "refined", "final")
HIT_ANSWERS = ("exact", "similar", "none")
ALL_KINDS = frozenset(PER_CHANNEL_KINDS | {KIND_SIMILARITY, KIND_STATUS, KIND_MASKING})

# Control commands understood by the daemon (ZeroMQ and OSC alike).
CONTROL_COMMANDS = (
    "status", "reload", "set_k", "set_model", "pause", "resume", "capture", "lost",
)

DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:5556"
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"


class WireError(ValueError):
    """A message that does not follow the wire format."""


def topic_for(kind: str, channel: int | None = None) -> bytes:
    """Return the ZeroMQ topic frame for ``kind`` (and ``channel`` when per channel)."""
    if kind in PER_CHANNEL_KINDS:
        if channel is None:
            raise WireError(f"kind {kind!r} needs a channel")
        return f"{kind}.{channel}".encode("ascii")
    if kind not in ALL_KINDS:
        raise WireError(f"unknown kind {kind!r}")
    return kind.encode("ascii")


@dataclass
class Message:
    """One decoded ZeroMQ message.

    Attributes
    ----------
    kind : str
        One of the ``KIND_*`` constants.
    header : dict
        The JSON header, as sent.
    array : numpy.ndarray or None
        The payload as a read-only float32 array, when the message has one.
    """

    kind: str
    header: dict[str, Any]
    array: np.ndarray | None = None
    channel: int | None = field(default=None)

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    @property
    def capture_time(self) -> float:
        return float(self.header["capture_time"])

    @property
    def publish_time(self) -> float:
        return float(self.header["publish_time"])


def encode(
    kind: str,
    *,
    seq: int,
    capture_time: float,
    model: str,
    channel: int | None = None,
    array: np.ndarray | None = None,
    publish_time: float | None = None,
    **fields: Any,
) -> list[bytes]:
    """Encode one message as the multipart frames to send.

    Parameters
    ----------
    kind : str
        Message kind (``KIND_*``).
    seq : int
        Per-topic sequence number.
    capture_time : float
        Unix seconds of the audio the message describes.
    model : str
        Name of the encoder that produced it.
    channel : int, optional
        Input channel, required for per-channel kinds.
    array : numpy.ndarray, optional
        Payload; sent as little-endian float32 in C order.
    publish_time : float, optional
        Defaults to now.
    **fields
        Kind-specific JSON header fields.

    Returns
    -------
    list of bytes
        ``[topic, header]`` or ``[topic, header, payload]``.
    """
    header = make_header(kind, seq=seq, capture_time=capture_time, model=model, channel=channel,
                         array=array, publish_time=publish_time, **fields)  # fmt: skip
    return pack(topic_for(kind, channel), header, array)


def make_header(
    kind: str,
    *,
    seq: int,
    capture_time: float,
    model: str,
    channel: int | None = None,
    array: np.ndarray | None = None,
    publish_time: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The JSON header of one message (parameters as :func:`encode`), ``shape``/``dtype``
    included when there is an array: what every sink receives (``docs/plugins.md``)."""
    header: dict[str, Any] = {
        "v": WIRE_VERSION,
        "kind": kind,
        "seq": int(seq),
        "capture_time": float(capture_time),
        "publish_time": float(time.time() if publish_time is None else publish_time),
        "model": model,
    }
    if channel is not None:
        header["channel"] = int(channel)
    header.update(fields)
    if array is not None:
        header["shape"] = list(np.shape(array))
        header["dtype"] = "float32"
    return header


def pack(topic: str | bytes, header: dict[str, Any], array: np.ndarray | None) -> list[bytes]:
    """Frames ``[topic, header, payload?]`` of a message whose header is already built."""
    t = topic if isinstance(topic, bytes) else topic.encode("ascii")
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if array is None:
        return [t, head]
    return [t, head, np.ascontiguousarray(array, dtype="<f4").tobytes()]


def decode(frames: list[bytes]) -> Message:
    """Decode multipart frames into a :class:`Message`.

    Raises
    ------
    WireError
        If the frames do not follow the wire format.
    """
    if len(frames) not in (2, 3):
        raise WireError(f"expected 2 or 3 frames, got {len(frames)}")
    try:
        topic = bytes(frames[0]).decode("ascii")
        header = json.loads(bytes(frames[1]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"bad topic or header: {exc}") from exc
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    kind, _, chan = topic.partition(".")
    if kind not in ALL_KINDS or header.get("kind") != kind:
        raise WireError(f"unknown or inconsistent kind in topic {topic!r}")
    for key in ("seq", "capture_time", "publish_time"):
        if not isinstance(header.get(key), (int, float)):
            raise WireError(f"header field {key!r} missing or not a number")
    if kind == KIND_HIT and (
        header.get("stage") not in HIT_STAGES
        or not isinstance(header.get("hit"), int)
        or not isinstance(header.get("onset_time"), (int, float))
    ):
        raise WireError("hit header needs an int 'hit', a known 'stage' and 'onset_time'")
    channel = None
    if kind in PER_CHANNEL_KINDS:
        if not chan.isdigit():
            raise WireError(f"topic {topic!r} lacks a channel number")
        channel = int(chan)
    array = None
    if "shape" in header:
        if len(frames) != 3:
            raise WireError("header has a shape but no payload frame")
        shape = tuple(int(n) for n in header["shape"])
        if header.get("dtype") != "float32":
            raise WireError(f"unsupported dtype {header.get('dtype')!r}")
        payload = bytes(frames[2])
        if len(payload) != 4 * int(np.prod(shape, dtype=np.int64)):
            raise WireError(f"payload of {len(payload)} bytes does not fit shape {shape}")
        array = np.frombuffer(payload, dtype="<f4").reshape(shape)
    elif len(frames) == 3:
        raise WireError("payload frame without a shape in the header")
    return Message(kind=kind, header=header, array=array, channel=channel)


def hit_fields(
    *,
    hit: int,
    stage: str,
    onset_time: float,
    onset_s: float,
    window_ms: float,
    peak_db: float,
    matches: list[dict[str, Any]],
    publish_time: float,
) -> dict[str, Any]:
    """The kind-specific header fields of a ``hit`` message (see the module docstring).

    Pass them to :func:`encode` with ``capture_time`` and the same ``publish_time``;
    ``latency_ms`` and ``answer`` are derived here so every sender computes them alike.

    Raises
    ------
    WireError
        Unknown stage.
    """
    if stage not in HIT_STAGES:
        raise WireError(f"hit stage {stage!r}: expected one of {', '.join(HIT_STAGES)}")
    return {
        "hit": int(hit),
        "stage": stage,
        "onset_time": float(onset_time),
        "onset_s": round(float(onset_s), 6),
        "window_ms": round(float(window_ms), 2),
        "latency_ms": round((publish_time - onset_time) * 1000.0, 3),
        "peak_db": round(float(peak_db), 2),
        "answer": str(matches[0].get("kind", "similar")) if matches else "none",
        "matches": matches,
    }


def encode_request(cmd: str, **args: Any) -> bytes:
    """Encode a control request ``{"cmd": cmd, ...}``."""
    return json.dumps({"cmd": cmd, **args}).encode("utf-8")


def decode_reply(data: bytes) -> dict[str, Any]:
    """Decode a control reply; raises :class:`WireError` if it is not a JSON object with ``ok``."""
    try:
        reply = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"reply is not JSON: {exc}") from exc
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise WireError("reply is not a JSON object with a boolean 'ok'")
    return reply
