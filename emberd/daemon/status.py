"""The daemon's status object: timing, counters and what is running.

:class:`DaemonStats` is written by the worker (hop latency, inference time, hop
counters), the publishers (per-transport drops), the control servers (rejected
requests) and read by whoever builds a status snapshot (worker, control thread).
Percentiles come from preallocated rings of the latest samples, so the worker never
allocates to record a figure.

Status object fields (the ``status`` ZeroMQ message, the control ``status`` reply and,
in part, ``/emberd/status``):

``model``, ``provider`` (active ONNX Runtime execution provider), ``encoder``
(``windowed`` or ``streaming``), ``channels``, ``sr``, ``hop_ms``, ``k``, ``paused``,
``input``, ``library``, ``start_time`` (Unix s), ``uptime_s``, ``hops``, ``matched_hops``
(hops with a match on any channel),
``latency_p50_ms`` / ``latency_p99_ms`` (capture of the first sample of a hop ->
its last datagram sent; the slowest transport), ``latency_ms_by_transport``,
``inference_ms`` / ``inference_p99_ms`` (encoder call per hop, all channels; live with
the streaming encoder, each step on the encoder's own thread),
``hop_work_ms`` / ``hop_work_p99_ms`` (the worker's whole hop: encoder call or hand-off +
search + votes), ``callback_interval_ms``,
``callback_jitter_ms`` (p99 of |block interval - nominal| over the latest 8192 blocks),
``callback_jitter_max_ms`` (same window), ``callback_jitter_max_run_ms`` (whole run),
``overflows`` (frames the callback could not store), ``dropped_hops`` (hops skipped by
a late worker plus hops dropped by full publisher queues), ``rejected`` (malformed
control requests and OSC datagrams), ``rejected_control``, ``rejected_osc``,
``rate_limited`` / ``rate_limited_control`` / ``rate_limited_osc`` (refused unparsed by
:mod:`emberd.daemon.ratelimit`, also counted in ``rejected``),
``reload_ms`` (the latest ``reload``'s time on the analysis thread; hops wait meanwhile),
``nonfinite_samples``, ``osc_targets``, ``zmq_pub``, ``control``, ``osc_in``,
``publisher_drops`` (hops dropped by each output's full handoff), ``outputs`` (per output:
messages ``published``, ``dropped`` = ``queue_dropped`` + ``transport_dropped``, ``errors``,
``disabled``, ``queued``; see :mod:`emberd.daemon.outputs`), ``analyzers`` (per analyser:
``calls``, ``errors``, ``disabled``), with hits on: ``hits`` (hits started),
``hit_index_files``, ``hit_index_builds`` (hit indexes built: one at start and one per
``reload`` that found the library's files or snippets changed; an unchanged library
keeps its index), ``hit_stage_ms`` (compute per ladder answer), ``hit_lost_frames``
(input frames the hit thread's tap lost: it fell a whole ring behind),
``hit_flush_stalls`` (end-of-input flushes that gave up without progress),
``subscriber_lost`` (messages ZeroMQ subscribers reported missing: the PUB socket drops
silently at a reader's high-water mark, so the readers count the gaps in ``seq`` and
report them with the control command ``lost``; also ``outputs.zmq.subscriber_lost``) and
``subscriber_lost_by`` (per reporting subscriber, the latest MAX_LOSS_REPORTERS),
``swallowed_errors`` (per place, exceptions caught and not re-raised since the process
started; see :func:`swallowed`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_LOSS_REPORTERS = 64  # subscribers whose loss reports status keeps (oldest forgotten)
STATS_WINDOW_HOPS = 2048  # latest hops in the percentile figures (47 s at 23 ms)
JITTER_WINDOW_BLOCKS = 8192  # latest block intervals in the jitter figure


_SWALLOWED: dict[str, int] = {}  # place -> exceptions caught there and not re-raised
_SWALLOWED_LOCK = threading.Lock()  # one read-modify-write at a time


def swallowed(where: str) -> None:
    """Count an exception that is caught and not re-raised (call it in the ``except``
    block); the first one per place is logged with its traceback, every one reaches
    status as ``swallowed_errors`` (counts since the process started)."""
    with _SWALLOWED_LOCK:  # control, output, hit and builder threads all count here
        n = _SWALLOWED.get(where, 0) + 1
        _SWALLOWED[where] = n
    if n == 1:
        log.warning("%s failed (counted in status swallowed_errors from now on)", where,
                    exc_info=True)  # fmt: skip


def swallowed_counts() -> dict[str, int]:
    """A copy of the :func:`swallowed` counts: place -> exceptions since the process started."""
    with _SWALLOWED_LOCK:
        return dict(_SWALLOWED)


class _Ring:
    """Fixed-size ring of float64 samples for percentiles (single writer)."""

    def __init__(self, size: int) -> None:
        self.buf = np.zeros(size, dtype=np.float64)
        self.n = 0

    def add(self, value: float) -> None:
        self.buf[self.n % self.buf.size] = value
        self.n += 1

    def add_many(self, values: np.ndarray) -> None:
        for v in values[-self.buf.size :]:
            self.add(float(v))

    def values(self) -> np.ndarray:
        return self.buf[: min(self.n, self.buf.size)].copy()

    def percentile(self, q: float) -> float:
        vals = self.values()
        return float(np.percentile(vals, q)) if vals.size else 0.0


class DaemonStats:
    """Counters and timing rings shared by the daemon's threads.

    Shared attributes (written by -> read by):

    * ``latency_rings[t]`` (publisher of transport t -> snapshot)
    * ``inference_ms``, ``hop_work_ms`` rings (publisher/worker -> snapshot)
    * ``hops``, ``matched_hops``, ``last_top1``, ``skipped_hops`` (worker -> snapshot,
      the run command's status line)
    * ``rejected_control``, ``rejected_osc``, ``rate_limited_*`` (control threads -> snapshot;
      each counter has a single writer thread)
    * ``info`` dict of static-ish facts (app/worker on model change -> snapshot)
    """

    def __init__(self, nominal_block_s: float) -> None:
        self.start_time = time.time()
        self.start_mono = time.perf_counter()
        self.nominal_block_s = nominal_block_s
        self.latency_rings: dict[str, _Ring] = {}  # per transport, each written by its publisher
        self.inference_ms = _Ring(STATS_WINDOW_HOPS)
        self.hop_work_ms = _Ring(STATS_WINDOW_HOPS)
        self.block_interval_ms = _Ring(JITTER_WINDOW_BLOCKS)
        self.hops = 0
        self.matched_hops = 0  # hops with a match on any channel
        self.last_top1 = ""  # name of the latest top-1 (the run command's status line)
        self.skipped_hops = 0
        self.rejected_control = 0
        self.rejected_osc = 0
        self.rate_limited_control = 0  # ZeroMQ control thread (also in rejected_control)
        self.rate_limited_osc = 0  # OSC control thread (also in rejected_osc)
        self.overflows = 0
        self.nonfinite_samples = 0
        self.publisher_drops: dict[str, int] = {}
        self.outputs: Any = None  # emberd.daemon.outputs.Outputs, set once by the app
        self.jitter_max_run_ms = 0.0  # largest |interval - nominal| since start
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()  # snapshot vs. jitter ring update (not the callback)
        self._subscriber_lost: dict[str, int] = {}  # under _lock; ZeroMQ control thread writes

    def ms_since_start(self, unix_time: float) -> int:
        """Integer milliseconds since the daemon started (the OSC time base)."""
        return round((unix_time - self.start_time) * 1000.0)

    def latency_ring(self, transport: str) -> _Ring:
        """The capture -> publish latency ring of one transport (created on first use)."""
        return self.latency_rings.setdefault(transport, _Ring(STATS_WINDOW_HOPS))

    def add_block_intervals(self, intervals_s: np.ndarray) -> None:
        """Record callback intervals (seconds); called by the worker."""
        with self._lock:
            self.block_interval_ms.add_many(intervals_s * 1000.0)
            if intervals_s.size:
                dev = float(np.max(np.abs(intervals_s - self.nominal_block_s))) * 1000.0
                self.jitter_max_run_ms = max(self.jitter_max_run_ms, dev)

    def report_lost(self, subscriber: str, messages: int) -> None:
        """A subscriber's running count of messages it missed (control ``lost``)."""
        with self._lock:
            self._subscriber_lost.pop(subscriber, None)  # re-inserted: newest last
            self._subscriber_lost[subscriber] = messages
            while len(self._subscriber_lost) > MAX_LOSS_REPORTERS:
                del self._subscriber_lost[next(iter(self._subscriber_lost))]

    def snapshot(self) -> dict[str, Any]:
        """The status object (a new dict; safe to hand to another thread)."""
        with self._lock:
            intervals = self.block_interval_ms.values()
            subscriber_lost = dict(self._subscriber_lost)
        nominal_ms = self.nominal_block_s * 1000.0
        jitter = np.abs(intervals - nominal_ms) if intervals.size else np.zeros(1)
        rings = dict(self.latency_rings)
        lat50 = {t: r.percentile(50) for t, r in rings.items()}
        lat99 = {t: r.percentile(99) for t, r in rings.items()}
        dropped = self.skipped_hops + sum(self.publisher_drops.values())
        status: dict[str, Any] = dict(self.info)
        status.update(
            start_time=self.start_time,
            uptime_s=round(time.perf_counter() - self.start_mono, 3),
            hops=self.hops,
            matched_hops=self.matched_hops,
            latency_p50_ms=round(max(lat50.values(), default=0.0), 3),
            latency_p99_ms=round(max(lat99.values(), default=0.0), 3),
            latency_ms_by_transport={
                t: {"p50": round(lat50[t], 3), "p99": round(lat99[t], 3)} for t in lat50
            },
            inference_ms=round(self.inference_ms.percentile(50), 3),
            inference_p99_ms=round(self.inference_ms.percentile(99), 3),
            hop_work_ms=round(self.hop_work_ms.percentile(50), 3),
            hop_work_p99_ms=round(self.hop_work_ms.percentile(99), 3),
            callback_interval_ms=round(float(np.median(intervals)), 3) if intervals.size else 0.0,
            callback_jitter_ms=round(float(np.percentile(jitter, 99)), 3),
            callback_jitter_max_ms=round(float(jitter.max()), 3),
            callback_jitter_max_run_ms=round(self.jitter_max_run_ms, 3),
            overflows=self.overflows,
            nonfinite_samples=self.nonfinite_samples,
            dropped_hops=dropped,
            skipped_hops=self.skipped_hops,
            publisher_drops=dict(self.publisher_drops),
            rejected=self.rejected_control + self.rejected_osc,
            rejected_control=self.rejected_control,
            rejected_osc=self.rejected_osc,
            rate_limited=self.rate_limited_control + self.rate_limited_osc,
            rate_limited_control=self.rate_limited_control,
            rate_limited_osc=self.rate_limited_osc,
        )
        status["swallowed_errors"] = swallowed_counts()
        status["subscriber_lost"] = sum(subscriber_lost.values())
        status["subscriber_lost_by"] = subscriber_lost
        if self.outputs is not None:
            status["outputs"] = self.outputs.describe()
            status["analyzers"] = self.outputs.describe_analyzers()
            zmq_out = status["outputs"].get("zmq")
            if isinstance(zmq_out, dict):  # the drops of the PUB socket, as its readers saw them
                zmq_out["subscriber_lost"] = status["subscriber_lost"]
        return status
