"""Subscribers that never read, and OSC targets that do not exist.

:class:`StalledSubscribers` connects ZeroMQ SUB sockets to the daemon's PUB
endpoint, subscribes to everything and never calls ``recv``: once the
subscriber's receive queue and the TCP buffers are full, the daemon's PUB
queue fills to its high-water mark and the daemon must drop, not grow or
block. :func:`dead_osc_targets` names OSC destinations nobody listens on: a
closed loopback port (the kernel answers with ICMP port-unreachable, which
turns into ``ECONNREFUSED`` on a connected UDP socket) and a TEST-NET-1
address (RFC 5737, never routed; ``ENETUNREACH`` on a machine without a
default route).
"""

from __future__ import annotations

import socket
from typing import Any

from emberd.testing.harness import free_port

TEST_NET_1 = "192.0.2.1"  # RFC 5737 documentation address: never routed
STALLED_RCVHWM = (1, 1000)  # one socket that stalls at once, one at the ZeroMQ default


def dead_osc_targets() -> list[str]:
    """``HOST:PORT`` strings of OSC targets where nobody listens."""
    return [f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", f"{TEST_NET_1}:9"]


class StalledSubscribers:
    """SUB sockets (subscribed to every topic) that are never read."""

    def __init__(self, endpoint: str, rcvhwms: tuple[int, ...] = STALLED_RCVHWM) -> None:
        import zmq

        self._ctx: Any = zmq.Context()
        self.socks = []
        for hwm in rcvhwms:
            s = self._ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, hwm)
            s.setsockopt(zmq.RCVBUF, 4096)  # small kernel buffer: back-pressure reaches the PUB
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(endpoint)
            self.socks.append(s)

    def close(self) -> None:
        for s in self.socks:
            s.close(0)
        self._ctx.term()

    def __enter__(self) -> StalledSubscribers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
