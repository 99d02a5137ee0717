"""The OSC address space, defined once for the daemon and every OSC client.

Every address lives under ``/emberd/`` and is listed in :data:`ADDRESSES` with
its argument types; ``docs/osc.md`` documents the same table with examples for
Pd, SuperCollider, Max and Wekinator. Arguments stay Pd-friendly: int32 (``i``),
float32 (``f``), strings (``s``) and, for the raw embedding only, blobs (``b``).
No doubles, no int64.

Times. Per-hop and status messages start with the same three ints::

    seq  capture_ms  publish_ms

``seq`` is the hop number (the same for every message of one hop, so a client
can group them). ``capture_ms`` is when the first sample of the newest hop of
audio the message describes was captured, and ``publish_ms`` when the datagram
was sent, both in integer milliseconds since the daemon started (exact in Pd's
float32 for 4.6 hours, in int32 for 24 days). ``/emberd/status`` gives the
daemon's start as Unix time (``start_s`` + ``start_ms``) to turn them into wall
clock time. ``publish_ms - capture_ms`` is the hop latency: waiting for the hop
to fill plus the analysis.

Size. Every datagram is at most ``max_bytes`` (1200 by default, below a
1280-byte IPv6 minimum MTU with room for headers): paths are shortened from the
left (``.../Kicks/kick 01.wav``), tag lists cut, and the embedding blob is split
into parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pythonosc.osc_message import OscMessage, ParseError
from pythonosc.osc_message_builder import OscMessageBuilder

DEFAULT_MAX_DATAGRAM_BYTES = 1200  # fits one 1280-byte IPv6 MTU with IP/UDP headers
MIN_MAX_DATAGRAM_BYTES = 256  # below this a match with a short path no longer fits
ELLIPSIS = "..."  # marks a path shortened from the left
NAME_MAX_BYTES = 128  # longest sample name sent whole

PREFIX = "/emberd"
ADDR_MATCH = "/emberd/match"
ADDR_TAGS = "/emberd/tags"
ADDR_EMB = "/emberd/emb"
ADDR_PROJ = "/emberd/proj"
ADDR_LEVEL = "/emberd/level"
ADDR_SIMILARITY = "/emberd/similarity"
ADDR_STATUS = "/emberd/status"
ADDR_INPUT = "/emberd/input"
ADDR_REPLY = "/emberd/reply"
ADDR_CAPTURE_MATCH = "/emberd/capture/match"
ADDR_HIT = "/emberd/hit"
ADDR_CLASS = "/emberd/class"
ADDR_LOUDNESS = "/emberd/loudness"
ADDR_MASKING = "/emberd/masking"
CONTROL_PREFIX = "/emberd/ctl/"
ADDR_WEKINATOR = "/wek/inputs"  # Wekinator's default input address

TIME_FIELDS = ("seq", "capture_ms", "publish_ms")

#: address -> (type tags of the fixed arguments, their names, type of the repeated tail or "").
#: The tail repeats after the fixed arguments: tag/confidence pairs, projection values,
#: one similarity row.
ADDRESSES: dict[str, tuple[str, tuple[str, ...], str]] = {
    ADDR_MATCH: ("iiiiifss", (*TIME_FIELDS, "channel", "rank", "score", "name", "path"), ""),
    ADDR_TAGS: ("iiii", (*TIME_FIELDS, "channel"), "sf"),
    ADDR_EMB: ("iiiiiiib", (*TIME_FIELDS, "channel", "part", "parts", "offset", "data"), ""),
    ADDR_PROJ: ("iiii", (*TIME_FIELDS, "channel"), "f"),
    ADDR_LEVEL: ("iiiiffi", (*TIME_FIELDS, "channel", "rms_db", "peak_db", "onset"), ""),
    ADDR_SIMILARITY: ("iiiii", (*TIME_FIELDS, "row", "channels"), "f"),
    ADDR_STATUS: (
        "iiiffffiiiiiiss",
        (
            *TIME_FIELDS,
            "uptime_s",
            "latency_p50_ms",
            "latency_p99_ms",
            "inference_ms",
            "overflows",
            "dropped_hops",
            "rejected",
            "channels",
            "start_s",
            "start_ms",
            "provider",
            "model",
        ),
        "",
    ),
    ADDR_INPUT: ("iiisii", (*TIME_FIELDS, "state", "stalls", "reconnects"), ""),
    ADDR_REPLY: ("sis", ("cmd", "ok", "detail"), ""),
    ADDR_CAPTURE_MATCH: ("iifss", ("channel", "rank", "score", "name", "path"), ""),
    # One datagram per hit stage, top answer only; answer "none" has empty name and path.
    ADDR_HIT: (
        "iiiiisiffsfss",
        (
            *TIME_FIELDS, "channel", "hit", "stage", "onset_ms", "latency_ms", "peak_db",
            "answer", "confidence", "name", "path",
        ),
        "",
    ),
    # Mix-down assistant (rate-limited: class and masking 2.5/s, loudness 5/s).
    ADDR_CLASS: ("iiiisfi", (*TIME_FIELDS, "channel", "class", "confidence", "signal"), ""),
    ADDR_LOUDNESS: (
        "iiiifffffi",
        (
            *TIME_FIELDS, "channel", "momentary", "short_term", "integrated", "true_peak",
            "crest_db", "signal",
        ),
        "f",  # the 1/3-octave balance, dB re the stem's total, 20 Hz upwards
    ),
    # One datagram per suggestion (index 0..count-1); count 0: nothing masks anything.
    ADDR_MASKING: (
        "iiiiiiiffffs",
        (
            *TIME_FIELDS, "index", "count", "masker", "maskee", "lo_hz", "hi_hz",
            "margin_db", "fraction", "text",
        ),
        "",
    ),
    ADDR_WEKINATOR: ("", (), "f"),
}

#: Control addresses (``/emberd/ctl/<cmd>``) and their arguments, mapped onto the
#: JSON request ``{"cmd": cmd, name: value}`` of the ZeroMQ control channel.
CONTROL_ARGS: dict[str, tuple[tuple[str, type], ...]] = {
    "status": (),
    "reload": (),
    "set_k": (("k", int),),
    "set_model": (("model", str),),
    "pause": (),
    "resume": (),
    "capture": (("seconds", float), ("channel", int)),
}


class OscFormatError(ValueError):
    """A datagram that is not a valid emberd OSC message."""


@dataclass(frozen=True)
class OscPacket:
    """One decoded message: the address, its arguments, and named fixed arguments."""

    address: str
    args: tuple[Any, ...]
    fields: dict[str, Any]
    tail: tuple[Any, ...]


def _padded(n: int) -> int:
    """Bytes an OSC string/blob of ``n`` raw bytes takes with its padding."""
    return (n + 4) & ~3


def _string_size(text: str) -> int:
    return _padded(len(text.encode("utf-8")))


def _fixed_size(address: str, types: str) -> int:
    """Size of the address and type-tag strings."""
    return _string_size(address) + _string_size("," + types)


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _build(address: str, types: str, args: list[Any]) -> bytes:
    builder = OscMessageBuilder(address)
    for tag, value in zip(types, args, strict=False):
        if tag == "i":  # clamp: an out-of-range int must not make the datagram unbuildable
            value = min(INT32_MAX, max(INT32_MIN, int(value)))
        builder.add_arg(value, tag)
    return bytes(builder.build().dgram)


def shorten_utf8(text: str, max_bytes: int, *, keep: str = "right") -> str:
    """Shorten ``text`` to at most ``max_bytes`` UTF-8 bytes without splitting a character.

    ``keep="right"`` keeps the end (for paths: the file name and its folders)
    behind :data:`ELLIPSIS`; ``keep="left"`` keeps the start.
    """
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    room = max(0, max_bytes - len(ELLIPSIS))
    if keep == "right":
        cut = raw[len(raw) - room :] if room else b""
        return ELLIPSIS + cut.decode("utf-8", errors="ignore") if room else ""
    return raw[:room].decode("utf-8", errors="ignore") + ELLIPSIS if room else ""


def _strip_nul(text: str) -> str:
    # A NUL would end the OSC string early and corrupt the datagram.
    return text.replace("\x00", "")


def encode_match(
    times: tuple[int, int, int],
    *,
    channel: int,
    rank: int,
    score: float,
    name: str,
    path: str,
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
    address: str = ADDR_MATCH,
) -> bytes:
    """Encode one match; ``path`` (then ``name``) is shortened to fit ``max_bytes``."""
    if address == ADDR_CAPTURE_MATCH:
        types, head = "iifss", [channel, rank, float(score)]
    else:
        types, head = "iiiiifss", [*times, channel, rank, float(score)]
    name, path = _strip_nul(name), _strip_nul(path)
    fixed = _fixed_size(address, types) + 4 * len(head)
    room = max_bytes - fixed
    # A string of n bytes takes at most n + 4 with its NUL padding. The name is
    # capped at a third of the room so that the end of the path always shows.
    name = shorten_utf8(name, min(NAME_MAX_BYTES, room // 3), keep="left")
    path = shorten_utf8(path, room - _string_size(name) - 4, keep="right")
    return _build(address, types, [*head, name, path])


def encode_tags(
    times: tuple[int, int, int],
    *,
    channel: int,
    tags: list[tuple[str, float]],
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
) -> bytes:
    """Encode the live tags as ``tag, confidence`` pairs, highest first, cut to fit."""
    types = "iiii"
    args: list[Any] = [*times, channel]
    size = _fixed_size(ADDR_TAGS, types + "sf" * len(tags)) + 16
    kept: list[tuple[str, float]] = []
    budget = max_bytes - size
    for tag, conf in tags:
        tag = shorten_utf8(_strip_nul(tag), 64, keep="left")
        cost = _string_size(tag) + 4
        if cost > budget:
            break
        budget -= cost
        kept.append((tag, conf))
    for tag, conf in kept:
        types += "sf"
        args += [tag, float(conf)]
    return _build(ADDR_TAGS, types, args)


def embedding_part_floats(max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES) -> int:
    """How many float32 values one ``/emberd/emb`` datagram carries."""
    overhead = _fixed_size(ADDR_EMB, ADDRESSES[ADDR_EMB][0]) + 7 * 4 + 4  # 7 ints + blob size
    return max(1, (max_bytes - overhead) // 4)


def encode_embedding(
    times: tuple[int, int, int],
    *,
    channel: int,
    vector: np.ndarray,
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
) -> list[bytes]:
    """Encode an embedding as float32 little-endian blobs, split into datagram-sized parts.

    Each part carries ``part`` (0-based), ``parts`` and ``offset`` (index of its
    first value) so a client can reassemble the vector of length
    ``sum(len(blob) // 4)``.
    """
    data = np.ascontiguousarray(vector, dtype="<f4").ravel()
    per = embedding_part_floats(max_bytes)
    parts = max(1, -(-data.size // per))
    out = []
    for part in range(parts):
        chunk = data[part * per : (part + 1) * per]
        out.append(
            _build(
                ADDR_EMB,
                ADDRESSES[ADDR_EMB][0],
                [*times, channel, part, parts, part * per, chunk.tobytes()],
            )
        )
    return out


def encode_floats(
    address: str,
    head_types: str,
    head: list[Any],
    values: np.ndarray,
    *,
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
) -> bytes:
    """Encode fixed arguments followed by float32 values (projection, similarity row, Wekinator).

    Raises
    ------
    OscFormatError
        If the values do not fit in ``max_bytes`` (the caller limits their count).
    """
    vals = [float(v) for v in np.asarray(values, dtype=np.float32).ravel()]
    types = head_types + "f" * len(vals)
    size = _fixed_size(address, types) + 4 * (len(head) + len(vals))
    if size > max_bytes:
        raise OscFormatError(f"{address}: {len(vals)} floats need {size} bytes > {max_bytes}")
    return _build(address, types, [*head, *vals])


def max_floats(address: str, head_types: str, max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES) -> int:
    """Largest number of trailing floats an ``address`` message can carry in ``max_bytes``."""
    n = (max_bytes - _string_size(address) - 4 * len(head_types)) // 5  # 4 bytes + 1 tag each
    while n > 0 and _fixed_size(address, head_types + "f" * n) + 4 * (len(head_types) + n) > (
        max_bytes
    ):
        n -= 1
    return n


def encode_class(
    times: tuple[int, int, int], *, channel: int, cls: str | None, confidence: float
) -> bytes:
    """Encode a channel's instrument class (``"none"`` and signal 0 when it is silent)."""
    args = [*times, channel, cls or "none", float(confidence), int(cls is not None)]
    return _build(ADDR_CLASS, ADDRESSES[ADDR_CLASS][0], args)


def encode_loudness(
    times: tuple[int, int, int],
    *,
    channel: int,
    figures: tuple[float, float, float, float, float],
    signal: bool,
    balance_db: np.ndarray,
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
) -> bytes:
    """Encode loudness ``(momentary, short_term, integrated, true_peak, crest_db)`` + balance."""
    types = ADDRESSES[ADDR_LOUDNESS][0]
    head = [*times, channel, *(float(f) for f in figures), int(signal)]
    limit = max_floats(ADDR_LOUDNESS, types, max_bytes)
    return encode_floats(ADDR_LOUDNESS, types, head, balance_db[:limit], max_bytes=max_bytes)


def encode_masking(
    times: tuple[int, int, int],
    *,
    index: int,
    count: int,
    masker: int,
    maskee: int,
    lo_hz: float,
    hi_hz: float,
    margin_db: float,
    fraction: float,
    text: str,
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
) -> bytes:
    """Encode one masking suggestion (the text is cut to fit ``max_bytes``)."""
    types = ADDRESSES[ADDR_MASKING][0]
    room = max_bytes - _fixed_size(ADDR_MASKING, types) - 4 * (len(types) - 1) - 4
    text = shorten_utf8(_strip_nul(text), room, keep="left")
    args = [*times, index, count, masker, maskee, float(lo_hz), float(hi_hz),
            float(margin_db), float(fraction), text]  # fmt: skip
    return _build(ADDR_MASKING, types, args)


def encode_level(
    times: tuple[int, int, int], *, channel: int, rms_db: float, peak_db: float, onset: bool
) -> bytes:
    """Encode level (dBFS) and the onset flag (1 when an onset started in this hop)."""
    return _build(
        ADDR_LEVEL, "iiiiffi", [*times, channel, float(rms_db), float(peak_db), int(onset)]
    )


def encode_hit(
    times: tuple[int, int, int],
    *,
    channel: int,
    hit: int,
    stage: str,
    onset_ms: int,
    latency_ms: float,
    peak_db: float,
    answer: str,
    confidence: float,
    name: str,
    path: str,
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
) -> bytes:
    """Encode one stage of a hit (``/emberd/hit``): its top answer, ``path`` shortened to fit.

    ``times`` is ``(seq, capture_ms, publish_ms)`` with ``seq`` counting hit messages of
    the channel; ``onset_ms`` is the onset in ms since the daemon started.
    """
    types = ADDRESSES[ADDR_HIT][0]
    head = [*times, channel, hit, _strip_nul(stage)[:16], int(onset_ms), float(latency_ms),
            float(peak_db), _strip_nul(answer)[:16], float(confidence)]  # fmt: skip
    name, path = _strip_nul(name), _strip_nul(path)
    fixed = _fixed_size(ADDR_HIT, types) + sum(
        _string_size(v) if isinstance(v, str) else 4 for v in head
    )
    room = max_bytes - fixed
    name = shorten_utf8(name, min(NAME_MAX_BYTES, room // 3), keep="left")
    path = shorten_utf8(path, room - _string_size(name) - 4, keep="right")
    return _build(ADDR_HIT, types, [*head, name, path])


def encode_status(times: tuple[int, int, int], status: dict[str, Any]) -> bytes:
    """Encode the status object (``emberd.daemon.status``) as ``/emberd/status``."""
    types, names, _ = ADDRESSES[ADDR_STATUS]
    args: list[Any] = [*times]
    for tag, name in zip(types[3:], names[3:], strict=False):
        value = status.get(name, 0)
        if tag == "s":
            args.append(shorten_utf8(_strip_nul(str(value or "")), 100, keep="left"))
        elif tag == "f":
            args.append(float(value if value is not None else 0.0))
        else:
            args.append(int(value or 0))
    return _build(ADDR_STATUS, types, args)


def encode_input(times: tuple[int, int, int], status: dict[str, Any]) -> bytes:
    """Encode the device input state (``running``, ``stalled`` or ``reconnecting``)."""
    return _build(ADDR_INPUT, "iiisii", [
        *times, str(status.get("input_state", "running")),
        int(status.get("input_stalls", 0)), int(status.get("input_reconnects", 0))])


def encode_reply(
    cmd: str, ok: bool, detail: dict[str, Any], *, max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES
) -> bytes:
    """Encode a control reply: the command, 1/0, and the reply as JSON text (cut to fit)."""
    cmd = shorten_utf8(_strip_nul(cmd), 64, keep="left")
    text = json.dumps(detail, separators=(",", ":"), default=str)
    room = max_bytes - _fixed_size(ADDR_REPLY, "sis") - _string_size(cmd) - 4 - 4
    return _build(ADDR_REPLY, "sis", [cmd, int(ok), shorten_utf8(text, room, keep="left")])


_PARSED_TYPE_TAGS = frozenset(b"ihfdsbrmtTFN[]")  # what python-osc parses


def _check_type_tags(dgram: bytes) -> None:
    """Refuse type tags python-osc does not parse *before* it sees them: it logs a
    warning for each one, and a flood of such datagrams would flood the log."""
    end = dgram.find(b"\x00")
    if end < 0:
        return  # python-osc reports the malformed address
    start = (end + 4) & ~3
    if dgram[start : start + 1] != b",":
        return
    stop = dgram.find(b"\x00", start)
    tags = dgram[start + 1 : stop if stop >= 0 else len(dgram)]
    if any(t not in _PARSED_TYPE_TAGS for t in tags):
        raise OscFormatError(f"unsupported OSC type tags {tags[:16]!r}")


def decode(dgram: bytes) -> OscPacket:
    """Decode one datagram (any OSC message; named fields for known addresses).

    Raises
    ------
    OscFormatError
        For a bundle, a truncated or malformed datagram, or known address with
        the wrong argument types.
    """
    _check_type_tags(dgram)
    try:
        msg = OscMessage(dgram)
        args = tuple(msg.params)
        address = msg.address
    except (ParseError, IndexError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise OscFormatError(f"malformed OSC datagram: {exc}") from exc
    spec = ADDRESSES.get(address)
    if spec is None:
        return OscPacket(address, args, {}, ())
    types, names, tail_types = spec
    head, tail = args[: len(types)], args[len(types) :]
    if len(head) != len(types) or not all(
        _matches(t, v) for t, v in zip(types, head, strict=False)
    ):
        raise OscFormatError(f"{address}: arguments do not match ',{types}'")
    if tail_types:
        pattern = tail_types * (len(tail) // len(tail_types))
        if len(pattern) != len(tail) or not all(
            _matches(t, v) for t, v in zip(pattern, tail, strict=False)
        ):
            raise OscFormatError(f"{address}: trailing arguments are not ({tail_types})*")
    elif tail:
        raise OscFormatError(f"{address}: {len(tail)} unexpected arguments")
    return OscPacket(address, args, dict(zip(names, head, strict=False)), tail)


def _matches(tag: str, value: Any) -> bool:
    if tag == "i":
        return isinstance(value, int) and not isinstance(value, bool)
    if tag == "f":
        return isinstance(value, float)
    if tag == "s":
        return isinstance(value, str)
    return isinstance(value, (bytes, bytearray))


def parse_control(dgram: bytes) -> dict[str, Any]:
    """Turn an ``/emberd/ctl/<cmd> args...`` datagram into a control request dict.

    Ints are accepted where floats are expected and vice versa (Pd sends every
    number as a float), when the value is integral.

    Raises
    ------
    OscFormatError
        Malformed datagram, unknown address, wrong argument count or types.
    """
    packet = decode(dgram)
    if not packet.address.startswith(CONTROL_PREFIX):
        raise OscFormatError(f"unknown address {shorten_utf8(packet.address, 80)!r}")
    cmd = packet.address[len(CONTROL_PREFIX) :]
    spec = CONTROL_ARGS.get(cmd)
    if spec is None:
        raise OscFormatError(f"unknown control command {shorten_utf8(cmd, 40)!r}")
    if len(packet.args) > len(spec):
        raise OscFormatError(f"{cmd}: takes at most {len(spec)} arguments")
    request: dict[str, Any] = {"cmd": cmd}
    for (name, kind), value in zip(spec, packet.args, strict=False):
        if kind is str:
            if not isinstance(value, str):
                raise OscFormatError(f"{cmd}: {name} must be a string")
            request[name] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OscFormatError(f"{cmd}: {name} must be a number")
        elif kind is int:
            if not float(value).is_integer():
                raise OscFormatError(f"{cmd}: {name} must be a whole number")
            request[name] = int(value)
        else:
            request[name] = float(value)
    return request
