"""Bind a daemon thread's ZeroMQ socket and report the outcome to whoever waits on it.

The control server (REP) and the publisher (PUB) create and bind their socket
inside their own thread (a ZeroMQ socket must stay on one thread); the main
thread waits on ``bound`` and then reads ``endpoint`` (the real port after
``tcp://127.0.0.1:*``) or ``error``. Every such socket refuses legacy ZMTP 1.0
peers (see :func:`bind_socket`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

ZAP_DOMAIN = b"emberd"  # no ZAP handler runs: NULL-mechanism peers are let in as before


class BindingThread(Protocol):
    """What :func:`bind_socket` reads and writes on its owner."""

    context: Any
    endpoint: str
    bound: threading.Event
    error: BaseException | None


def bind_socket(owner: BindingThread, kind: int, options: Mapping[int, int] | None = None) -> Any:
    """Create a ``kind`` socket (linger 0, plus ``options``) and bind it to ``owner.endpoint``.

    Parameters
    ----------
    owner : BindingThread
        Its ``context`` makes the socket. On success ``owner.endpoint`` becomes
        the endpoint actually bound; on a bind error ``owner.error`` holds it.
        ``owner.bound`` is set either way.
    kind : int
        ``zmq.REP``, ``zmq.PUB``, ...
    options : mapping of int to int, optional
        Further socket options (``{zmq.SNDHWM: 1000}``).

    Returns
    -------
    zmq.Socket or None
        The bound socket, or ``None`` when binding failed (the socket is closed).
    """
    import zmq

    sock = owner.context.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        # A ZAP domain makes libzmq refuse ZMTP 1.0 peers (which it otherwise accepts
        # unauthenticated); every client of ours speaks ZMTP 3, and no HTTP request a
        # web page can make parses as ZMTP 3 (its greeting starts with byte 0xFF).
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        for opt, value in (options or {}).items():
            sock.setsockopt(opt, value)
        try:
            sock.bind(owner.endpoint)
        except zmq.ZMQError as exc:
            owner.error = exc
            sock.close(linger=0)
            return None
        owner.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock
    finally:
        owner.bound.set()
