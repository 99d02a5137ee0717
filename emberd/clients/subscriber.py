"""ZeroMQ subscriber that yields typed messages and says when the daemon comes and goes.

ZeroMQ reconnects on its own, so a SUB socket never errors when the daemon is
down -- it just stays quiet.  :class:`Subscriber` turns that quiet into
:class:`~emberd.clients.messages.ConnectionEvent` items: ``waiting`` before the
first message, ``silent`` after ``silence_s`` without one (the daemon publishes
status at least once a second, so silence means it stopped), ``stopped`` when
its final status says it is shutting down, ``connected``
when messages flow again and ``restarted`` when a topic's sequence number goes
backwards (a new daemon process starts counting from 0) or the status
message's ``start_time`` changes.

The daemon's PUB socket drops messages silently, per subscriber, when that
subscriber's queue is full (its high-water mark): only the reader can see the gaps
in ``seq``.  Given the daemon's control endpoint (``report_to``), a subscriber
reports its running count to the daemon (control ``lost``, at most every
LOSS_REPORT_PERIOD_S, from :meth:`Subscriber.recv`), so the daemon's status shows
what its readers lost (``subscriber_lost``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

import zmq

from emberd.clients import wire
from emberd.clients.closing import Closing
from emberd.clients.messages import (
    ConnectionEvent,
    DaemonMessage,
    Item,
    StatusMessage,
    from_wire,
)
from emberd.errors import EmberdError

DEFAULT_SILENCE_S = 3.0  # seconds without any message before we call the daemon silent
DEFAULT_RCVHWM_MSGS = 1000  # per-socket queue; a slow client drops rather than grows
RECONNECT_IVL_MS = 200  # how fast ZeroMQ retries a vanished publisher
LOSS_REPORT_PERIOD_S = 2.0  # shortest interval between two loss reports to the daemon
LOSS_REPORT_TIMEOUT_S = 0.2  # a report waits this long for the daemon, once, then gives up


class Subscriber(Closing):
    """Subscribe to an emberd PUB endpoint and iterate typed messages.

    Parameters
    ----------
    endpoint : str
        ZeroMQ endpoint of the daemon's PUB socket, e.g. ``tcp://127.0.0.1:5556``.
    topics : iterable of str, optional
        Topic prefixes (``"match"``, ``"tag."``, ``"emb.0"``, ``"status"``...);
        default all.
    silence_s : float
        Seconds without a message after which a ``silent`` event is emitted.
    report_to : str, optional
        The daemon's control endpoint: report the messages this subscriber lost
        (seq gaps) to the daemon's status.
    name : str, optional
        This subscriber's name in those reports (default ``emberd-client-<pid>``;
        1-64 letters, digits, ``. _ : + -``).

    Examples
    --------
    >>> with Subscriber("tcp://127.0.0.1:5556", ["match", "status"]) as sub:  # doctest: +SKIP
    ...     for item in sub:
    ...         print(item)
    """

    def __init__(
        self,
        endpoint: str = wire.DEFAULT_PUB_ENDPOINT,
        topics: Iterable[str] | None = None,
        *,
        silence_s: float = DEFAULT_SILENCE_S,
        context: zmq.Context | None = None,
        report_to: str | None = None,
        name: str | None = None,
    ) -> None:
        if silence_s <= 0:
            raise EmberdError(f"subscriber: silence_s must be > 0, got {silence_s}")
        self.endpoint = endpoint
        self.silence_s = float(silence_s)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, DEFAULT_RCVHWM_MSGS)
        self._sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        for topic in (list(topics) if topics is not None else [""]):
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise EmberdError(f"subscriber: cannot connect to {endpoint!r}: {exc}") from exc
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._last_seq: dict[str, int] = {}
        self._last_rx = time.monotonic()
        self.state = "waiting"
        self._announced = False
        self._pending: DaemonMessage | None = None
        self._start_time: float | None = None  # daemon start, from status messages
        #: messages lost to gaps in sequence numbers (slow consumer or HWM)
        self.dropped = 0
        #: frames that failed to decode (counted, never raised)
        self.malformed = 0
        #: number of daemon restarts seen
        self.restarts = 0
        self.report_to = report_to
        self.name = name or f"emberd-client-{os.getpid()}"
        self._lost_here = 0  # seq gaps since this daemon process started
        self._reported = 0  # the count the daemon last acknowledged
        self._next_report = 0.0  # monotonic time of the earliest next report
        #: loss reports the daemon did not acknowledge (no answer, or refused)
        self.report_errors = 0

    # -- context manager / cleanup -------------------------------------------------
    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self._sock.closed:
            self._sock.close(0)

    # -- receiving -----------------------------------------------------------------
    def recv(self, timeout_s: float | None = None) -> Item | None:
        """Return the next message or connection event, or ``None`` on timeout.

        Parameters
        ----------
        timeout_s : float, optional
            Longest wait in seconds; ``None`` waits until something happens
            (a message or a connection event).
        """
        if self.report_to is not None and self._lost_here > self._reported:
            self._report_loss(self.report_to)
        if not self._announced:
            self._announced = True
            return ConnectionEvent("waiting", f"waiting for daemon at {self.endpoint}")
        if self._pending is not None:  # the message that came with the last event
            msg, self._pending = self._pending, None
            return msg
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            silent_at = self._last_rx + self.silence_s
            if self.state == "connected" and now >= silent_at:
                self.state = "silent"
                return ConnectionEvent(
                    "silent", f"no message from {self.endpoint} for {self.silence_s:g} s"
                )
            wake = deadline if deadline is not None else None
            if self.state == "connected":
                wake = silent_at if wake is None else min(wake, silent_at)
            wait_ms = None if wake is None else max(0, int((wake - now) * 1000))
            if dict(self._poller.poll(wait_ms)).get(self._sock):
                item = self._receive_one()
                if item is not None:
                    return item
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _report_loss(self, endpoint: str) -> None:
        """Tell the daemon at ``endpoint`` this subscriber's loss count (rate-limited, one
        short try)."""
        from emberd.clients.control_client import ControlClient

        now = time.monotonic()
        if now < self._next_report:
            return
        self._next_report = now + LOSS_REPORT_PERIOD_S
        count = self._lost_here
        try:
            with ControlClient(endpoint, timeout=LOSS_REPORT_TIMEOUT_S, retries=1,
                               context=self._ctx) as ctl:  # fmt: skip
                ok = bool(ctl.request("lost", subscriber=self.name, messages=count).get("ok"))
        except EmberdError:
            ok = False
        if ok:
            self._reported = count
        else:
            self.report_errors += 1

    def __iter__(self) -> Iterator[Item]:
        while True:
            item = self.recv(None)
            if item is not None:
                yield item

    def _receive_one(self) -> Item | None:
        frames = self._sock.recv_multipart(zmq.NOBLOCK)
        try:
            raw = wire.decode(frames)
            msg: DaemonMessage = from_wire(raw)
        except wire.WireError:
            self.malformed += 1
            return None
        self._last_rx = time.monotonic()
        topic = bytes(frames[0]).decode("ascii")
        prev = self._last_seq.get(topic)
        self._last_seq[topic] = msg.seq
        started = self._start_time
        start = msg.status.get("start_time") if isinstance(msg, StatusMessage) else None
        if isinstance(start, (int, float)):
            self._start_time = float(start)
        new_process = started is not None and self._start_time != started
        if new_process or (prev is not None and msg.seq <= prev):
            # A new daemon counts from 0 again: forget every topic's history.
            self._last_seq = {topic: msg.seq}
            if start is None:  # the new daemon's start time comes with its first status:
                self._start_time = None  # adopt it then, without counting a second restart
            self.restarts += 1
            self._lost_here = self._reported = 0  # the new daemon has heard nothing yet
            self.state = "connected"
            self._pending = msg
            why = "new start time" if new_process else f"{topic} seq {prev} -> {msg.seq}"
            return ConnectionEvent("restarted", f"daemon restarted ({why})")
        if prev is not None and msg.seq > prev + 1:
            self.dropped += msg.seq - prev - 1
            self._lost_here += msg.seq - prev - 1
        if isinstance(msg, StatusMessage) and msg.status.get("final"):
            # The daemon's last word (end of input, or shut down): say so at once
            # instead of waiting for the silence limit.
            self.state = "stopped"
            self._pending = msg
            return ConnectionEvent("stopped", f"daemon at {self.endpoint} stopped")
        if self.state != "connected":
            was = self.state
            self.state = "connected"
            self._pending = msg
            return ConnectionEvent("connected", f"receiving from {self.endpoint} (was {was})")
        return msg
