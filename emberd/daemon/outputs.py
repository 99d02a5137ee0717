"""The one publisher/sink path: worker items -> messages -> one thread per sink.

Every output -- the built-in ZeroMQ, OSC and MIDI publishers and any third-party sink --
is an ``emberd.sinks`` entry point and runs the same way:

::

    worker thread: Outputs.put(item)
        HopResult / HitResult / StatusItem / EndOfStream -> messages (topic, header, array),
        built once (analysers add their fields; per-topic seq numbered here) -> one Batch
        │  Handoff per sink (bounded, drop-oldest, counted in messages; lossless at --pace fast)
        ▼
    SinkRunner thread per sink: constructs the sink (a ZeroMQ socket stays in its thread),
        stamps publish_time, calls sink.publish(topic, header, array) per message

A sink sees exactly what a ZeroMQ subscriber sees (same topics, headers and arrays). An
exception from a sink is counted (``outputs.<name>.errors`` in status) and logged once;
:data:`MAX_CONSECUTIVE_ERRORS` in a row disable the sink with one warning. A sink that
blocks only fills its own handoff: the worker and the other sinks never wait for it
(except at ``--pace fast``, where nothing may be lost and every sink sets the pace).

Shared attributes (written by -> read by):

* ``OutputCounters.queue_dropped`` messages dropped by a full handoff (worker -> status)
* ``OutputCounters.published``, ``errors``, ``transport_dropped``, ``disabled``,
  ``last_error`` (sink thread -> status)
* ``stats.publisher_drops[name]`` hops dropped by a full handoff (worker -> status)
* ``stats.latency_ring(name)`` capture -> last message of a hop handed to the sink
  (sink thread -> status)
* ``SinkRunner.sink``, ``error``, ``ready`` (sink thread, before ``ready`` -> app)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from emberd import plugins
from emberd.clients import wire
from emberd.daemon.analyzers import Analyzers
from emberd.daemon.handoff import Handoff
from emberd.daemon.hits import HitResult
from emberd.daemon.mixdown import MixdownResult, zmq_messages
from emberd.daemon.status import DaemonStats, swallowed
from emberd.daemon.worker import EndOfStream, HopResult, Item, StatusItem
from emberd.errors import EmberdError

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 50  # publish() failures in a row before a sink is disabled
GET_TIMEOUT_S = 0.2  # sink thread wake-up period to notice a stop request
READY_TIMEOUT_S = 10.0  # wait for a sink to be constructed (a socket to bind)

Message = tuple[str, dict[str, Any], "np.ndarray | None"]


@dataclass(frozen=True)
class Batch:
    """The messages of one worker item, in publishing order."""

    messages: tuple[Message, ...]
    capture_time: float
    hop: bool  # a hop's messages: the sink's latency ring gets one sample
    final: bool = False  # the last batch: the sink is closed after it


class OutputCounters:
    """One output's counters (see the module docstring for writers)."""

    def __init__(self) -> None:
        self.published = 0
        self.errors = 0
        self.queue_dropped = 0
        self.transport_dropped = 0
        self.disabled = False
        self.last_error = ""

    def describe(self, dist: str, queued: int) -> dict[str, Any]:
        """``outputs.<name>`` in the status object."""
        return {
            "dist": dist,
            "published": self.published,
            "dropped": self.queue_dropped + self.transport_dropped,
            "queue_dropped": self.queue_dropped,
            "transport_dropped": self.transport_dropped,
            "errors": self.errors,
            "disabled": self.disabled,
            "queued": queued,
            "last_error": self.last_error,
        }


