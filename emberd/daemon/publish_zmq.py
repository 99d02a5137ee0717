"""ZeroMQ publisher thread: one PUB socket, multipart messages in the wire format.

The thread creates, binds, uses and closes its PUB socket itself (a ZeroMQ socket
must stay in one thread). Hop messages add ``hop`` (the hop number, shared by all
messages of one hop) and ``stream_s`` (where the hop's newest audio starts, in
seconds since the input began) to the wire header. Per hop and channel it sends
``match.<c>``, ``tag.<c>``, ``level.<c>`` and ``emb.<c>``, then ``similarity`` when
there are several channels; ``status`` once a second, and a last one with
``"final": true`` when the daemon stops; ``hit.<c>`` for every stage of every hit, as
soon as the worker hands it over. Frames come from
:func:`emberd.clients.wire.encode`.
The send high-water mark is explicit (:data:`SNDHWM_MESSAGES`); a slow subscriber
loses messages (visible as gaps in its per-topic ``seq``), it never slows the daemon.
A subscriber that joins late asks the control channel for ``status``.

Shared attributes (written by -> read by):

* ``endpoint`` the bound endpoint, with the real port (this thread, before ``bound`` is set
  -> app)
* ``stats.publisher_drops["zmq"]`` (this thread -> status)
* ``stats.latency_ring("zmq")`` (this thread -> status)
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from emberd.clients import wire
from emberd.daemon.handoff import Handoff
from emberd.daemon.hits import HitResult
from emberd.daemon.mixdown import MixdownResult, zmq_messages
from emberd.daemon.status import DaemonStats
from emberd.daemon.worker import EndOfStream, HopResult, Item, StatusItem
from emberd.daemon.zmqbind import bind_socket

log = logging.getLogger(__name__)

SNDHWM_MESSAGES = 1000  # queued messages per subscriber: ~2 s of 8-channel hops
GET_TIMEOUT_S = 0.2  # wake-up period to notice a stop request
FLUSH_LINGER_MS = 1000  # at the end of a file: let queued messages reach subscribers


class ZmqPublisher(threading.Thread):
    """Publishes hops and status on a ZeroMQ PUB socket (see module docstring)."""

    def __init__(
        self,
        endpoint: str,
        handoff: Handoff[Item],
        stats: DaemonStats,
        *,
        context: Any,
        send_embedding: bool = True,
    ) -> None:
        super().__init__(name="emberd-zmq-pub", daemon=True)
        self.endpoint = endpoint
        self.handoff = handoff
        self.stats = stats
        self.context = context
        self.send_embedding = send_embedding
        self.bound = threading.Event()
        self.error: BaseException | None = None
        self.send_drops = 0
        self.encode_errors = 0
        self._seq: dict[bytes, int] = {}
        self._latency = stats.latency_ring("zmq")
        self._sock: Any = None

    def run(self) -> None:
        import zmq

        sock = bind_socket(self, zmq.PUB, {zmq.SNDHWM: SNDHWM_MESSAGES})
        if sock is None:
            return
        self._sock = sock
        linger = 0  # on shutdown by signal/close: drop what is queued, exit at once
        try:
            while True:
                item = self.handoff.get(GET_TIMEOUT_S)
                self.stats.publisher_drops["zmq"] = self.handoff.dropped + self.send_drops
                if item is None:
                    if self.handoff.closed:
                        return
                    continue
                if isinstance(item, EndOfStream):
                    # Last word: subscribers know nothing more will come.
                    final = {**self.stats.snapshot(), "final": True}
                    self._send(wire.KIND_STATUS, None, time.time(), final.get("model", ""),
                               status=final)  # fmt: skip
                    linger = FLUSH_LINGER_MS
                    return
                try:
                    if isinstance(item, StatusItem):
                        self._send(wire.KIND_STATUS, None, item.capture_time,
                                   item.status.get("model", ""), status=item.status)  # fmt: skip
                    elif isinstance(item, HitResult):
                        self._hit(item)
                    elif isinstance(item, MixdownResult):
                        self._mixdown(item)
                    else:
                        self._hop(item)
                except Exception:  # a bug in one message must not silence the socket
                    self.encode_errors += 1
                    if self.encode_errors == 1:
                        log.exception("ZeroMQ publisher: cannot encode a message")
        finally:
            sock.close(linger=linger)

    def _send(
        self, kind: str, channel: int | None, capture_time: float, model: str, **kw: Any
    ) -> None:
        import zmq

        topic = wire.topic_for(kind, channel)
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1
        frames = wire.encode(kind, seq=seq, capture_time=capture_time, model=model,
                             channel=channel, **kw)  # fmt: skip
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:  # PUB drops at the HWM anyway; count it when the OS says so
            self.send_drops += 1

    def _hit(self, hit: HitResult) -> None:
        now = time.time()
        fields = wire.hit_fields(
            hit=hit.hit, stage=hit.stage, onset_time=hit.onset_time, onset_s=hit.onset_s,
            window_ms=hit.window_ms, peak_db=hit.peak_db, matches=hit.matches, publish_time=now,
        )  # fmt: skip
        self._send(wire.KIND_HIT, hit.channel, hit.capture_time, hit.model, publish_time=now,
                   **fields)  # fmt: skip

    def _mixdown(self, item: MixdownResult) -> None:
        for kind, channel, fields, array in zmq_messages(item):
            self._send(kind, channel, item.capture_time, item.model, array=array, **fields)

    def _hop(self, hop: HopResult) -> None:
        t, model = hop.capture_time, hop.model
        common = {"hop": hop.seq, "stream_s": round(hop.stream_s, 6)}
        for c, channel in enumerate(hop.channels):
            self._send(wire.KIND_MATCH, channel, t, model, matches=hop.matches[c], **common)
            self._send(wire.KIND_TAG, channel, t, model, tags=hop.tags[c], **common)
            rms_db, peak_db, onset = hop.levels[c]
            self._send(wire.KIND_LEVEL, channel, t, model, rms_db=round(rms_db, 2),
                       peak_db=round(peak_db, 2), onset=bool(onset), **common)  # fmt: skip
            if self.send_embedding:
                self._send(wire.KIND_EMB, channel, t, model, array=hop.embeddings[c], **common)
        if hop.similarity is not None:
            silent = [ch for i, ch in enumerate(hop.channels) if np.isnan(hop.similarity[i, i])]
            self._send(wire.KIND_SIMILARITY, None, t, model, channels=list(hop.channels),
                       array=hop.similarity, silent=silent, **common)  # fmt: skip
        self._latency.add((time.time() - hop.capture_time) * 1000.0)
