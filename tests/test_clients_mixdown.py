"""The mix-down OSC messages in Pure Data and SuperCollider, from a real running daemon.

One ``emberd run`` (a small library indexed with the fast model, so it has a class
head; a three-stem performance played in real time, looping) sends OSC to a Pd
port and an sclang port; the shipped ``mixdown.pd`` / ``mixdown.scd`` must print
classes, loudness and masking lines.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import require

PATCHES = Path(__file__).resolve().parents[1] / "emberd" / "clients" / "patches"
CLIENT_WAIT_S = 90.0  # sclang starts slowly on a busy 2-core machine
CLASSES = {"kick", "snare", "closed_hat", "pad", "none"}


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, int]]]:
    from emberd.testing import smalllib
    from emberd.testing.harness import Daemon

    base = tmp_path_factory.mktemp("mixdown-clients")
    smalllib.write_sounds(base / "samples", per_folder=3)
    lib = base / "lib"
    done = smalllib.index([base / "samples"], lib)
    assert done.returncode == 0, done.stderr
    perf = smalllib.write_performance(base / "perf.wav", seconds=6.0, channels=3)
    ports = {"pd": _udp_port(), "sclang": _udp_port()}
    args = [*smalllib.daemon_args(lib, perf), "--channels", "all", "--threads", "1"]
    for port in ports.values():
        args += ["--osc", f"127.0.0.1:{port}"]
    d = Daemon(args, base / "daemon.log").start()
    try:
        yield d, ports
    finally:
        d.stop()


def _lines(proc: subprocess.Popen[bytes]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def read(stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            q.put(raw.decode("utf-8", "replace").rstrip("\n"))

    assert proc.stdout is not None
    threading.Thread(target=read, args=(proc.stdout,), daemon=True).start()
    return q


def _collect(cmd: list[str], env: dict[str, str], want: dict[str, int]) -> dict[str, list[str]]:
    """Run ``cmd`` until it printed ``want[prefix]`` lines for every prefix."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env={**os.environ, **env},
                            start_new_session=True)  # fmt: skip
    got: dict[str, list[str]] = {p: [] for p in want}
    seen: list[str] = []
    q = _lines(proc)
    end = time.monotonic() + CLIENT_WAIT_S
    try:
        while any(len(got[p]) < n for p, n in want.items()):
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("not enough lines:\n" + "\n".join(seen[-30:]))
            try:
                line = q.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            seen.append(line)
            for p in want:
                if line.startswith(p):
                    got[p].append(line)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return got


def test_pd_patch_prints_class_loudness_and_masking(daemon: tuple[Any, dict[str, int]]) -> None:
    pd = shutil.which("pd") or shutil.which("puredata")
    require(pd is not None, "puredata (pd)")
    assert pd is not None
    got = _collect([pd, "-nogui", "-nosound", "-noprefs", "-stderr", "-send",
                    f"emberd-port {daemon[1]['pd']}", str(PATCHES / "mixdown.pd")], {},
                   {"emberd-class:": 6, "emberd-loudness:": 6, "emberd-masking:": 2})  # fmt: skip
    # "emberd-class: seq capture_ms publish_ms channel class confidence signal"
    fields = got["emberd-class:"][0].split()
    assert len(fields) == 8 and fields[4] in "012" and fields[5] in CLASSES
    loud = got["emberd-loudness:"][0].split()
    assert len(loud) > 11 and -121.0 <= float(loud[5]) <= 0.0  # momentary LUFS


def test_sclang_prints_class_loudness_and_masking(daemon: tuple[Any, dict[str, int]]) -> None:
    sclang = shutil.which("sclang")
    require(sclang is not None, "supercollider-language (sclang)")
    assert sclang is not None
    env = {"QT_QPA_PLATFORM": "offscreen", "QTWEBENGINE_DISABLE_SANDBOX": "1"}
    got = _collect([sclang, str(PATCHES / "mixdown.scd"), str(daemon[1]["sclang"])], env,
                   {"emberd class ch ": 6, "emberd loudness ch ": 6, "emberd masking ": 2})
    assert all(re.match(r"emberd class ch [012] (kick|snare|closed_hat|pad|none) [0-9.]+$", s)
               for s in got["emberd class ch "]), got["emberd class ch "][:3]  # fmt: skip
    assert re.match(r"emberd loudness ch [012] M -?[0-9.]+ S ", got["emberd loudness ch "][0])
