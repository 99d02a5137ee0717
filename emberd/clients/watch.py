"""``emberd watch``: a live terminal view of what the daemon hears.

:class:`WatchState` folds typed messages into what the screen shows;
:func:`render` turns it into a rich renderable (tests render it into a
recording console); :func:`run_watch` is the loop behind the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from emberd.clients.messages import (
    ConnectionEvent,
    HitMessage,
    Item,
    LevelMessage,
    Match,
    MatchMessage,
    StatusMessage,
    Tag,
    TagMessage,
)

LATENCY_WINDOW_MSGS = 500  # recent match messages in the client-side latency figures
SHOW_MATCHES = 5  # matches per channel on screen
SHOW_TAGS = 3  # tags per channel on screen
REFRESH_HZ = 10  # screen refreshes per second
RESTART_NOTE_S = 10.0  # the "daemon restarted" note shows this long after a restart


@dataclass
class ChannelView:
    """What the screen shows for one channel."""

    matches: tuple[Match, ...] = ()
    tags: tuple[Tag, ...] = ()
    rms_db: float | None = None
    onset: bool = False
    updated: float = 0.0
    hit: HitMessage | None = None  # the newest stage of the newest hit


@dataclass
class WatchState:
    """Everything ``emberd watch`` displays, updated one message at a time."""

    endpoint: str = ""
    connection: str = "waiting"
    connection_detail: str = ""
    restarts: int = 0
    restarted_at: float | None = None  # time.time() of the latest restart
    changed_at: float = 0.0  # time.time() of the latest connection change
    last_message_at: float | None = None  # time.time() of the latest daemon message
    channels: dict[int, ChannelView] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    messages: int = 0
    lost: int = 0  # messages this view missed (seq gaps: ZeroMQ's HWM for a slow reader)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW_MSGS))

    def update(self, item: Item, *, now: float | None = None) -> None:
        """Fold one message or connection event into the state."""
        now = time.time() if now is None else now
        if isinstance(item, ConnectionEvent):
            self.connection, self.connection_detail = item.state, item.detail
            self.changed_at = now
            if item.state == "restarted":
                self.restarts += 1
                self.restarted_at = now
                self.connection = "connected"  # a new daemon is publishing
                self.channels.clear()
                self.latencies_ms.clear()
            return
        self.messages += 1
        self.last_message_at = now
        if self.connection in ("waiting", "silent") or (
            self.connection == "stopped" and not isinstance(item, StatusMessage)
        ):
            self.connection = "connected"
            self.changed_at = now
        self.model = item.model or self.model
        if isinstance(item, MatchMessage):
            self._chan(item.channel).matches = item.matches
            self._chan(item.channel).updated = now
            # capture -> arrival here: what a producer actually waits for.
            self.latencies_ms.append((now - item.capture_time) * 1000.0)
        elif isinstance(item, TagMessage):
            self._chan(item.channel).tags = item.tags
        elif isinstance(item, LevelMessage):
            view = self._chan(item.channel)
            view.rms_db, view.onset = item.rms_db, item.onset
        elif isinstance(item, StatusMessage):
            self.status = dict(item.status)
        elif isinstance(item, HitMessage):
            self._chan(item.channel).hit = item

    def apply_status_reply(self, reply: dict[str, Any]) -> None:
        """Use a control ``status`` reply (late joiners get status without waiting)."""
        status = reply.get("status", reply)
        if isinstance(status, dict):
            self.status = {k: v for k, v in status.items() if k != "ok"}

    def _chan(self, channel: int) -> ChannelView:
        return self.channels.setdefault(channel, ChannelView())

    def latency_percentiles(self) -> tuple[float, float] | None:
        """Client-side capture-to-receive latency (p50, p99) in ms, if any matches came."""
        if not self.latencies_ms:
            return None
        arr = np.fromiter(self.latencies_ms, dtype=np.float64)
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _find(status: dict[str, Any], *names: str) -> Any:
    """First of ``names`` present in ``status`` or one level down (daemon layout may nest)."""
    for name in names:
        if name in status:
            return status[name]
    for value in status.values():
        if isinstance(value, dict):
            found = _find(value, *names)
            if found is not None:
                return found
    return None


def _fmt_ms(value: Any) -> str:
    return f"{float(value):.1f} ms" if isinstance(value, (int, float)) else "-"


def _status_line(state: WatchState) -> Table:
    st = state.status
    grid = Table.grid(padding=(0, 2))
    for _ in range(4):
        grid.add_column()
    lat = state.latency_percentiles()
    daemon_p50 = _find(st, "latency_p50_ms", "hop_latency_p50_ms", "p50_ms")
    daemon_p99 = _find(st, "latency_p99_ms", "hop_latency_p99_ms", "p99_ms")
    grid.add_row(
        Text.assemble(("model ", "dim"), (str(_find(st, "model") or state.model or "-"), "bold")),
        Text.assemble(("provider ", "dim"), str(_find(st, "provider") or "-")),
        Text.assemble(("overflows ", "dim"), str(_find(st, "overflows") or 0)),
        Text.assemble(("dropped hops ", "dim"), str(_find(st, "dropped_hops") or 0)),
    )
    grid.add_row(
        Text.assemble(("hop p50 ", "dim"), _fmt_ms(daemon_p50)),
        Text.assemble(("hop p99 ", "dim"), _fmt_ms(daemon_p99)),
        Text.assemble(("seen p50 ", "dim"), _fmt_ms(lat[0]) if lat else "-"),
        Text.assemble(("seen p99 ", "dim"), _fmt_ms(lat[1]) if lat else "-"),
    )
    return grid


def _age(seconds: float) -> str:
    """A short age: ``4 s``, ``3 min``, ``2 h``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def is_stale(state: WatchState) -> bool:
    """True when what is shown is no longer live (the daemon is silent or stopped)."""
    return state.connection in ("silent", "stopped")


