"""OSC client: receive emberd's OSC datagrams and decode them into typed messages.

The OSC address space (:mod:`emberd.clients.osc_format`, ``docs/osc.md``) sends
one datagram per match and splits embeddings and the similarity matrix into
parts; :class:`OscDecoder` reassembles them into the same dataclasses the
ZeroMQ subscriber yields.  OSC times are milliseconds since the daemon started;
once a ``/emberd/status`` has arrived they are turned into Unix seconds with
its ``start_s``/``start_ms`` (before that they stay seconds since daemon start).
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from emberd.clients import osc_format as fmt
from emberd.clients.closing import Closing
from emberd.clients.messages import (
    ConnectionEvent,
    DaemonMessage,
    EmbMessage,
    HitMessage,
    Item,
    LevelMessage,
    Match,
    MatchMessage,
    SimilarityMessage,
    StatusMessage,
    Tag,
    TagMessage,
)
from emberd.errors import EmberdError

MATCH_GROUP_TIMEOUT_S = 0.05  # a hop's matches arrive together; emit after this quiet gap
MAX_DATAGRAM_BYTES = 65536  # UDP maximum; emberd sends <= 1200

_M = TypeVar("_M", bound=DaemonMessage)


@dataclass
class _MatchGroup:
    seq: int
    times: tuple[int, int, int]
    matches: list[Match] = field(default_factory=list)
    started: float = 0.0


class OscDecoder:
    """Stateful decoder: datagrams in, typed messages out (reassembling split messages)."""

    def __init__(self) -> None:
        self.start_unix: float | None = None  # daemon start, from /emberd/status
        self.model = ""
        self.malformed = 0
        self.ignored = 0
        self._matches: dict[int, _MatchGroup] = {}
        self._emb: dict[tuple[int, int], dict[int, bytes]] = {}
        self._sim: dict[int, dict[int, tuple[float, ...]]] = {}

    def _t(self, ms: int) -> float:
        return (self.start_unix or 0.0) + ms / 1000.0

    def _make(self, cls: type[_M], f: dict[str, Any], **kw: Any) -> _M:
        return cls(seq=int(f["seq"]), capture_time=self._t(f["capture_ms"]),
                   publish_time=self._t(f["publish_ms"]), model=self.model, **kw)

    def feed(self, dgram: bytes, *, now: float | None = None) -> list[Item]:
        """Decode one datagram; return the messages it completes (often none or one)."""
        now = time.monotonic() if now is None else now
        try:
            pkt = fmt.decode(dgram)
        except fmt.OscFormatError:
            self.malformed += 1
            return []
        out: list[Item] = []
        f, addr = pkt.fields, pkt.address
        if addr == fmt.ADDR_MATCH:
            ch = int(f["channel"])
            group = self._matches.get(ch)
            if group is not None and group.seq != f["seq"]:
                out.append(self._emit_matches(ch))
                group = None
            if group is None:
                group = self._matches[ch] = _MatchGroup(
                    int(f["seq"]), (f["seq"], f["capture_ms"], f["publish_ms"]), started=now)
            group.matches.append(Match(rank=int(f["rank"]), name=f["name"], path=f["path"],
                                       score=float(f["score"])))
        elif addr == fmt.ADDR_TAGS:
            tail = pkt.tail
            tags = tuple(Tag(str(tail[i]), float(tail[i + 1])) for i in range(0, len(tail), 2))
            out.append(self._make(TagMessage, f, channel=int(f["channel"]), tags=tags))
        elif addr == fmt.ADDR_LEVEL:
            out.append(self._make(LevelMessage, f, channel=int(f["channel"]),
                                  rms_db=float(f["rms_db"]), peak_db=float(f["peak_db"]),
                                  onset=bool(f["onset"])))
        elif addr == fmt.ADDR_EMB:
            key = (int(f["channel"]), int(f["seq"]))
            parts = self._emb.setdefault(key, {})
            parts[int(f["part"])] = bytes(f["data"])
            if len(parts) == int(f["parts"]):
                del self._emb[key]
                vec = np.frombuffer(b"".join(parts[i] for i in sorted(parts)), dtype="<f4")
                out.append(self._make(EmbMessage, f, channel=key[0], embedding=vec))
            self._drop_stale(self._emb, key)
        elif addr == fmt.ADDR_SIMILARITY:
            rows = self._sim.setdefault(int(f["seq"]), {})
            rows[int(f["row"])] = tuple(float(v) for v in pkt.tail)
            n = int(f["channels"])
            if len(rows) == n:
                del self._sim[int(f["seq"])]
                matrix = np.array([rows[i] for i in range(n)], dtype=np.float32).reshape(n, -1)
                out.append(self._make(SimilarityMessage, f, channels=tuple(range(n)),
                                      matrix=matrix))
            self._drop_stale(self._sim, int(f["seq"]))
        elif addr == fmt.ADDR_HIT:
            top = (
                Match(rank=0, name=f["name"], path=f["path"], score=math.nan, kind=f["answer"],
                      confidence=float(f["confidence"]))
                if f["answer"] != "none" else None
            )  # fmt: skip
            out.append(self._make(HitMessage, f, channel=int(f["channel"]), hit=int(f["hit"]),
                                  stage=str(f["stage"]), onset_time=self._t(f["onset_ms"]),
                                  latency_ms=float(f["latency_ms"]), peak_db=float(f["peak_db"]),
                                  answer=str(f["answer"]),
                                  matches=() if top is None else (top,)))  # fmt: skip
        elif addr == fmt.ADDR_STATUS:
            start = float(f["start_s"]) + float(f["start_ms"]) / 1000.0
            if self.start_unix is not None and abs(start - self.start_unix) > 1e-3:
                out.append(ConnectionEvent("restarted", "daemon start time changed"))
                self._matches.clear()
                self._emb.clear()
                self._sim.clear()
            self.start_unix = start
            self.model = str(f["model"])
            status = {k: v for k, v in f.items() if k not in fmt.TIME_FIELDS}
            out.append(self._make(StatusMessage, f, status=status))
        else:
            self.ignored += 1
        return out

    @staticmethod
    def _drop_stale(pending: dict[Any, Any], newest: object) -> None:
        # Lost UDP parts must not pile up: keep at most a few incomplete groups.
        while len(pending) > 8:
            oldest = next(iter(pending))
            if oldest == newest:
                break
            del pending[oldest]

    def _emit_matches(self, channel: int) -> MatchMessage:
        g = self._matches.pop(channel)
        seq, cap, pub = g.times
        ordered = tuple(sorted(g.matches, key=lambda m: m.rank))
        return MatchMessage(seq=seq, capture_time=self._t(cap), publish_time=self._t(pub),
                            model=self.model, channel=channel, matches=ordered)

    def flush(self, *, now: float | None = None, older_than_s: float = 0.0) -> list[Item]:
        """Emit match groups that have been quiet for ``older_than_s`` seconds."""
        now = time.monotonic() if now is None else now
        done = [ch for ch, g in self._matches.items() if now - g.started >= older_than_s]
        return [self._emit_matches(ch) for ch in done]


class OscReceiver(Closing):
    """Listen for emberd's OSC on a UDP port and yield typed messages.

    Parameters
    ----------
    port : int
        UDP port to bind (0 picks a free one; see :attr:`port`). Start the
        daemon with ``--osc 127.0.0.1:PORT``.
    host : str
        Address to bind; 127.0.0.1 unless you mean to receive from other machines.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise EmberdError(f"osc: cannot listen on {host}:{port}: {exc}") from exc
        self.port = int(self._sock.getsockname()[1])
        self.decoder = OscDecoder()
        self._ready: list[Item] = []

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def recv(self, timeout_s: float | None = None) -> Item | None:
        """Next typed message, or ``None`` after ``timeout_s`` seconds with none complete."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._ready:
            now = time.monotonic()
            self._ready.extend(self.decoder.flush(now=now, older_than_s=MATCH_GROUP_TIMEOUT_S))
            if self._ready:
                break
            if deadline is not None and now >= deadline:
                return None
            wait = MATCH_GROUP_TIMEOUT_S
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            self._sock.settimeout(max(wait, 1e-3))
            try:
                dgram = self._sock.recv(MAX_DATAGRAM_BYTES)
            except TimeoutError:
                continue
            self._ready.extend(self.decoder.feed(dgram))
        return self._ready.pop(0)

    def messages(self, timeout_s: float | None = None) -> list[DaemonMessage]:
        """Drain everything complete within ``timeout_s`` (typed messages only)."""
        out: list[DaemonMessage] = []
        while True:
            item = self.recv(timeout_s)
            if item is None:
                return out
            if not isinstance(item, ConnectionEvent):
                out.append(item)
