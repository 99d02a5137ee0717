"""``emberd demo``: builds its library once, plays the synthesised performance, exits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from emberd.daemon import sounds

DEMO_TIMEOUT_S = 600  # indexing the demo library on a busy 2-core machine


def _demo(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emberd", "demo", "--model", "dsp-baseline", "--duration", "4",
         "--zmq", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0"],
        env={**os.environ, "EMBERD_DATA_DIR": str(data_dir)},
        capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_demo_runs_and_caches_its_library(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "indexing the demo library" in first.stderr
    folders = set(sounds.FOLDERS.values())
    assert {p.name for p in (tmp_path / "demo" / "sounds").iterdir()} == folders
    m = re.search(r"emberd demo: (\d+) hops", first.stderr)
    assert m and int(m.group(1)) > 0, first.stderr[-2000:]
    # not a terminal: one line a second naming the best match, a demo one-shot
    best = re.findall(r"best (\w+) \d+\.wav", first.stdout)
    assert best and set(best) <= set(sounds.FOLDERS), first.stdout
    # The summary says what was shown: as many lines as stdout has, not the messages received.
    shown = re.search(r"(\d+) status lines shown", first.stderr)
    assert shown and int(shown.group(1)) == len(re.findall(r"^hops \d+ best", first.stdout,
                                                            re.M)), first.stderr
    assert "messages shown" not in first.stderr
    # Lines are never wrapped mid-phrase when not on a terminal (rich wraps at 80 columns).
    (zmq_line,) = [line for line in first.stderr.splitlines() if " PUB " in line]
    assert re.search(r"ZeroMQ +PUB tcp://127\.0\.0\.1:\d+; control tcp://127\.0\.0\.1:\d+$",
                     zmq_line), first.stderr
    assert re.search(r"OSC +out 127\.0\.0\.1:9000; control in off", first.stderr)
    second = _demo(tmp_path)  # cached: no second indexing
    assert second.returncode == 0, second.stderr[-3000:]
    assert "indexing the demo library" not in second.stderr


def test_demo_help_says_when_it_uses_the_network() -> None:
    text = subprocess.run([sys.executable, "-m", "emberd", "demo", "--help"],
                          capture_output=True, text=True, timeout=60).stdout
    flat = " ".join(text.split())
    assert "or network" not in flat and "first run" in flat and "pip download" in flat, flat


def test_one_shots_are_deterministic_and_distinct() -> None:
    a = sounds.one_shot("kick", 0)
    assert np.array_equal(a, sounds.one_shot("kick", 0))
    assert np.max(np.abs(a)) <= 1.0 and a.dtype == np.float32
    assert not np.array_equal(a[:1000], sounds.one_shot("kick", 1)[:1000])
    perf = sounds.performance(seconds=3.0)
    assert perf.shape == (3 * sounds.SR,) and np.max(np.abs(perf)) <= 1.0
