"""Device capture in a child process (emberd/daemon/capture_child.py): framing, and isolation.

* The child's callback frames every block into one message and never blocks: a full
  pipe drops the block (counted), a partial write (a message longer than PIPE_BUF) is
  finished first next time, so the stream stays framed. Driven on a real pipe shrunk to
  one page, with 4-channel blocks (4128-byte messages).
* Isolation, on a private JACK dummy server: a thread of this (the daemon's) process
  holds the GIL for a long stretch. With capture in a child, blocks keep arriving
  during it (the longest gap between callbacks stays under half the hold) and none is
  lost; with the callback in this process (``capture="thread"``), the same hold stops
  the callback for all of it -- which shows the hold really holds the GIL, and that the
  first assertion can fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import require

from emberd.daemon.capture_child import F_SETPIPE_SZ, _Capture, message_bytes, parse_message
from emberd.testing.harness import jack_available, start_jackd, stop_process

BLOCK = 256
CHANNELS = 4
PAGE_BYTES = 4096
HOLD_TARGET_S = 0.6  # GIL hold: ~100 JACK periods of 5.8 ms, well within the pipe (5.9 s)


def _block(i: int) -> np.ndarray:
    return np.full((BLOCK, CHANNELS), float(i), dtype=np.float32)


def _read_messages(r: int, pending: bytes, size: int, got: list[tuple[float, int, int]]) -> bytes:
    """Read what the pipe holds; append ``(block value, overflows, dropped)`` per message."""
    try:
        pending += os.read(r, 1 << 16)
    except BlockingIOError:
        return pending
    while len(pending) >= size:
        head, samples = parse_message(pending[:size], BLOCK, CHANNELS)
        assert np.all(samples == samples[0, 0]), "a message mixes two blocks"
        got.append((float(samples[0, 0]), int(head["overflows"]), int(head["dropped"])))
        pending = pending[size:]
    return pending


def test_partial_writes_stay_framed_and_full_pipe_drops_are_counted() -> None:
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PAGE_BYTES)  # one page: every message straddles it
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        cap = _Capture(w, BLOCK, CHANNELS)
        size = message_bytes(BLOCK, CHANNELS)
        assert size > PAGE_BYTES
        got: list[tuple[float, int, int]] = []
        pending = b""
        sent = 40
        for i in range(sent):
            flag = SimpleNamespace(input_overflow=i % 7 == 0)
            cap.callback(_block(i), BLOCK, None, flag)
            if i % 3 == 2:  # the reader is late: it reads only after every third block
                pending = _read_messages(r, pending, size, got)
        while cap.spill_off < cap.spill_len or pending:  # drain: the rest of the last message
            with contextlib.suppress(BlockingIOError):
                cap._flush_spill()
            before = len(pending)
            pending = _read_messages(r, pending, size, got)
            if len(pending) == before and cap.spill_off >= cap.spill_len:
                break
        assert pending == b""
        values = [g[0] for g in got]
        assert values == sorted(set(values)), "blocks out of order or repeated"
        assert cap.dropped > 0, "the one-page pipe never filled: nothing tested"
        assert len(got) == sent - cap.dropped  # every block is either delivered or counted
        assert cap.overflows == len(range(0, sent, 7))
        assert [g[2] for g in got] == sorted(g[2] for g in got) and got[-1][2] <= cap.dropped
    finally:
        os.close(r)
        os.close(w)


ISOLATION_SCRIPT = """
import json, os, random, sys, time
from emberd.daemon.device import DeviceInput
capture, target = sys.argv[1], float(sys.argv[2])
d = DeviceInput(None, sr=44100, channels=1, block_size=256, capture=capture)
d.start()
status = d.watchdog.describe()
ppid = None
if status["capture_pid"] is not None:
    with open(f"/proc/{status['capture_pid']}/status") as f:
        ppid = int(next(x for x in f if x.startswith("PPid:")).split()[1])
def wait(cond):
    deadline = time.monotonic() + 30
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
wait(lambda: d.callbacks > 50)
d.clock.new_intervals()  # from here on
n = 200_000
while True:  # hold the GIL (list.sort never releases it) for at least `target` seconds
    xs = [random.random() for _ in range(n)]
    t0 = time.perf_counter()
    sorted(xs)
    held = time.perf_counter() - t0
    if held >= target:
        break
    n = int(n * min(8.0, 1.2 * target / max(held, 1e-3)))
    d.clock.new_intervals()
k = d.callbacks
wait(lambda: d.callbacks > k + 20)
print(json.dumps({"pid": os.getpid(), "capture_pid": status["capture_pid"],
                  "capture": status["capture"], "capture_ppid": ppid, "held": held,
                  "longest": float(d.clock.new_intervals().max()),
                  "dropped": d.watchdog.dropped_blocks}), flush=True)
d.stop()
os._exit(0)  # skip PortAudio's exit handler (it can abort on JACK)
"""


@pytest.mark.parametrize("capture", ["process", "thread"])
def test_a_gil_hold_in_the_daemon_does_not_stop_the_child_callback(
    capture: str, tmp_path: Path
) -> None:
    require(jack_available(), "jackd (Debian jackd2)")
    server = f"emberd-cap-{uuid.uuid4().hex[:8]}"
    jackd = start_jackd(server, capture_ports=1, log_path=tmp_path / "jackd.log")
    env = {**os.environ, "JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", ISOLATION_SCRIPT, capture,
                              str(HOLD_TARGET_S)], env=env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    finally:
        stop_process(jackd, signal.SIGTERM)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["capture"] == capture
    if capture == "process":  # the callback really runs in a child of the daemon
        pid = r["capture_pid"]
        assert pid is not None and pid != r["pid"] and r["capture_ppid"] == r["pid"]
        assert r["longest"] < r["held"] / 2, r  # blocks kept coming during the hold
        assert r["dropped"] == 0, r  # and the pipe held them until the reader came back
    else:  # the same hold stops an in-process callback: the check above can fail
        assert r["capture_pid"] is None
        assert r["longest"] > r["held"] / 2, r
