"""``emberd watch``: its screen rendered from real ZeroMQ messages, and the command itself."""

from __future__ import annotations

import os
import subprocess
import sys

from rich.console import Console
from test_clients_lib import WAIT_S, Publisher, match_fields, next_data

from emberd.clients.messages import ConnectionEvent
from emberd.clients.subscriber import Subscriber
from emberd.clients.watch import WatchState, render


def screen(state: WatchState) -> str:
    console = Console(record=True, width=110, color_system=None, force_terminal=False)
    console.print(render(state))
    return console.export_text()


def test_watch_screen_from_real_messages() -> None:
    pub = Publisher()
    state = WatchState(endpoint=pub.endpoint)
    try:
        with Subscriber(pub.endpoint, silence_s=0.5) as sub:
            first = sub.recv(timeout_s=0)
            assert first is not None
            state.update(first)
            assert "waiting for daemon" in screen(state)
            pub.wait_subscribed()
            pub.send("status", status={"model": "dsp-baseline", "provider": "CPUExecutionProvider",
                                       "latency_p50_ms": 31.5, "latency_p99_ms": 44.25,
                                       "overflows": 3, "dropped_hops": 1, "start_time": 5.0})
            pub.send("match", 0, **match_fields(["kick 01.wav", "kick 02.wav"], "Kicks"))
            pub.send("match", 2, **match_fields(["pad warm.wav"], "Pads"))
            pub.send("tag", 0, tags=[{"tag": "Kicks", "confidence": 0.875}])
            pub.send("level", 0, rms_db=-14.0, peak_db=-2.0, onset=True)
            seen = 0
            while seen < 5:
                item = sub.recv(timeout_s=WAIT_S)
                assert item is not None
                state.update(item)
                seen += not isinstance(item, ConnectionEvent)
            text = screen(state)
            assert "connected to" in text
            assert "kick 01.wav" in text and "0.900" in text and "kick 02.wav" in text
            assert "pad warm.wav" in text and "channel 2" in text
            assert "live tags: Kicks 0.88" in text
            assert "CPUExecutionProvider" in text and "dsp-baseline" in text
            assert "31.5 ms" in text and "44.2 ms" in text  # daemon's hop p50/p99
            assert "overflows 3" in text
            assert "-14.0 dBFS" in text
            lat = state.latency_percentiles()
            assert lat is not None and 0 < lat[0] < 10_000  # capture -> here, in ms

            silent = next_data(sub)  # nothing more: the daemon went quiet
            state.update(silent)
            assert "daemon silent" in screen(state)
            pub.send("match", 0, seq=0, **match_fields(["snare.wav"], "Snares"))
            restarted = next_data(sub)
            state.update(restarted)
            msg = next_data(sub)
            state.update(msg)
            text = screen(state)
            assert "daemon restarted (1×)" in text
            assert "snare.wav" in text and "kick 01.wav" not in text  # old matches cleared
    finally:
        pub.close()


def test_watch_command_waits_for_a_daemon_that_is_not_there() -> None:
    pub = Publisher()  # bound, never sends: a daemon that is not publishing
    try:
        env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
        out = subprocess.run(
            [sys.executable, "-m", "emberd", "watch", "--zmq", pub.endpoint, "--control", "none",
             "--duration", "1"],
            capture_output=True, text=True, env=env, timeout=WAIT_S * 6, check=False,
        )
    finally:
        pub.close()
    assert out.returncode == 0, out.stderr
    assert "waiting for daemon" in out.stdout
    assert "emberd watch" in out.stdout


