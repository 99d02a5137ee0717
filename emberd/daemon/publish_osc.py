"""OSC publisher: the built-in ``osc`` sink, one UDP socket, datagrams <= max size.

Registered as ``emberd.sinks: osc`` and run like every sink by
:mod:`emberd.daemon.outputs` (own thread, bounded drop-oldest handoff); the sink owns
its socket and is the only one that sends on it. It turns the wire messages into the
OSC address space (:mod:`emberd.clients.osc_format`, ``docs/osc.md``): ``match.<c>`` ->
``/emberd/match`` (one per rank), ``tag.<c>`` -> ``/emberd/tags``, ``level.<c>`` ->
``/emberd/level``, ``emb.<c>`` -> optionally ``/emberd/proj`` (N floats after a fixed
random projection), ``/emberd/emb`` (float32 blobs, split into parts) and ``/wek/inputs``
to Wekinator (first channel of a hop), ``similarity`` -> ``/emberd/similarity`` rows,
``status`` -> ``/emberd/status`` (+ ``/emberd/input`` for device input), ``hit.<c>`` ->
``/emberd/hit`` (the top answer of each stage; ``seq`` counts the channel's hit messages).

Options: ``targets`` (space-separated resolved ``host:port``), ``max_bytes``,
``proj_dims``, ``embedding`` (``0``: no blobs), ``wekinator`` (``host:port``),
``wekinator_dims``, ``start_time`` (Unix s, the OSC time base), ``changes_only``
(``1``: ``/emberd/match`` only when a channel's top-1 path changes, ``/emberd/tags`` only
when its top tag changes, ``/emberd/level`` only on onsets; ``--osc-changes-only``).

Shared attributes (written by -> read by): ``dropped`` datagrams the OS refused, e.g. a
full socket buffer (sink thread -> its runner).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from emberd.clients import osc_format as fmt
from emberd.daemon import netpolicy
from emberd.daemon.mixdown import osc_datagrams

log = logging.getLogger(__name__)

PROJECTION_SEED = 20221204  # fixed: the same embedding always gives the same projection


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


class OscSink:
    """Sends every message as OSC datagrams to every target (see module docstring).

    Parameters
    ----------
    targets : list of (host, port)
        Resolved destinations.
    start_time : float
        Unix seconds of the daemon's start: OSC times are integer ms since then.
    max_bytes : int
        Largest datagram.
    proj_dims : int
        Floats in ``/emberd/proj`` (0: not sent).
    wekinator : (host, port) or None
        Where ``/wek/inputs`` goes (the first channel's projection).
    send_embedding : bool
        Send ``/emberd/emb`` blobs.
    changes_only : bool
        Send matches, tags and levels only when they change (see module docstring).
    """

    def __init__(
        self,
        targets: list[tuple[str, int]],
        *,
        start_time: float,
        max_bytes: int = fmt.DEFAULT_MAX_DATAGRAM_BYTES,
        proj_dims: int = 0,
        wekinator: tuple[str, int] | None = None,
        wekinator_dims: int = 16,
        send_embedding: bool = True,
        changes_only: bool = False,
    ) -> None:
        self.targets = list(targets)
        self.start_time = start_time
        self.max_bytes = max_bytes
        self.proj_dims = min(proj_dims, fmt.max_floats(fmt.ADDR_PROJ, "iiii", max_bytes))
        self.wekinator = wekinator
        self.wekinator_dims = min(wekinator_dims, fmt.max_floats(fmt.ADDR_WEKINATOR, "", max_bytes))
        self.send_embedding = send_embedding
        self.changes_only = changes_only
        self._last_top: dict[int, str] = {}  # channel -> top-1 path sent (changes_only)
        self._last_tag: dict[int, str] = {}  # channel -> top tag sent (changes_only)
        self.dropped = 0  # datagrams the OS refused (full buffer, unreachable target)
        self.sent = 0
        self._wek_hop = -1  # hop whose first emb message went to Wekinator
        self._proj: dict[tuple[int, int], Projection] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # a full socket buffer drops, never stalls
        self._by_kind: dict[str, Callable[[dict[str, Any], Any], None]] = {
            "match": self._match, "tag": self._tags, "level": self._level, "emb": self._emb,
            "similarity": self._similarity, "status": self._status, "hit": self._hit,
            "class": self._mixdown, "loudness": self._mixdown, "masking": self._mixdown,
        }  # fmt: skip

    def publish(self, topic: str, header: dict[str, Any], array: np.ndarray | None) -> None:
        handler = self._by_kind.get(str(header.get("kind")))
        if handler is not None:  # kinds without an OSC address are not sent
            handler(header, array)

    def counters(self) -> dict[str, int]:
        """``outputs.osc.counters`` in status: datagrams sent (all targets)."""
        return {"datagrams": self.sent}

    def close(self) -> None:
        self._sock.close()

    def _send(self, dgram: bytes, targets: list[tuple[str, int]] | None = None) -> None:
        for target in self.targets if targets is None else targets:
            try:
                self._sock.sendto(dgram, target)
                self.sent += 1
            except OSError:  # EAGAIN or an unreachable target: counted, keep going
                self.dropped += 1

    def _ms(self, unix_time: float) -> int:
        return round((unix_time - self.start_time) * 1000.0)

    def _times(self, h: dict[str, Any]) -> tuple[int, int, int]:
        return (int(h.get("hop", 0)), self._ms(h["capture_time"]), self._ms(h["publish_time"]))

    def _projection(self, dim: int, n: int) -> Projection:
        key = (dim, n)
        if key not in self._proj:
            self._proj[key] = Projection(dim, n)
        return self._proj[key]

    def _changed(self, last: dict[int, str], channel: int, key: str) -> bool:
        """changes_only: True (and remembered) when ``key`` differs from the channel's last."""
        if not self.changes_only:
            return True
        if last.get(channel) == key:
            return False
        last[channel] = key
        return True

    def _match(self, h: dict[str, Any], _: Any) -> None:
        top = str(h["matches"][0].get("path", "")) if h["matches"] else ""
        if not self._changed(self._last_top, int(h["channel"]), top):
            return
        times, mb = self._times(h), self.max_bytes
        for rank, m in enumerate(h["matches"]):
            score = m.get("score")
            self._send(fmt.encode_match(
                times, channel=h["channel"], rank=rank,
                score=float(score) if isinstance(score, (int, float)) else 0.0,
                name=str(m.get("name", "")), path=str(m.get("path", "")), max_bytes=mb,
            ))  # fmt: skip

    def _tags(self, h: dict[str, Any], _: Any) -> None:
        top = str(h["tags"][0]["tag"]) if h["tags"] else ""
        if not self._changed(self._last_tag, int(h["channel"]), top):
            return
        pairs = [(t["tag"], float(t["confidence"])) for t in h["tags"]]
        self._send(fmt.encode_tags(self._times(h), channel=h["channel"], tags=pairs,
                                   max_bytes=self.max_bytes))  # fmt: skip

    def _level(self, h: dict[str, Any], _: Any) -> None:
        if self.changes_only and not h["onset"]:
            return
        self._send(fmt.encode_level(self._times(h), channel=h["channel"], rms_db=h["rms_db"],
                                    peak_db=h["peak_db"], onset=h["onset"]))  # fmt: skip

    def _emb(self, h: dict[str, Any], vec: Any) -> None:
        times, mb, channel = self._times(h), self.max_bytes, h["channel"]
        if self.proj_dims:
            vals = self._projection(vec.size, self.proj_dims)(vec)
            self._send(fmt.encode_floats(fmt.ADDR_PROJ, "iiii", [*times, channel], vals,
                                         max_bytes=mb))  # fmt: skip
        if self.send_embedding:
            for dgram in fmt.encode_embedding(times, channel=channel, vector=vec, max_bytes=mb):
                self._send(dgram)
        hop = int(h.get("hop", 0))
        if self.wekinator is not None and hop != self._wek_hop:
            self._wek_hop = hop
            vals = self._projection(vec.size, self.wekinator_dims)(vec)
            self._send(fmt.encode_floats(fmt.ADDR_WEKINATOR, "", [], vals, max_bytes=mb),
                       [self.wekinator])  # fmt: skip

    def _similarity(self, h: dict[str, Any], sim: Any) -> None:
        n = len(h["channels"])
        limit = fmt.max_floats(fmt.ADDR_SIMILARITY, "iiiii", self.max_bytes)
        times = self._times(h)
        for row in range(n):
            self._send(fmt.encode_floats(fmt.ADDR_SIMILARITY, "iiiii", [*times, row, n],
                                         sim[row, : min(n, limit)], max_bytes=self.max_bytes))

    def _mixdown(self, h: dict[str, Any], array: Any) -> None:
        times = (int(h["seq"]), self._ms(h["capture_time"]), self._ms(h["publish_time"]))
        for dgram in osc_datagrams(h, array, times, self.max_bytes):
            self._send(dgram)

    def _hit(self, h: dict[str, Any], _: Any) -> None:
        top = h["matches"][0] if h["matches"] else {}
        self._send(fmt.encode_hit(
            (int(h["seq"]), self._ms(h["capture_time"]), self._ms(h["publish_time"])),
            channel=h["channel"], hit=h["hit"], stage=h["stage"],
            onset_ms=self._ms(h["onset_time"]), latency_ms=h["latency_ms"], peak_db=h["peak_db"],
            answer=h["answer"], confidence=float(top.get("confidence", 0.0)),
            name=str(top.get("name", "")), path=str(top.get("path", "")), max_bytes=self.max_bytes,
        ))  # fmt: skip

    def _status(self, h: dict[str, Any], _: Any) -> None:
        status = dict(h["status"])
        start = self.start_time
        status["start_s"] = int(start)
        status["start_ms"] = int((start - int(start)) * 1000)
        seq = int(status.get("hops", 0))
        now_ms = self._ms(time.time())
        self._send(fmt.encode_status((seq, now_ms, now_ms), status))
        if "input_state" in status:  # device input: stalled / reconnecting / running
            self._send(fmt.encode_input((seq, now_ms, now_ms), status))


def factory(options: dict[str, str]) -> OscSink:
    """Entry point ``emberd.sinks: osc``."""
    targets = [
        netpolicy.resolve_target(*netpolicy.parse_host_port(t, "--osc"), "--osc")
        for t in options.get("targets", "").split()
    ]
    wek = options.get("wekinator")
    return OscSink(
        targets,
        start_time=float(options.get("start_time") or time.time()),
        max_bytes=int(options.get("max_bytes", fmt.DEFAULT_MAX_DATAGRAM_BYTES)),
        proj_dims=int(options.get("proj_dims", 0)),
        wekinator=netpolicy.parse_host_port(wek, "--wekinator") if wek else None,
        wekinator_dims=int(options.get("wekinator_dims", 16)),
        send_embedding=options.get("embedding", "1") != "0",
        changes_only=options.get("changes_only", "0") == "1",
    )
