"""Seeded generators of malformed control input: OSC datagrams and ZeroMQ requests.

Every message generated here is one the daemon must *reject* (an error reply
or a counter), never act on: no message is a valid state-changing command, so
a fuzz run can assert ``rejected == sent`` and that the daemon still publishes
with unchanged settings. Each item comes with its category so a failure names
the kind of input that caused it.

OSC categories: random bytes, huge datagrams (up to the UDP maximum), valid
control messages cut short, unknown addresses, known commands with wrong
types / counts / out-of-range values (NaN, inf, negative, huge), bundles
nested hundreds of levels deep (python-osc parses bundles recursively), and
bundles with far-future timetags (python-osc's default dispatcher *sleeps*
until the timetag, which would stall the OSC input thread for decades).

ZeroMQ categories: invalid UTF-8, invalid JSON, JSON that is not an object,
missing or non-string ``cmd``, unknown commands, bad argument types and
ranges, integers with more digits than Python's int parser allows (a
``ValueError`` that is not a ``JSONDecodeError``), JSON nested deeper than
the recursion limit (a ``RecursionError``), huge payloads and multipart
requests.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from pythonosc.osc_message_builder import OscMessageBuilder

UDP_MAX_PAYLOAD_BYTES = 65507  # largest IPv4 UDP datagram payload
OSC_CONTROL_PREFIX = "/emberd/ctl/"
DEEP_BUNDLE_MAX_LEVELS = 3000  # 20 bytes a level: 3000 levels fit one datagram
FAR_FUTURE_NTP_SECONDS = 0xF000_0000  # NTP seconds: year 2063; about 1.2e9 s from 2026
NTP_UNIX_OFFSET_S = 2_208_988_800  # seconds from 1900 to 1970
HUGE_ZMQ_BYTES = 1 << 20  # 1 MiB control request
DEEP_JSON_LEVELS = (2_000, 30_000)  # beyond Python's recursion limit, under 64 KiB of text
UNKNOWN_MODEL = "no-such-model-\u2603"

#: Commands the daemon knows, with arguments that are always invalid.
_BAD_ARGS: dict[str, list[dict[str, object]]] = {
    "set_k": [
        {},
        {"k": "ten"},
        {"k": -1},
        {"k": 0},
        {"k": 10**12},
        {"k": 2.5},
        {"k": None},
        {"k": True},
        {"k": [5]},
        {"k": {"k": 5}},
    ],
    "set_model": [{}, {"model": 123}, {"model": None}, {"model": UNKNOWN_MODEL},
                  {"model": ""}, {"model": ["aisfx"]}],
    "capture": [
        {"seconds": -1.0},
        {"seconds": 0.0},
        {"seconds": 1e9},
        {"seconds": "two"},
        {"seconds": None},
        {"seconds": 2.0, "channel": -3},
        {"seconds": 2.0, "channel": 9999},
        {"seconds": 2.0, "channel": "left"},
    ],
}

#: OSC commands with always-invalid arguments: (command, type tags, values).
_OSC_BAD_ARGS: list[tuple[str, str, list[Any]]] = [
    ("set_k", "s", ["ten"]),
    ("set_k", "i", [-1]),
    ("set_k", "i", [0]),
    ("set_k", "i", [2**31 - 1]),
    ("set_k", "f", [2.5]),
    ("set_k", "f", [float("nan")]),
    ("set_k", "f", [float("inf")]),
    ("set_k", "b", [b"\x00\x01"]),
    ("set_k", "ii", [5, 6]),
    ("set_k", "T", [True]),
    ("set_k", "N", [None]),
    ("set_model", "i", [3]),
    ("set_model", "s", [UNKNOWN_MODEL]),
    ("set_model", "s", [""]),
    ("capture", "f", [-1.0]),
    ("capture", "f", [float("nan")]),
    ("capture", "f", [float("inf")]),
    ("capture", "f", [1e9]),
    ("capture", "s", ["two"]),
    ("capture", "fi", [2.0, -3]),
    ("capture", "fi", [2.0, 9999]),
    ("capture", "fis", [2.0, 0, "extra"]),
    ("status", "i", [1]),
    ("pause", "s", ["now"]),
    ("resume", "f", [1.0]),
    ("reload", "b", [b"x"]),
]


def _osc_message(address: str, tags: str, values: list[Any]) -> bytes:
    builder = OscMessageBuilder(address)
    for tag, value in zip(tags, values, strict=True):
        builder.add_arg(value, tag)
    return bytes(builder.build().dgram)


def _osc_string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def _bundle(timetag: int, elements: list[bytes]) -> bytes:
    body = b"".join(struct.pack(">i", len(e)) + e for e in elements)
    return _osc_string("#bundle") + struct.pack(">Q", timetag) + body


_Msg = TypeVar("_Msg")


def _draw(n: int, seed: int, categories: Mapping[str, Callable[[random.Random], _Msg]],
          weights: Mapping[str, float]) -> Iterator[tuple[str, _Msg]]:
    """Yield ``n`` ``(category, message)`` pairs, categories drawn by weight from one seed."""
    rng = random.Random(seed)
    names = list(categories)
    chances = [weights[k] for k in names]
    for _ in range(n):
        cat = rng.choices(names, chances)[0]
        yield cat, categories[cat](rng)


def _rand_text(rng: random.Random, n: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz_/-.#*?[]{}!,0123456789\u00e9\u2603 "
    return "".join(rng.choice(alphabet) for _ in range(n))


def _unknown_cmd(rng: random.Random) -> str:
    # "x" prefix: never equal to a real command.
    return "x" + _rand_text(rng, rng.randint(0, 24)).replace("/", "_")


# ----------------------------------------------------------------------------- OSC


def _osc_random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(0, 2048))


def _osc_huge(rng: random.Random) -> bytes:
    # A plausible start (so a parser gets past the address) followed by bulk.
    head = _osc_string(OSC_CONTROL_PREFIX + "set_k") + _osc_string(",s")
    return head + rng.randbytes(rng.randint(8192, UDP_MAX_PAYLOAD_BYTES - len(head)))


_TRUNCATABLE: list[tuple[str, str, list[Any]]] = [
    ("set_k", "i", [8]),
    ("set_model", "s", ["dsp-baseline"]),
]


def _osc_truncated(rng: random.Random) -> bytes:
    # Only commands whose arguments are required: python-osc parses a message cut
    # right after its type tags as one with no arguments, and a daemon may give
    # `capture` a default duration, which would make the cut message valid.
    cmd, tags, values = rng.choice(_TRUNCATABLE)
    full = _osc_message(OSC_CONTROL_PREFIX + cmd, tags, values)
    # Cut inside the arguments or the type tags, never at the end.
    return full[: rng.randint(1, len(full) - 1)]


def _osc_unknown_address(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        address = OSC_CONTROL_PREFIX + _unknown_cmd(rng)
    else:
        address = "/" + _rand_text(rng, rng.randint(0, 40))
    return _osc_message(address, "if", [rng.randint(-(2**31), 2**31 - 1), rng.random()])


def _osc_bad_args(rng: random.Random) -> bytes:
    cmd, tags, values = rng.choice(_OSC_BAD_ARGS)
    return _osc_message(OSC_CONTROL_PREFIX + cmd, tags, values)


def _osc_bad_typetag(rng: random.Random) -> bytes:
    # Type tags naming arguments that are not there, or tags that do not exist (python-osc
    # logs a warning for each unknown tag: a daemon must not let that flood its stderr).
    tags = "," + "".join(rng.choice("ifsbhdtTFNImcrX[]") for _ in range(rng.randint(1, 12)))
    cmd = rng.choice(["pause", "resume", "reload"])  # take no arguments: any is an error
    return _osc_string(OSC_CONTROL_PREFIX + cmd) + _osc_string(tags + "i") + rng.randbytes(
        rng.randint(0, 16)
    )


def _osc_deep_bundle(rng: random.Random) -> bytes:
    inner = _osc_message(OSC_CONTROL_PREFIX + _unknown_cmd(rng), "", [])
    for _ in range(rng.randint(50, DEEP_BUNDLE_MAX_LEVELS)):
        inner = _bundle(1, [inner])
    return inner


def _osc_future_bundle(rng: random.Random) -> bytes:
    msg = _osc_message(OSC_CONTROL_PREFIX + _unknown_cmd(rng), "", [])
    seconds = rng.randint(FAR_FUTURE_NTP_SECONDS, 0xFFFF_FFFF)
    return _bundle(seconds << 32, [msg])


def _osc_bundle_lies(rng: random.Random) -> bytes:
    # A bundle whose element size runs past the end of the datagram, or is negative.
    msg = _osc_message(OSC_CONTROL_PREFIX + "status", "", [])
    size = rng.choice([len(msg) + 100, -4, 2**31 - 1, 0])
    return _osc_string("#bundle") + struct.pack(">Q", 1) + struct.pack(">i", size) + msg


OSC_CATEGORIES: dict[str, Callable[[random.Random], bytes]] = {
    "random_bytes": _osc_random_bytes,
    "huge": _osc_huge,
    "truncated": _osc_truncated,
    "unknown_address": _osc_unknown_address,
    "bad_args": _osc_bad_args,
    "bad_typetag": _osc_bad_typetag,
    "deep_bundle": _osc_deep_bundle,
    "future_bundle": _osc_future_bundle,
    "bundle_lies": _osc_bundle_lies,
}
#: Relative frequency of each category (the expensive ones rarer).
OSC_WEIGHTS: dict[str, float] = {
    "random_bytes": 3.0,
    "huge": 0.2,
    "truncated": 2.0,
    "unknown_address": 2.0,
    "bad_args": 3.0,
    "bad_typetag": 2.0,
    "deep_bundle": 0.2,
    "future_bundle": 1.0,
    "bundle_lies": 1.0,
}


def osc_datagrams(n: int, *, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """Yield ``n`` malformed OSC datagrams as ``(category, datagram)``.

    Parameters
    ----------
    n : int
        How many.
    seed : int
        The same seed gives the same sequence.
    """
    for cat, dgram in _draw(n, seed, OSC_CATEGORIES, OSC_WEIGHTS):
        if len(dgram) > UDP_MAX_PAYLOAD_BYTES:  # pragma: no cover - generators stay below
            dgram = dgram[:UDP_MAX_PAYLOAD_BYTES]
        yield cat, dgram


# ----------------------------------------------------------------------------- ZeroMQ


def _zmq_bad_utf8(rng: random.Random) -> list[bytes]:
    return [b'{"cmd": "status\xff\xfe"}' if rng.random() < 0.5 else rng.randbytes(64) + b"\xff"]


def _zmq_bad_json(rng: random.Random) -> list[bytes]:
    good = json.dumps({"cmd": "set_k", "k": 5})
    choice = rng.randint(0, 3)
    if choice == 0:
        text = good[: rng.randint(0, len(good) - 1)]
    elif choice == 1:
        text = _rand_text(rng, rng.randint(1, 80))
    elif choice == 2:
        text = "{'cmd': 'status'}"
    else:
        text = '{"cmd": "status",}'
    return [text.encode("utf-8")]


def _zmq_not_object(rng: random.Random) -> list[bytes]:
    value = rng.choice(['["status"]', "42", '"status"', "null", "true", "1e999", "[]", "-0"])
    return [value.encode()]


def _zmq_bad_cmd(rng: random.Random) -> list[bytes]:
    req = rng.choice(
        [{}, {"cmd": None}, {"cmd": 7}, {"cmd": ["status"]}, {"cmd": {"cmd": "status"}},
         {"command": "status"}, {"cmd": ""}, {"cmd": "STATUS"}, {"cmd": "status "}]
    )
    return [json.dumps(req).encode()]


def _zmq_unknown_cmd(rng: random.Random) -> list[bytes]:
    return [json.dumps({"cmd": _unknown_cmd(rng), "k": rng.random()}).encode()]


def _zmq_bad_args(rng: random.Random) -> list[bytes]:
    cmd = rng.choice(list(_BAD_ARGS))
    args = rng.choice(_BAD_ARGS[cmd])
    return [json.dumps({"cmd": cmd, **args}).encode()]


def _zmq_nonfinite(rng: random.Random) -> list[bytes]:
    # Python's json module accepts these spellings; strict parsers do not.
    value = rng.choice(["NaN", "Infinity", "-Infinity", "1e999"])
    cmd, key = rng.choice([("set_k", "k"), ("capture", "seconds")])
    return [f'{{"cmd": "{cmd}", "{key}": {value}}}'.encode()]


def _zmq_long_int(rng: random.Random) -> list[bytes]:
    digits = "9" * rng.randint(5000, 20000)  # over sys.int_info.default_max_str_digits
    return [f'{{"cmd": "set_k", "k": {digits}}}'.encode()]


def _zmq_deep(rng: random.Random) -> list[bytes]:
    depth = rng.randint(*DEEP_JSON_LEVELS)
    return [('{"cmd": "set_k", "k": ' + "[" * depth + "]" * depth + "}").encode()]


def _zmq_huge(rng: random.Random) -> list[bytes]:
    return [json.dumps({"cmd": _unknown_cmd(rng), "pad": "x" * HUGE_ZMQ_BYTES}).encode()]


def _zmq_empty(rng: random.Random) -> list[bytes]:
    return [b"" if rng.random() < 0.5 else b"   \n"]


def _zmq_multipart(rng: random.Random) -> list[bytes]:
    # A REP socket that recv()s only the first part cannot send its reply (EFSM).
    return [json.dumps({"cmd": _unknown_cmd(rng)}).encode(), rng.randbytes(rng.randint(0, 32))]


ZMQ_CATEGORIES: dict[str, Callable[[random.Random], list[bytes]]] = {
    "bad_utf8": _zmq_bad_utf8,
    "bad_json": _zmq_bad_json,
    "not_object": _zmq_not_object,
    "bad_cmd": _zmq_bad_cmd,
    "unknown_cmd": _zmq_unknown_cmd,
    "bad_args": _zmq_bad_args,
    "nonfinite": _zmq_nonfinite,
    "long_int": _zmq_long_int,
    "deep_json": _zmq_deep,
    "huge": _zmq_huge,
    "empty": _zmq_empty,
    "multipart": _zmq_multipart,
}
ZMQ_WEIGHTS: dict[str, float] = {
    "bad_utf8": 1.0,
    "bad_json": 2.0,
    "not_object": 1.0,
    "bad_cmd": 1.0,
    "unknown_cmd": 2.0,
    "bad_args": 3.0,
    "nonfinite": 1.0,
    "long_int": 0.1,
    "deep_json": 0.1,
    "huge": 0.05,
    "empty": 0.5,
    "multipart": 0.5,
}


def zmq_requests(n: int, *, seed: int = 0) -> Iterator[tuple[str, list[bytes]]]:
    """Yield ``n`` malformed control requests as ``(category, frames)``.

    Parameters
    ----------
    n : int
        How many.
    seed : int
        The same seed gives the same sequence.
    """
    yield from _draw(n, seed, ZMQ_CATEGORIES, ZMQ_WEIGHTS)


def ntp_to_unix(ntp_seconds: int) -> float:
    """Unix time of an NTP seconds value (for reporting far-future timetags)."""
    return float(ntp_seconds - NTP_UNIX_OFFSET_S)
