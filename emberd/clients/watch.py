"""``emberd watch``: a live terminal view of what the daemon hears.

:class:`WatchState` folds typed messages into what the screen shows;
:func:`render` turns it into a rich renderable (tests render it into a
recording console); :func:`run_watch` is the loop behind the command.
"""

from __future__ import annotations

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
            if item.state == "restarted":
                self.restarts += 1
                self.channels.clear()
                self.latencies_ms.clear()
            return
        self.messages += 1
        if self.connection in ("waiting", "silent") or (
            self.connection == "stopped" and not isinstance(item, StatusMessage)
        ):
            self.connection = "connected"
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


def _connection_text(state: WatchState) -> Text:
    if state.connection == "waiting":
        return Text(f"waiting for daemon… ({state.endpoint})", style="yellow")
    if state.connection == "stopped":
        return Text(f"daemon stopped — waiting for it to come back ({state.endpoint})",
                    style="yellow")
    if state.connection == "silent":
        return Text(f"daemon silent — waiting for it to come back ({state.endpoint})",
                    style="yellow")
    if state.connection == "restarted" or state.restarts:
        return Text(f"connected — daemon restarted ({state.restarts}×)", style="magenta")
    return Text(f"connected to {state.endpoint}", style="green")


def hit_text(hit: HitMessage) -> str:
    """One line for a hit: ``hit 12 final: kick 01.wav (exact 0.97) 245 ms``."""
    top = hit.matches[0] if hit.matches else None
    what = f"{top.name} ({top.kind} {top.confidence:.2f})" if top is not None else "no answer"
    return f"hit {hit.hit} {hit.stage}: {what} {hit.latency_ms:.0f} ms"


def _channel_table(channel: int, view: ChannelView) -> Table:
    title = f"channel {channel}"
    if view.rms_db is not None:
        title += f"  {view.rms_db:6.1f} dBFS" + ("  ●" if view.onset else "")
    if view.hit is not None:
        title += "  " + hit_text(view.hit)
    table = Table(title=title, title_justify="left", expand=True, show_edge=False)
    table.add_column("#", justify="right", width=2)
    table.add_column("match", ratio=3, overflow="ellipsis", no_wrap=True)
    table.add_column("score", justify="right", width=6)
    table.add_column("tags", ratio=2, overflow="ellipsis", no_wrap=True)
    for m in view.matches[:SHOW_MATCHES]:
        table.add_row(str(m.rank + 1), m.name, f"{m.score:.3f}", ", ".join(m.tags))
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
        parts.append(f"{name} {', '.join(bits) if bits else 'ok'}")
    return " · ".join(parts)


def render(state: WatchState) -> RenderableType:
    """Build the screen for ``state`` (pure: no I/O)."""
    parts: list[RenderableType] = [_connection_text(state), _status_line(state)]
    outs = outputs_text(state.status)
    if state.lost:  # PUB drops silently per subscriber at its HWM: only the reader can tell
        outs = f"{outs} · this view lost {state.lost}" if outs else f"this view lost {state.lost}"
    if outs:
        bad = any(w in outs for w in ("dropped", "errors", "disabled", "lost"))
        parts.append(Text.assemble(("outputs ", "dim"), (outs, "yellow" if bad else "")))
    if not state.channels:
        parts.append(Text("no matches yet", style="dim"))
    for ch in sorted(state.channels):
        parts.append(_channel_table(ch, state.channels[ch]))
    return Panel(Group(*parts), title="emberd watch", border_style="blue")


def run_watch(
    zmq_endpoint: str,
    control_endpoint: str | None,
    *,
    duration_s: float | None = None,
    silence_s: float = 3.0,
) -> int:
    """Run the live view until Ctrl-C (or ``duration_s``). Returns an exit code."""
    from rich.live import Live

    from emberd.clients.control_client import ControlClient
    from emberd.clients.subscriber import Subscriber
    from emberd.errors import EmberdError

    state = WatchState(endpoint=zmq_endpoint)
    end = None if duration_s is None else time.monotonic() + duration_s
    topics = ["match", "tag", "level", "status"]
    with Subscriber(zmq_endpoint, topics, silence_s=silence_s) as sub, \
            Live(render(state), refresh_per_second=REFRESH_HZ, screen=False) as live:
        while end is None or time.monotonic() < end:
            item = sub.recv(timeout_s=1.0 / REFRESH_HZ)
            if item is None:
                live.update(render(state))
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
            live.update(render(state))
    return 0
