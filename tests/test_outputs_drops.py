"""Datagrams the OS refuses are counted per output, and the other targets still get theirs.

A full socket buffer (EAGAIN/ENOBUFS from ``sendto``) cannot be produced on loopback: the
kernel never queues a loopback UDP datagram on the sender (measured: 200 000 non-blocking
sends with a 4.6 KiB send buffer to a socket that never reads, 0 errors; the losses happen
at the receiver, in its socket's drop counter). Sending to a broadcast address without
``SO_BROADCAST`` is refused by the kernel (EACCES) on every send: the same ``sendto`` error
path, through the real sink thread and status counters.
"""

from __future__ import annotations

import socket

from emberd.daemon.analyzers import Analyzers
from emberd.daemon.hits import HitResult
from emberd.daemon.outputs import Outputs, start_sinks
from emberd.daemon.status import DaemonStats
from emberd.testing.harness import wait_for

HITS = 20
REFUSED = "255.255.255.255:9"  # broadcast without SO_BROADCAST: EACCES on every sendto


def _hit(hit: int) -> HitResult:
    return HitResult(channel=0, hit=hit, stage="final", onset_time=0.0, onset_s=0.0,
                     capture_time=0.0, window_ms=6.0, peak_db=-6.0, model="m",
                     matches=[])  # fmt: skip


def test_refused_datagrams_are_counted_per_output() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5.0)
    stats = DaemonStats(0.0058)
    targets = f"127.0.0.1:{rx.getsockname()[1]} {REFUSED}"
    runners = start_sinks([("osc", {"targets": targets})], stats, lossless=True)
    outputs = Outputs(runners, Analyzers([]), stats)
    try:
        for i in range(HITS):
            outputs.put(_hit(i))
        got = [rx.recv(65536) for _ in range(HITS)]  # the reachable target gets every hit
        assert all(d.startswith(b"/emberd/hit\x00") for d in got)
        d = wait_for(lambda: (lambda o: o if o["transport_dropped"] >= HITS else None)(
            runners[0].describe()), 10.0, what="the refused sends to be counted")  # fmt: skip
        assert d["transport_dropped"] == HITS and d["dropped"] == HITS, d
        assert d["queue_dropped"] == 0 and d["errors"] == 0 and d["counters"]["datagrams"] == HITS
    finally:
        outputs.close()
        for r in runners:
            r.join(5)
        rx.close()