def test_watch_command_rejects_a_bad_endpoint() -> None:
    out = subprocess.run([sys.executable, "-m", "emberd", "watch", "--zmq", "nonsense://x",
                          "--duration", "1"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("emberd: error: subscriber: cannot connect")
    assert len(out.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ piped output, truth


def _piped_watch(pub: Publisher, *extra: str) -> tuple[list[str], bool]:
    """Run ``emberd watch`` with stdout on a pipe; feed it hops; (lines, first came early)."""
    import queue
    import threading
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "emberd", "watch", "--zmq", pub.endpoint, "--control", "none",
         "--duration", "8", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    pub.wait_subscribed()
    pub.send("status", status={"model": "dsp-baseline", "provider": "CPU", "start_time": 5.0,
                               "overflows": 0, "dropped_hops": 0})
    for names in [["kick 01.wav", "kick 02.wav"]] * 20 + [["snare.wav", "kick 01.wav"]] * 20:
        pub.send("match", 0, **match_fields(names))
        time.sleep(0.01)
    early = False  # a change line arrives while watch still runs: written and flushed at once
    seen: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        if "snare.wav" in seen[-1]:
            early = proc.poll() is None
            break
    proc.wait(WAIT_S)
    reader.join(5)
    while not lines.empty():
        seen.append(lines.get())
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return [line.rstrip("\n") for line in seen], early


def test_watch_piped_writes_one_line_per_change() -> None:
    pub = Publisher()
    try:
        lines, early = _piped_watch(pub)
    finally:
        pub.close()
    assert early, lines
    tops = [line for line in lines if " ch 0  " in line]
    assert len(tops) == 2, lines  # 40 hops, two different top-1s
    assert "kick 01.wav (0.900)  [Kicks]" in tops[0] and "snare.wav (0.900)" in tops[1]
    assert any("connected to" in line for line in lines)
    assert any("status  dsp-baseline on CPU" in line for line in lines)
    assert not any("╭" in line or "│" in line for line in lines)  # no screen drawing


def test_watch_json_lines() -> None:
    import json

    pub = Publisher()
    try:
        lines, early = _piped_watch(pub, "--json")
    finally:
        pub.close()
    assert early
    events = [json.loads(line) for line in lines]
    tops = [e["top"]["name"] for e in events if e["event"] == "match"]
    assert tops == ["kick 01.wav", "snare.wav"], events
    assert {e["event"] for e in events} >= {"connection", "match", "status"}


def test_one_restart_counts_once() -> None:
    pub = Publisher()
    try:
        with Subscriber(pub.endpoint, silence_s=5.0) as sub:
            sub.recv(timeout_s=0)
            pub.wait_subscribed()
            pub.send("status", status={"start_time": 5.0})
            for _ in range(3):
                pub.send("match", 0, **match_fields(["a.wav"]))
            for _ in range(4):
                next_data(sub)
            # A new daemon: its first match (seq 0) arrives before its first status.
            pub.send("match", 0, seq=0, **match_fields(["b.wav"]))
            pub.send("status", seq=0, status={"start_time": 6.0})
            pub.send("match", 0, **match_fields(["b.wav"]))
            events = []
            for _ in range(4):
                item = next_data(sub)
                if isinstance(item, ConnectionEvent):
                    events.append(item.state)
        assert events == ["restarted"] and sub.restarts == 1, (events, sub.restarts)
    finally:
        pub.close()


def test_stale_data_is_dimmed_with_its_age_and_the_restart_note_clears() -> None:
    from emberd.clients.watch import RESTART_NOTE_S

    pub = Publisher()
    state = WatchState(endpoint=pub.endpoint)
    try:
        with Subscriber(pub.endpoint, silence_s=5.0) as sub:
            sub.recv(timeout_s=0)
            pub.wait_subscribed()
            pub.send("match", 0, **match_fields(["kick 01.wav"]))
            item = next_data(sub)
            t0 = 1000.0
            state.update(item, now=t0)
    finally:
        pub.close()
    live = _screen_at(state, t0 + 1)
    assert "stale" not in live and "kick 01.wav" in live
    state.update(ConnectionEvent("silent", "no message"), now=t0 + 3)
    text = _screen_at(state, t0 + 12)
    assert "daemon silent — last message 12 s ago" in text and "stale: 12 s old" in text
    assert "kick 01.wav" in text  # still shown, labelled
    state.update(ConnectionEvent("restarted", "new daemon"), now=t0 + 20)
    assert "daemon restarted (1×)" in _screen_at(state, t0 + 21)
    after = _screen_at(state, t0 + 21 + RESTART_NOTE_S)
    assert "restarted" not in after and "connected to" in after


def _screen_at(state: WatchState, now: float) -> str:
    console = Console(record=True, width=110, color_system=None, force_terminal=False)
    console.print(render(state, now=now))
    return console.export_text()
