"""ZeroMQ publisher: the built-in ``zmq`` sink, one PUB socket, multipart wire messages.

Registered as ``emberd.sinks: zmq`` and run like every sink by
:mod:`emberd.daemon.outputs` (own thread, bounded drop-oldest handoff). The sink is
constructed on its thread and creates, binds, uses and closes its PUB socket there (a
ZeroMQ socket must stay in one thread), in its own context. Messages arrive already
built -- ``match.<c>``, ``tag.<c>``, ``level.<c>``, ``emb.<c>``, ``similarity``, ``status``
(a last one with ``"final": true`` when the daemon stops), ``hit.<c>`` -- and leave as
``[topic, JSON header, raw array?]`` (:func:`emberd.clients.wire.pack`). Hop messages
carry ``hop`` (the hop number) and ``stream_s`` (where the hop's newest audio starts).
The send high-water mark is explicit (:data:`SNDHWM_MESSAGES`); a slow subscriber loses
messages, it never slows the daemon. PUB drops at a subscriber's HWM silently and libzmq
counts nothing (``XPUB_NODROP`` would make one stalled subscriber cost every other one its
messages), so those losses show where they happen: as gaps in the subscriber's per-topic
``seq`` (``emberd watch`` reports them). ``dropped`` counts the sends the socket refused.
A subscriber that joins late asks the control channel for
``status``.

Options: ``endpoint`` (default ``tcp://127.0.0.1:5556``; loopback unless ``listen_any=1``),
``embedding`` (``0`` leaves out ``emb.<c>``).

Shared attributes (written by -> read by):

* ``endpoint`` the bound endpoint with the real port (sink thread, before the runner's
  ``ready`` -> app)
* ``dropped`` messages the socket refused (sink thread -> its runner)
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from emberd.clients import wire
from emberd.daemon.zmqbind import bind_socket
from emberd.errors import EmberdError

log = logging.getLogger(__name__)

SNDHWM_MESSAGES = 1000  # queued messages per subscriber: ~2 s of 8-channel hops
FLUSH_LINGER_MS = 1000  # at the end of a file: let queued messages reach subscribers


class ZmqSink:
    """Publishes every message on a ZeroMQ PUB socket (see module docstring)."""

    def __init__(
        self, endpoint: str = wire.DEFAULT_PUB_ENDPOINT, *, embedding: bool = True
    ) -> None:
        import zmq

        self.endpoint = endpoint
        self.embedding = embedding
        self.context: Any = zmq.Context()
        self.bound = threading.Event()
        self.error: BaseException | None = None
        self.dropped = 0
        self._final = False
        self._sock = bind_socket(self, zmq.PUB, {zmq.SNDHWM: SNDHWM_MESSAGES})
        if self._sock is None:
            self.context.term()
            raise EmberdError(f"--zmq {endpoint}: cannot bind ({self.error})")
        self._noblock = zmq.NOBLOCK
        self._again = zmq.Again

    def publish(self, topic: str, header: dict[str, Any], array: np.ndarray | None) -> None:
        if array is not None and not self.embedding and header.get("kind") == wire.KIND_EMB:
            return
        if header.get("final"):
            self._final = True
        elif header.get("kind") == wire.KIND_STATUS and header.get("status", {}).get("final"):
            self._final = True
        try:
            self._sock.send_multipart(wire.pack(topic, header, array), flags=self._noblock)
        except self._again:  # PUB drops at the HWM anyway; count it when the socket says so
            self.dropped += 1

    def close(self) -> None:
        # After the final status: let queued messages reach subscribers; on a stop
        # request: drop what is queued and exit at once.
        self._sock.close(linger=FLUSH_LINGER_MS if self._final else 0)
        self.context.term()


def factory(options: dict[str, str]) -> ZmqSink:
    """Entry point ``emberd.sinks: zmq``."""
    from emberd.daemon import netpolicy

    endpoint = netpolicy.check_zmq_endpoint(
        options.get("endpoint", wire.DEFAULT_PUB_ENDPOINT), "--zmq",
        listen_any=options.get("listen_any", "0") == "1",
    )  # fmt: skip
    return ZmqSink(endpoint, embedding=options.get("embedding", "1") != "0")