def _connection_text(state: WatchState, now: float) -> Text:
    heard = (f"last message {_age(now - state.last_message_at)} ago"
             if state.last_message_at is not None else "nothing received")  # fmt: skip
    if state.connection == "waiting":
        return Text(f"waiting for daemon… ({state.endpoint})", style="yellow")
    if state.connection == "stopped":
        return Text(f"daemon stopped — {heard}; data below is stale; waiting for it to come "
                    f"back ({state.endpoint})", style="yellow")  # fmt: skip
    if state.connection == "silent":
        return Text(f"daemon silent — {heard}; data below is stale; waiting for it to come "
                    f"back ({state.endpoint})", style="yellow")  # fmt: skip
    if state.restarted_at is not None and now - state.restarted_at < RESTART_NOTE_S:
        return Text(f"connected to {state.endpoint} — daemon restarted ({state.restarts}×) "
                    f"{_age(now - state.restarted_at)} ago", style="magenta")  # fmt: skip
    return Text(f"connected to {state.endpoint}", style="green")


def hit_text(hit: HitMessage) -> str:
    """One line for a hit: ``hit 12 final: kick 01.wav (exact 0.97) 245 ms``."""
    top = hit.matches[0] if hit.matches else None
    what = f"{top.name} ({top.kind} {top.confidence:.2f})" if top is not None else "no answer"
    return f"hit {hit.hit} {hit.stage}: {what} {hit.latency_ms:.0f} ms"


