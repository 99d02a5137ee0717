"""Real capture: the daemon records a JACK server through sounddevice/PortAudio.

A private JACK server with the dummy backend (no hardware) runs under a unique name.
The daemon (``emberd run --input default``, a child process) opens PortAudio's JACK
device; this test plays library samples into the server with a JACK-Client player
(:class:`emberd.testing.harness.JackPlayer`) whose output port is connected to
PortAudio's input port, and checks that the daemon
publishes each sample as top-1 for audio captured within 1 s of the sample's onset.
The 1 s is measured on the audio's own capture timestamps, not on how fast the
machine answers.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from conftest import require

from emberd.clients import wire
from emberd.testing import smalllib
from emberd.testing.harness import (
    Daemon,
    JackPlayer,
    jack_available,
    start_jackd,
    stop_process,
    wait_for,
)

MODEL = smalllib.FAST_MODEL
ONSET_WINDOW_S = 1.0  # the sample must be top-1 for audio within this long after its onset
CLOCK_SLACK_S = 0.1  # JACK cycle vs. PortAudio ADC timestamp mapping
SETTLE_S = 2.5  # audio time after an onset before the next sample is played
RECV_TIMEOUT_MS = 30000
# A play that the machine disturbed (a player xrun, an input overflow, a hop the late
# worker skipped) and that missed is played again: the claim is about intact audio. Measured offline
# with this library: one 256-frame gap anywhere in kick_000's first 160 ms makes its
# sibling kick_001 top-1 of every window (CI failed so, once, 2026-12-02).
MAX_PLAYS = 4


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("jacklib")
    files = smalllib.write_sounds(root / "sounds", per_folder=3)
    lib = root / "lib"
    proc = smalllib.index([root / "sounds"], lib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return lib, files


def test_jack_capture_publishes_played_sample_as_top1(
    library: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    require(jack_available(), "jackd and jack_lsp (Debian jackd2)")
    try:
        import jack
    except (ImportError, OSError):  # pragma: no cover - JACK-Client is a dev dependency
        require(False, "JACK-Client with libjack")
        return
    import zmq

    lib, files = library
    server = f"emberd-test-{uuid.uuid4().hex[:8]}"
    jackd = start_jackd(server, rate=44100, period=256, log_path=tmp_path / "jackd.log")
    env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    ctx: Any = zmq.Context()
    player: JackPlayer | None = None
    daemon = Daemon(["--library", str(lib), "--model", MODEL, "--input", "default",
                     "--channels", "0", "--device", "cpu"],
                    tmp_path / "daemon.log", env=env, osc_in=False)  # fmt: skip
    try:
        daemon.start()
        # The control channel answers before the device is open: wait for its full name.
        wait_for(lambda: "JACK" in daemon.status()["input"], 30, what="the JACK device")
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        sub.setsockopt(zmq.SUBSCRIBE, b"match.0")
        sub.connect(daemon.pub)
        sub.recv_multipart()  # subscription live: hops are flowing
        player = JackPlayer(jack, server=server)
        connected = player.connect_capture()  # PortAudio's capture port(s)
        assert connected, [p.name for p in player.client.get_ports()]
        for pick in (0, 4, 9):  # a kick, a snare, a pad
            sample = files[pick]
            data, sr = sf.read(sample, dtype="float32")
            assert sr == 44100
            tries: list[tuple[dict[str, int], list[str]]] = []
            for _ in range(MAX_PLAYS):
                before = _disturbances(daemon, player)
                tops = _play_and_collect(player, sub, data)
                disturbed = {k: v - before[k] for k, v in _disturbances(daemon, player).items()
                             if v != before[k]}  # fmt: skip
                names = sorted({Path(p).name for p in tops})
                tries.append((disturbed, names))
                if sample.name in names or not disturbed:
                    break
            assert tops, f"no hop captured within {ONSET_WINDOW_S} s of the onset"
            assert sample.name in names, (sample.name, tries)
        status = daemon.status()
        assert status["hops"] > 0 and status["callback_interval_ms"] > 0
        sub.close(0)
    finally:
        if player is not None:
            player.close()
        rc = daemon.stop()
        ctx.destroy(linger=0)
        stop_process(jackd, signal.SIGTERM)  # SIGTERM: jackd removes its shared memory
        if jackd.poll() is None:
            stop_process(jackd)
    assert rc == 0, daemon.log_tail()


def _disturbances(daemon: Daemon, player: JackPlayer) -> dict[str, int]:
    """Counters that say a play did not reach the daemon's matches intact."""
    status = daemon.status()
    return {"player_xruns": player.xruns, "overflows": int(status["overflows"]),
            "dropped_hops": int(status["dropped_hops"])}  # fmt: skip


def _play_and_collect(player: JackPlayer, sub: Any, data: Any) -> list[str]:
    """Play ``data`` once; the top-1 paths of hops captured near its onset."""
    player.play(data)
    assert player.played.wait(30), "the JACK player did not run"
    onset = player.onset_time
    assert onset is not None
    tops: list[str] = []
    while True:
        msg = wire.decode(sub.recv_multipart())
        t = msg.capture_time
        if onset - CLOCK_SLACK_S <= t <= onset + ONSET_WINDOW_S and msg.header["matches"]:
            tops.append(msg.header["matches"][0]["path"])
        if t > onset + SETTLE_S:
            return tops
