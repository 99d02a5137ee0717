"""Drive a running daemon with malformed control input and account for every message.

:func:`fuzz_osc` sends datagrams from :func:`emberd.testing.fuzzmsg.osc_datagrams`
to ``--osc-in`` in small bursts and, after each burst, polls ``status`` until
``rejected_osc`` has caught up (kernel drops read from ``/proc/net/udp`` are
accounted separately), so "every rejection counted" is an exact equality and
the daemon's socket buffer never overflows. :func:`fuzz_zmq` sends requests from
:func:`emberd.testing.fuzzmsg.zmq_requests` on a REQ socket and checks each
reply is ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emberd.testing import fuzzmsg
from emberd.testing.harness import Daemon, udp_drops, wait_for

BURST_DATAGRAMS = 32  # datagrams sent before waiting for the counter to catch up
BURST_BYTES = 96 * 1024  # ... or this many bytes (below the default 208 KiB socket buffer)
CATCH_UP_TIMEOUT_S = 30.0  # a busy machine; a stuck OSC thread fails well before
REPLY_TIMEOUT_S = 10.0  # per control request


@dataclass
class FuzzResult:
    """What was sent and what came back."""

    sent: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    counted: int = 0  # the daemon's rejected counter growth
    kernel_drops: int = 0  # datagrams the kernel dropped before the daemon read them
    bad_replies: list[str] = field(default_factory=list)  # replies that were not errors
    seconds: float = 0.0


def _rejected(daemon: Daemon, key: str) -> int:
    return int(daemon.status()[key])


def _pace(t0: float, sent: int, rate: float) -> None:
    """Sleep so that ``sent`` messages take at least ``sent / rate`` seconds (0: no limit)."""
    if rate > 0:
        delay = t0 + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def fuzz_osc(
    daemon: Daemon,
    n: int,
    *,
    seed: int = 0,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> FuzzResult:
    """Send ``n`` malformed datagrams to the daemon's ``--osc-in`` and account for them.

    ``rate`` caps datagrams per second (0: as fast as the daemon absorbs them).
    """
    result = FuzzResult()
    base = _rejected(daemon, "rejected_osc")
    drops0 = udp_drops(daemon.osc_in_port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Replies come back to this socket; a small buffer the kernel may overflow is fine.
    target = ("127.0.0.1", daemon.osc_in_port)
    t0 = time.monotonic()
    burst_n = burst_bytes = 0
    try:
        for cat, dgram in fuzzmsg.osc_datagrams(n, seed=seed):
            _pace(t0, result.sent, rate)
            sock.sendto(dgram, target)
            result.sent += 1
            result.categories[cat] += 1
            burst_n += 1
            burst_bytes += len(dgram)
            if burst_n >= BURST_DATAGRAMS or burst_bytes >= BURST_BYTES or result.sent == n:
                expected = base + result.sent

                def caught_up(expected: int = expected) -> bool:
                    lost = udp_drops(daemon.osc_in_port) - drops0
                    return _rejected(daemon, "rejected_osc") + lost >= expected

                wait_for(caught_up, CATCH_UP_TIMEOUT_S, what="rejected_osc to catch up")
                burst_n = burst_bytes = 0
                if progress:
                    progress(result.sent)
    finally:
        sock.close()
    result.seconds = time.monotonic() - t0
    result.counted = _rejected(daemon, "rejected_osc") - base
    result.kernel_drops = udp_drops(daemon.osc_in_port) - drops0
    return result


def fuzz_zmq(
    daemon: Daemon,
    n: int,
    *,
    seed: int = 0,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 1000,
) -> FuzzResult:
    """Send ``n`` malformed control requests; every reply must be an error reply.

    ``rate`` caps requests per second (0: one after the other, as fast as replies come).
    """
    import zmq

    result = FuzzResult()
    base = _rejected(daemon, "rejected_control")
    refused0 = daemon.status_refused
    ctx: Any = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.control_endpoint)
    t0 = time.monotonic()
    try:
        for cat, frames in fuzzmsg.zmq_requests(n, seed=seed):
            _pace(t0, result.sent, rate)
            sock.send_multipart(frames)
            result.sent += 1
            result.categories[cat] += 1
            if not sock.poll(int(REPLY_TIMEOUT_S * 1000)):
                raise TimeoutError(
                    f"no control reply within {REPLY_TIMEOUT_S} s to a {cat!r} request "
                    f"(#{result.sent}):\n{daemon.log_tail()}"
                )
            raw = sock.recv()
            try:
                reply = json.loads(raw)
                ok = reply.get("ok") is False and isinstance(reply.get("error"), str)
            except (ValueError, AttributeError):
                ok = False
            if not ok and len(result.bad_replies) < 20:
                result.bad_replies.append(f"{cat}: {raw[:200]!r}")
            if progress and result.sent % progress_every == 0:
                progress(result.sent)
    finally:
        sock.close(0)
    result.seconds = time.monotonic() - t0
    # The status requests that read the counter, refused by the rate limit while it
    # recovers from the flood, are counted by the daemon too: they are ours, not the fuzz's.
    counted = _rejected(daemon, "rejected_control") - base
    result.counted = counted - (daemon.status_refused - refused0)
    return result