def _channel_table(channel: int, view: ChannelView, stale_age: float | None = None) -> Table:
    title = f"channel {channel}"
    if view.rms_db is not None:
        title += f"  {view.rms_db:6.1f} dBFS" + ("  ●" if view.onset and stale_age is None else "")
    if view.hit is not None:
        title += "  " + hit_text(view.hit)
    if stale_age is not None:
        title += f"  (stale: {_age(stale_age)} old)"
    table = Table(title=title, title_justify="left", expand=True, show_edge=False,
                  style="dim" if stale_age is not None else "",
                  title_style="dim" if stale_age is not None else None)  # fmt: skip
    table.add_column("#", justify="right", width=2)
    table.add_column("match", ratio=3, overflow="ellipsis", no_wrap=True)
    table.add_column("score", justify="right", width=6)
    table.add_column("tags", ratio=2, overflow="ellipsis", no_wrap=True)
    for m in view.matches[:SHOW_MATCHES]:
        table.add_row(str(m.rank + 1), m.name, f"{m.score:.3f}", ", ".join(m.tags),
                      style="dim" if stale_age is not None else None)  # fmt: skip
    if view.tags:
        live = "  ".join(f"{t.tag} {t.confidence:.2f}" for t in view.tags[:SHOW_TAGS])
        table.caption = f"live tags: {live}"
        table.caption_justify = "left"
    return table


def outputs_text(status: dict[str, Any]) -> str:
    """One line per daemon output: ``zmq ok · osc 12 dropped · mysink disabled (50 errors)``.

    Reads ``status["outputs"]`` (see :mod:`emberd.daemon.outputs`); empty when absent.
    """
    parts = []
    for name, o in sorted((status.get("outputs") or {}).items()):
        if not isinstance(o, dict):
            continue
        bits = []
        if o.get("disabled"):
            bits.append("disabled")
        if o.get("dropped"):
            bits.append(f"{o['dropped']} dropped")
        if o.get("errors"):
            bits.append(f"{o['errors']} errors")
        if o.get("subscriber_lost"):  # what the readers of the PUB socket reported missing
            bits.append(f"{o['subscriber_lost']} lost by subscribers")
        parts.append(f"{name} {', '.join(bits) if bits else 'ok'}")
    return " · ".join(parts)


def render(state: WatchState, *, now: float | None = None) -> RenderableType:
    """Build the screen for ``state`` at time ``now`` (pure: no I/O)."""
    now = time.time() if now is None else now
    parts: list[RenderableType] = [_connection_text(state, now), _status_line(state)]
    outs = outputs_text(state.status)
    if state.lost:  # PUB drops silently per subscriber at its HWM: only the reader can tell
        outs = f"{outs} · this view lost {state.lost}" if outs else f"this view lost {state.lost}"
    if outs:
        bad = any(w in outs for w in ("dropped", "errors", "disabled", "lost"))
        parts.append(Text.assemble(("outputs ", "dim"), (outs, "yellow" if bad else "")))
    if not state.channels:
        parts.append(Text("no matches yet", style="dim"))
    stale = is_stale(state)
    for ch in sorted(state.channels):
        view = state.channels[ch]
        parts.append(_channel_table(ch, view, now - view.updated if stale else None))
    return Panel(Group(*parts), title="emberd watch", border_style="dim" if stale else "blue")


