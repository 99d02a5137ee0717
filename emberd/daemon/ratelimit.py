"""Control-plane rate limits: a flood of control messages must not starve the worker.

The control threads share the interpreter (and its GIL) with the worker, so every
message they parse is time the worker may wait for. A :class:`RateLimiter` gives
each source a token bucket (``rate`` messages/s, ``burst`` at once); a message
over its source's budget is refused *before* it is parsed, with the cheapest
possible reply, and counted (``rate_limited_control`` / ``rate_limited_osc`` in
status, and in ``rejected``). On top of that an overall budget (``total_rate``)
bounds what all sources together may cost: beyond it the control thread sleeps
(releasing the GIL) instead of reading, and the kernel queues or drops the rest.

Sources: an OSC datagram's sender address; ZeroMQ's REP socket does not say who
sent a request, so its requests share one bucket, and a refused one is answered
only when the bucket would have had a token (the REP socket answers one request
at a time, so this paces any client, however fast it sends, to ``rate``).

Only the thread that owns a limiter calls it (no locks).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

OSC_RATE_PER_S = 100.0  # per sender: far above any controller (60 fps), far below a flood
OSC_BURST = 200  # messages a sender may send at once (a patch sending its state on load)
OSC_TOTAL_PER_S = 500.0  # all senders together, refused or not: the OSC thread's budget
ZMQ_RATE_PER_S = 100.0  # requests/s on the REP socket (all clients; status polls are ~20/s)
ZMQ_BURST = 100
NOTICE_INTERVAL_S = 1.0  # a rate-limited OSC sender is told so at most this often
MAX_SOURCES = 1024  # buckets kept (least recently seen dropped): spoofed senders cost no memory
RATE_LIMITED = "rate limited"  # the start of every refusal's error text


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    noticed: float = -1e9  # when the sender was last told it is rate limited


class RateLimiter:
    """Token buckets per source plus an overall budget.

    Parameters
    ----------
    rate : float
        Messages per second each source may send.
    burst : int
        Bucket size: messages a source may send at once after a quiet spell.
    total_rate : float, optional
        Messages per second (refused ones included) the owner will handle at all;
        :meth:`pause_s` says how long to stop reading when it is exceeded.
    """

    def __init__(self, rate: float, burst: int, total_rate: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.total_rate = total_rate
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._window_start = 0.0
        self._window_count = 0

    def allow(self, source: Hashable, now: float | None = None) -> bool:
        """Take a token for ``source``; False when it is over its budget."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[source] = bucket
            if len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def wait_s(self, source: Hashable, now: float | None = None) -> float:
        """Seconds until ``source`` has a token again (0 if it has one)."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(source)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)

    def notice_due(self, source: Hashable, now: float | None = None) -> bool:
        """Whether a refused ``source`` should be told (at most once per NOTICE_INTERVAL_S)."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(source)
        if bucket is None or now - bucket.noticed < NOTICE_INTERVAL_S:
            return False
        bucket.noticed = now
        return True

    def pause_s(self, now: float | None = None) -> float:
        """Count one message against the overall budget; seconds to stop reading (0: go on).

        The budget is counted in windows of 0.1 s: past ``total_rate / 10`` messages in
        a window, the owner should sleep until the window ends.
        """
        if self.total_rate is None:
            return 0.0
        now = time.monotonic() if now is None else now
        window_s = 0.1
        if now - self._window_start >= window_s:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        if self._window_count <= self.total_rate * window_s:
            return 0.0
        return max(0.0, self._window_start + window_s - now)

    def error(self) -> str:
        """The error text of a refusal."""
        return f"{RATE_LIMITED}: at most {self.rate:g} control messages/s"
