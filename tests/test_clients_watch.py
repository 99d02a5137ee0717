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