class ChangeLog:
    """One line (or JSON object) per change of a :class:`WatchState`, for pipes and logs.

    Call :meth:`lines` after every update; it returns what changed since the last call.
    """

    def __init__(self, *, as_json: bool = False) -> None:
        self.as_json = as_json
        self._connection = ""
        self._top: dict[int, str | None] = {}
        self._hit: dict[int, tuple[int, str]] = {}
        self._facts: dict[str, Any] = {}

    def _out(self, now: float, event: dict[str, Any], text: str) -> str:
        if self.as_json:
            return json.dumps({"time": round(now, 3), **event})
        return f"{time.strftime('%H:%M:%S', time.localtime(now))} {text}"

    def lines(self, state: WatchState, *, now: float | None = None) -> list[str]:
        """The lines for what changed in ``state`` since the previous call."""
        now = time.time() if now is None else now
        out = []
        conn = f"{state.connection}/{state.restarts}"
        if conn != self._connection:
            self._connection = conn
            text = _connection_text(state, now).plain
            out.append(self._out(now, {"event": "connection", "state": state.connection,
                                       "restarts": state.restarts, "text": text}, text))
        if state.connection != "connected":
            return out
        for ch in sorted(state.channels):
            matches = state.channels[ch].matches
            top = matches[0] if matches else None
            key = top.path if top is not None else None
            if ch in self._top and self._top[ch] == key:
                continue
            self._top[ch] = key
            if top is None:
                out.append(self._out(now, {"event": "match", "channel": ch, "top": None},
                                     f"ch {ch}  no match"))
                continue
            tags = ", ".join(top.tags)
            out.append(self._out(
                now,
                {"event": "match", "channel": ch, "top": {"name": top.name, "path": top.path,
                 "score": round(top.score, 4), "tags": list(top.tags), "id": top.id}},
                f"ch {ch}  {top.name} ({top.score:.3f})" + (f"  [{tags}]" if tags else ""),
            ))  # fmt: skip
        for ch in sorted(state.channels):
            hit = state.channels[ch].hit
            if hit is None or self._hit.get(ch) == (hit.hit, hit.stage):
                continue
            self._hit[ch] = (hit.hit, hit.stage)
            top = hit.matches[0] if hit.matches else None
            out.append(self._out(
                now, {"event": "hit", "channel": ch, "hit": hit.hit, "stage": hit.stage,
                      "top": top.name if top is not None else None,
                      "latency_ms": round(hit.latency_ms, 1)},
                f"ch {ch}  {hit_text(hit)}",
            ))  # fmt: skip
        st = state.status
        facts = {name: _find(st, name) for name in ("model", "provider", "overflows",
                                                    "dropped_hops")}  # fmt: skip
        if st and facts != self._facts:
            self._facts = facts
            out.append(self._out(
                now, {"event": "status", **facts},
                f"status  {facts['model']} on {facts['provider']}, overflows "
                f"{facts['overflows'] or 0}, dropped hops {facts['dropped_hops'] or 0}",
            ))  # fmt: skip
        return out


def run_watch(
    zmq_endpoint: str,
    control_endpoint: str | None,
    *,
    duration_s: float | None = None,
    silence_s: float = 3.0,
    as_json: bool = False,
) -> int:
    """Run the live view until Ctrl-C (or ``duration_s``). Returns an exit code.

    On a terminal: a screen redrawn :data:`REFRESH_HZ` times a second. Otherwise (or with
    ``as_json``): one line per change on stdout, flushed (see :class:`ChangeLog`).
    """
    from rich.live import Live

    from emberd.clients.control_client import ControlClient
    from emberd.clients.subscriber import Subscriber
    from emberd.errors import EmberdError

    state = WatchState(endpoint=zmq_endpoint)
    end = None if duration_s is None else time.monotonic() + duration_s
    topics = ["match", "tag", "level", "status"]
    log = ChangeLog(as_json=as_json) if as_json or not sys.stdout.isatty() else None

    def show() -> None:
        if live is not None:
            live.update(render(state))
            return
        assert log is not None
        for line in log.lines(state):
            print(line, flush=True)

    screen = (Live(render(state), refresh_per_second=REFRESH_HZ, screen=False) if log is None
              else contextlib.nullcontext())  # fmt: skip
    if log is not None and not as_json:
        print(f"emberd watch: {zmq_endpoint} (one line per change)", flush=True)
    with Subscriber(zmq_endpoint, topics, silence_s=silence_s, report_to=control_endpoint,
                    name=f"watch-{os.getpid()}") as sub, screen as live:  # fmt: skip
        while end is None or time.monotonic() < end:
            item = sub.recv(timeout_s=1.0 / REFRESH_HZ)
            if item is None:
                show()
                continue
            state.update(item)
            state.lost = sub.dropped
            if isinstance(item, ConnectionEvent) and item.state in ("connected", "restarted") \
                    and control_endpoint:
                # A late subscriber asks for the current status instead of waiting for one.
                try:
                    with ControlClient(control_endpoint, timeout=0.5, retries=1) as ctl:
                        state.apply_status_reply(ctl.request("status"))
                except EmberdError:
                    pass  # status will arrive on the PUB socket anyway
            show()
    return 0