class SinkRunner(threading.Thread):
    """One sink on its own thread behind a bounded drop-oldest handoff.

    Parameters
    ----------
    name : str
        Output name in status (the entry-point name, ``#2`` etc. when used twice).
    info : PluginInfo
        The ``emberd.sinks`` entry point.
    options : dict of str
        Passed to the factory.
    stats : DaemonStats
    lossless : bool
        Back-pressure instead of dropping (``--pace fast``).
    """

    def __init__(
        self,
        name: str,
        info: plugins.PluginInfo,
        options: dict[str, str],
        stats: DaemonStats,
        *,
        lossless: bool = False,
    ) -> None:
        super().__init__(name=f"emberd-sink-{name}", daemon=True)
        self.output = name
        self.info = info
        self.options = dict(options)
        self.stats = stats
        self.handoff: Handoff[Batch] = Handoff(lossless=lossless)
        self.counters = OutputCounters()
        self.ready = threading.Event()
        self.error: EmberdError | None = None
        self.sink: Any = None
        self._latency = stats.latency_ring(name)
        self._consecutive = 0

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> Any:
        """The constructed sink; EmberdError (one line naming the package) if it failed."""
        if not self.ready.wait(timeout):
            raise EmberdError(f"sink {self.info.label}: not ready after {timeout:g} s")
        if self.error is not None:
            raise self.error
        return self.sink

    def run(self) -> None:
        try:
            self.sink = plugins.construct(self.info, self.options)
            if not callable(getattr(self.sink, "publish", None)):
                raise EmberdError(f"plug-in {self.info.group} {self.info.label}: no publish()")
        except EmberdError as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop()
        finally:
            self._close()

    def _loop(self) -> None:
        c = self.counters
        while True:
            batch = self.handoff.get(GET_TIMEOUT_S)
            if batch is None:
                if self.handoff.closed:
                    return
                continue
            if c.disabled:
                c.queue_dropped += len(batch.messages)  # never delivered: visible as drops
            else:
                self._deliver(batch)
            if batch.final:
                return

    def _deliver(self, batch: Batch) -> None:
        c = self.counters
        publish = self.sink.publish
        # One stamp per item: a hop's messages leave within microseconds of each other
        # (a hit, the latency-critical message, is an item of its own).
        now = time.time()
        done = 0
        for topic, header, array in batch.messages:
            h = header.copy()  # the same header object goes to every sink's thread
            h["publish_time"] = now
            if "onset_time" in h:  # a hit: onset -> this sink's publish
                h["latency_ms"] = round((now - h["onset_time"]) * 1000.0, 3)
            done += 1
            try:
                publish(topic, h, array)
            except Exception as exc:  # third-party code: counted, logged once, maybe disabled
                c.errors += 1
                c.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._consecutive += 1
                if c.errors == 1:
                    log.warning("sink %s: publish failed (counted in status from now on)",
                                self.info.label, exc_info=True)  # fmt: skip
                if self._consecutive >= MAX_CONSECUTIVE_ERRORS:
                    c.disabled = True
                    c.queue_dropped += len(batch.messages) - done
                    log.warning("sink %s: disabled after %d failures in a row; the other "
                                "outputs carry on", self.info.label, self._consecutive)  # fmt: skip
                    return
                continue
            self._consecutive = 0
            c.published += 1
        dropped = getattr(self.sink, "dropped", None)
        if dropped is not None:
            c.transport_dropped = int(dropped)
        if batch.hop:
            self._latency.add((time.time() - batch.capture_time) * 1000.0)

    def _close(self) -> None:
        close = getattr(self.sink, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:  # counted like any other failure of the plug-in
            self.counters.errors += 1
            log.warning("sink %s: close() failed", self.info.label, exc_info=True)
        self.counters.transport_dropped = int(getattr(self.sink, "dropped", 0) or 0)

    def describe(self) -> dict[str, Any]:
        d = self.counters.describe(self.info.dist, len(self.handoff))
        counters = getattr(self.sink, "counters", None)
        if callable(counters):  # a sink's own figures (e.g. MIDI notes sent), read as is
            try:
                d["counters"] = {str(k): int(v) for k, v in dict(counters()).items()}
            except Exception:  # third-party code on the status path: counted, never fatal
                swallowed(f"sink {self.output} counters()")
        return d


class Outputs:
    """What the worker hands its items to: builds the messages once, feeds every sink.

    Called only by the worker thread (``put`` and ``close`` are its handoff API).
    """

    def __init__(self, runners: list[SinkRunner], analyzers: Analyzers, stats: DaemonStats) -> None:
        self.runners = runners
        self.analyzers = analyzers
        self.stats = stats
        self._seq: dict[str, int] = {}
        stats.outputs = self  # the status snapshot asks describe()
        for r in runners:
            stats.publisher_drops[r.output] = 0

    # --------------------------------------------------------- handoff API (worker)

    def put(self, item: Item) -> None:
        """Build the item's messages and hand them to every sink (never waits, except
        lossless handoffs at ``--pace fast``)."""
        try:
            batch = self.batch(item)
        except Exception:  # a bug in one item's messages must not stop the worker
            swallowed(f"building {type(item).__name__} messages")
            return
        if not batch.messages:
            return
        for r in self.runners:
            if r.counters.disabled and not batch.final:
                r.counters.queue_dropped += len(batch.messages)
                continue
            evicted = r.handoff.put(batch)
            if evicted is not None:
                r.counters.queue_dropped += len(evicted.messages)
                self.stats.publisher_drops[r.output] = r.handoff.dropped

    def close(self) -> None:
        for r in self.runners:
            r.handoff.close()

    # --------------------------------------------------------- messages

    def _message(self, kind: str, channel: int | None, capture_time: float, model: str,
                 array: np.ndarray | None = None, **fields: Any) -> Message:  # fmt: skip
        topic = wire.topic_for(kind, channel).decode("ascii")
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1
        header = wire.make_header(kind, seq=seq, capture_time=capture_time, model=model,
                                  channel=channel, array=array, publish_time=0.0,
                                  **fields)  # fmt: skip
        return (topic, header, array)

    def batch(self, item: Item) -> Batch:
        """The messages of one worker item (see the wire format, :mod:`emberd.clients.wire`)."""
        if isinstance(item, HopResult):
            return Batch(self._hop(item), item.capture_time, hop=True)
        if isinstance(item, StatusItem):
            msg = self._message(wire.KIND_STATUS, None, item.capture_time,
                                item.status.get("model", ""), status=item.status)  # fmt: skip
            return Batch((msg,), item.capture_time, hop=False)
        if isinstance(item, EndOfStream):  # last word: subscribers know nothing more comes
            now = time.time()
            final = {**self.stats.snapshot(), "final": True}
            msg = self._message(wire.KIND_STATUS, None, now, final.get("model", ""), status=final)
            return Batch((msg,), now, hop=False, final=True)
        if isinstance(item, HitResult):
            fields = wire.hit_fields(
                hit=item.hit, stage=item.stage, onset_time=item.onset_time, onset_s=item.onset_s,
                window_ms=item.window_ms, peak_db=item.peak_db, matches=item.matches,
                publish_time=time.time(),
            )  # fmt: skip
            fields.update(self.analyzers.hit_fields(fields))
            msg = self._message(wire.KIND_HIT, item.channel, item.capture_time, item.model,
                                **fields)  # fmt: skip
            return Batch((msg,), item.capture_time, hop=False)
        if isinstance(item, MixdownResult):  # class / loudness / masking, a few per second
            msgs = tuple(self._message(kind, ch, item.capture_time, item.model, array=a, **f)
                         for kind, ch, f, a in zmq_messages(item))  # fmt: skip
            return Batch(msgs, item.capture_time, hop=False)
        raise TypeError(f"not a worker item: {type(item).__name__}")

    def _hop(self, hop: HopResult) -> tuple[Message, ...]:
        t, model = hop.capture_time, hop.model
        common: dict[str, Any] = {"hop": hop.seq, "stream_s": round(hop.stream_s, 6)}
        # What the embedding describes: its window ends here (stream s), at or before the
        # hop's audio (the streaming encoder's newest finished step).
        window = dict(common)
        if hop.window_end_s is not None:
            window["window_end_s"] = round(hop.window_end_s, 6)
        extra = self.analyzers.hop_fields(hop)
        out: list[Message] = []
        for c, channel in enumerate(hop.channels):
            # Analyser fields first, then emberd's own: a plug-in adds, it never replaces.
            more = extra.get(wire.KIND_MATCH, [])
            fields = {**(more[c] if more else {}), **window, "matches": hop.matches[c]}
            out.append(self._message(wire.KIND_MATCH, channel, t, model, **fields))
            for kind in (wire.KIND_TAG, wire.KIND_LEVEL):
                rows = extra.get(kind)
                if rows:
                    own = common if kind == wire.KIND_LEVEL else window
                    out.append(self._message(kind, channel, t, model, **{**rows[c], **own}))
            more = extra.get(wire.KIND_EMB, [])
            out.append(self._message(wire.KIND_EMB, channel, t, model, array=hop.embeddings[c],
                                     **{**(more[c] if more else {}), **window}))  # fmt: skip
        sim = extra.get(wire.KIND_SIMILARITY)
        if sim:
            fields = dict(sim[0])
            array = fields.pop("array", None)
            out.append(self._message(wire.KIND_SIMILARITY, None, t, model, array=array,
                                     **{**fields, **window}))  # fmt: skip
        return tuple(out)

    # --------------------------------------------------------- status

    def describe(self) -> dict[str, Any]:
        """``outputs`` in the status object: per output, messages published and dropped."""
        return {r.output: r.describe() for r in self.runners}

    def describe_analyzers(self) -> dict[str, Any]:
        """``analyzers`` in the status object."""
        return self.analyzers.describe()


def start_sinks(
    specs: list[tuple[str, dict[str, str]]], stats: DaemonStats, *, lossless: bool
) -> list[SinkRunner]:
    """Start one :class:`SinkRunner` per ``(entry-point name, options)`` and wait until each
    sink is constructed.

    Raises
    ------
    EmberdError
        A sink that is not installed, fails to import or to construct (one line naming
        its package); the runners already started are stopped first.
    """
    runners: list[SinkRunner] = []
    try:
        for name, options in specs:
            info = plugins.require(plugins.GROUP_SINKS, name)
            output = name
            n = 2
            while any(r.output == output for r in runners):
                output, n = f"{name}#{n}", n + 1
            runner = SinkRunner(output, info, options, stats, lossless=lossless)
            runners.append(runner)
            runner.start()
            runner.wait_ready()
    except BaseException:
        for r in runners:
            r.handoff.close()
        raise
    return runners
