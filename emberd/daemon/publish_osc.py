"""OSC publisher thread: one UDP socket, every hop to every target, datagrams <= max size.

The thread owns its socket and is the only one that sends on it. Per hop and
channel it sends ``/emberd/match`` (one per rank), ``/emberd/tags``,
``/emberd/level``, optionally ``/emberd/proj`` (N floats after a fixed random
projection) and ``/emberd/emb`` (the embedding as float32 blobs, split into parts),
then ``/emberd/similarity`` rows when there are several channels; ``/emberd/status``
once a second; ``/wek/inputs`` to Wekinator when enabled. The address space is
defined in :mod:`emberd.clients.osc_format` and documented in ``docs/osc.md``.

Shared attributes (written by -> read by):

* ``stats.publisher_drops["osc"]`` mirrors the handoff's drop counter (this thread -> status)
* ``stats.latency_ring("osc")`` capture -> last datagram of a hop sent (this thread -> status)
* ``send_errors`` datagrams the OS refused, ``encode_errors`` items that could not be
  encoded (this thread -> status)
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np

from emberd.clients import osc_format as fmt
from emberd.daemon.handoff import Handoff
from emberd.daemon.hits import HitResult
from emberd.daemon.mixdown import MixdownResult, osc_messages
from emberd.daemon.status import DaemonStats
from emberd.daemon.worker import EndOfStream, HopResult, Item, StatusItem

log = logging.getLogger(__name__)

PROJECTION_SEED = 20221204  # fixed: the same embedding always gives the same projection
GET_TIMEOUT_S = 0.2  # wake-up period to notice a stop request


class Projection:
    """Fixed seeded Gaussian random projection ``dim -> n`` of the unit-normalised embedding.

    ``tanh(unit(v) @ M)`` with ``M`` of N(0, 3) entries drawn from
    :data:`PROJECTION_SEED`: outputs lie in (-1, 1) with a spread that suits
    sliders and Wekinator; ``M`` depends only on ``(dim, n)``.
    """

    def __init__(self, dim: int, n: int) -> None:
        rng = np.random.default_rng(PROJECTION_SEED)
        self.matrix = (rng.standard_normal((dim, n)) * np.sqrt(3.0)).astype(np.float32)
        self.dim, self.n = dim, n

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        return np.tanh(v @ self.matrix)  # bounded for sliders and Wekinator


class OscPublisher(threading.Thread):
    """Publishes hops and status as OSC over UDP (see module docstring).

    Parameters
    ----------
    targets : list of (host, port)
        Resolved destinations.
    handoff : Handoff
        Items from the worker.
    stats : DaemonStats
    max_bytes : int
        Largest datagram.
    proj_dims : int
        Floats in ``/emberd/proj`` (0: not sent).
    wekinator : (host, port) or None
        Where ``/wek/inputs`` goes (channel 0's projection).
    send_embedding : bool
        Send ``/emberd/emb`` blobs.
    """

    def __init__(
        self,
        targets: list[tuple[str, int]],
        handoff: Handoff[Item],
        stats: DaemonStats,
        *,
        max_bytes: int = fmt.DEFAULT_MAX_DATAGRAM_BYTES,
        proj_dims: int = 0,
        wekinator: tuple[str, int] | None = None,
        wekinator_dims: int = 16,
        send_embedding: bool = True,
    ) -> None:
        super().__init__(name="emberd-osc-out", daemon=True)
        self.targets = list(targets)
        self.handoff = handoff
        self.stats = stats
        self.max_bytes = max_bytes
        self.proj_dims = min(proj_dims, fmt.max_floats(fmt.ADDR_PROJ, "iiii", max_bytes))
        self.wekinator = wekinator
        self.wekinator_dims = min(wekinator_dims, fmt.max_floats(fmt.ADDR_WEKINATOR, "", max_bytes))
        self.send_embedding = send_embedding
        self.send_errors = 0
        self.encode_errors = 0
        self.sent = 0
        self._proj: dict[tuple[int, int], Projection] = {}
        self._hit_seq: dict[int, int] = {}  # hit messages sent per channel
        self._latency = stats.latency_ring("osc")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # a full socket buffer drops, never stalls

    def run(self) -> None:
        try:
            while True:
                item = self.handoff.get(GET_TIMEOUT_S)
                self.stats.publisher_drops["osc"] = self.handoff.dropped
                if item is None:
                    if self.handoff.closed:
                        return
                    continue
                if isinstance(item, EndOfStream):
                    return
                try:
                    if isinstance(item, StatusItem):
                        self._status(item)
                    elif isinstance(item, HitResult):
                        self._hit(item)
                    elif isinstance(item, MixdownResult):
                        self._mixdown(item)
                    else:
                        self._hop(item)
                except Exception:  # a bug in one message must not silence every target
                    self.encode_errors += 1
                    if self.encode_errors == 1:
                        log.exception("OSC publisher: cannot encode a message")
        finally:
            self._sock.close()

    def _send(self, dgram: bytes, targets: list[tuple[str, int]] | None = None) -> None:
        for target in self.targets if targets is None else targets:
            try:
                self._sock.sendto(dgram, target)
                self.sent += 1
            except OSError:  # EAGAIN or an unreachable target: count, keep going
                self.send_errors += 1

    def _times(self, seq: int, capture_time: float) -> tuple[int, int, int]:
        ms = self.stats.ms_since_start
        return (seq, ms(capture_time), ms(time.time()))

    def _projection(self, dim: int, n: int) -> Projection:
        key = (dim, n)
        if key not in self._proj:
            self._proj[key] = Projection(dim, n)
        return self._proj[key]

    def _hop(self, hop: HopResult) -> None:
        mb = self.max_bytes
        for c, channel in enumerate(hop.channels):
            times = self._times(hop.seq, hop.capture_time)
            for rank, m in enumerate(hop.matches[c]):
                self._send(
                    fmt.encode_match(
                        times, channel=channel, rank=rank, score=float(m.get("score", 0.0)),
                        name=str(m.get("name", "")), path=str(m.get("path", "")), max_bytes=mb,
                    )
                )  # fmt: skip
            pairs = [(t["tag"], float(t["confidence"])) for t in hop.tags[c]]
            self._send(fmt.encode_tags(times, channel=channel, tags=pairs, max_bytes=mb))
            rms_db, peak_db, onset = hop.levels[c]
            self._send(fmt.encode_level(times, channel=channel, rms_db=rms_db, peak_db=peak_db,
                                        onset=onset))  # fmt: skip
            vec = hop.embeddings[c]
            if self.proj_dims:
                vals = self._projection(vec.size, self.proj_dims)(vec)
                self._send(fmt.encode_floats(fmt.ADDR_PROJ, "iiii", [*times, channel], vals,
                                             max_bytes=mb))  # fmt: skip
            if self.send_embedding:
                for dgram in fmt.encode_embedding(times, channel=channel, vector=vec, max_bytes=mb):
                    self._send(dgram)
            if self.wekinator is not None and c == 0:
                vals = self._projection(vec.size, self.wekinator_dims)(vec)
                self._send(fmt.encode_floats(fmt.ADDR_WEKINATOR, "", [], vals, max_bytes=mb),
                           [self.wekinator])  # fmt: skip
        if hop.similarity is not None:
            n = len(hop.channels)
            limit = fmt.max_floats(fmt.ADDR_SIMILARITY, "iiiii", mb)
            times = self._times(hop.seq, hop.capture_time)
            for row in range(n):
                vals = hop.similarity[row, : min(n, limit)]
                self._send(fmt.encode_floats(fmt.ADDR_SIMILARITY, "iiiii", [*times, row, n], vals,
                                             max_bytes=mb))  # fmt: skip
        self._latency.add((time.time() - hop.capture_time) * 1000.0)

    def _mixdown(self, item: MixdownResult) -> None:
        for dgram in osc_messages(item, self._times(item.seq, item.capture_time), self.max_bytes):
            self._send(dgram)

    def _hit(self, hit: HitResult) -> None:
        seq = self._hit_seq.get(hit.channel, 0)
        self._hit_seq[hit.channel] = seq + 1
        now = time.time()
        top = hit.matches[0] if hit.matches else {}
        ms = self.stats.ms_since_start
        self._send(fmt.encode_hit(
            (seq, ms(hit.capture_time), ms(now)), channel=hit.channel, hit=hit.hit,
            stage=hit.stage, onset_ms=ms(hit.onset_time),
            latency_ms=(now - hit.onset_time) * 1000.0, peak_db=hit.peak_db,
            answer=str(top.get("kind", "none")), confidence=float(top.get("confidence", 0.0)),
            name=str(top.get("name", "")), path=str(top.get("path", "")), max_bytes=self.max_bytes,
        ))  # fmt: skip

    def _status(self, item: StatusItem) -> None:
        status = dict(item.status)
        start = self.stats.start_time
        status["start_s"] = int(start)
        status["start_ms"] = int((start - int(start)) * 1000)
        seq = int(status.get("hops", 0))
        now_ms = self.stats.ms_since_start(time.time())
        self._send(fmt.encode_status((seq, now_ms, now_ms), status))
        if "input_state" in status:  # device input: stalled / reconnecting / running
            self._send(fmt.encode_input((seq, now_ms, now_ms), status))
