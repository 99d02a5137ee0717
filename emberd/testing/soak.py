"""Session soak: the real set-up at once, for a long time; overflows, drops, leaks, accuracy.

The set-up (everything a producer's session runs):

* a private JACK server (dummy backend, 44.1 kHz, 256-frame periods, ``--channels``
  capture ports) and a JACK player (:class:`emberd.testing.harness.PlayerProcess`, a
  child process) looping a 4-channel hydrogen-drumkits performance into every
  capture port: kicks on channel 0, snares and claps on 1, hats and cymbals on 2,
  toms and percussion on 3; every hit a library sample at -12..0 dB over a
  -60 dBFS noise floor; the truth (channel, onset, file) is known;
* ``emberd run`` on that JACK capture (``--channels all``, aiSFX by default, hits on),
  publishing over OSC (2 targets that read and count datagrams), ZeroMQ (a subscriber
  recording hits and counting sequence gaps) and JACK MIDI (``--midi`` to a recorder
  in the player's process);
* ``emberd watch --json`` and ``emberd panel`` (headless Chromium showing it) connected;
* a control client issuing ``set_k`` / ``capture`` / ``reload`` in turn every
  CONTROL_PERIOD_S, and a fuzzer sending malformed OSC control datagrams at
  ``--fuzz-rate`` messages/s (:func:`emberd.testing.fuzzdrive.fuzz_osc`);
* the anchor, A/B in the same run: a bare capture client
  (:class:`emberd.testing.harness.BareCapture`) on the same server and the same
  ports for the whole run, doing nothing but draining its ring.

Reported: overflows (daemon's PortAudio-flagged and ring overflows vs the anchor's),
dropped hops (share of hops), drops per output (daemon status), sequence gaps seen by
the subscriber, MIDI notes sent vs received, OSC datagrams received, control replies,
fuzzer accounting, RSS and open fds of the daemon over time (sampled every
``--sample-s``; growth = median of the last minute minus median of the first minute
after warm-up), hit accuracy (detected share of the played hits; provisional and
final top-1 naming the played file) in the first and last ``--window-s`` seconds,
and the load average over the run. Goals (issue 17): overflows not above the
anchor, dropped hops <= 0.1 %, RSS growth <= 10 MiB, no fd growth, hit accuracy
unchanged.

:func:`run` is driven by ``bench/soak.py`` (30 minutes, aiSFX) and by
``tests/test_soak.py`` (about a minute, the DSP baseline).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emberd.testing import fuzzdrive
from emberd.testing.benchkit import MIB
from emberd.testing.harness import (
    BareCapture,
    Daemon,
    PlayerProcess,
    chromium_available,
    chromium_driver,
    jack_available,
    start_jackd,
    stop_process,
    wait_for,
)

KITS = Path("/usr/share/hydrogen/data/drumkits")
LIBRARY_KITS = ("HardElectro1", "ElectricEmpireKit", "Audiophob")
STEMS = (("kick",), ("snare", "clap"), ("closed_hat", "open_hat", "cymbal"),
         ("tom", "percussion"))  # fmt: skip
SR = 44100  # Hz: the JACK server's and the daemon's rate
# 1024 frames (23.2 ms, one aiSFX hop): with 256 the Python JACK clients (player, MIDI
# recorder, PortAudio's in two processes) missed most cycles on a loaded 2-core box
# (8,844 xruns in 80 s), and the server ran at 0.73x real time.
PERIOD_FRAMES = 1024
NOISE_DBFS = -60.0
PEAK_DBFS = -1.0
GAIN_DB = (-12.0, 0.0)
GAP_S = (0.6, 1.6)  # onset-to-onset per channel, log-uniform
MAX_SAMPLE_S = 1.0  # samples are cut here (30 ms fade)
FADE_S = 0.03
MATCH_TOLERANCE_S = 0.025  # a hit this close to a played onset is that onset
ALIGN_SPAN_S = 2.0  # stream seconds either side whose detections vote a detection's offset
ONSET_KEY_HZ = 1_000_000  # onset_s rounded to a microsecond: one detection's key
MIN_VOTES = 3  # other detections that must agree on an offset before one is paired
OSC_TARGETS = 2
CONTROL_PERIOD_S = 3.0  # one control request (set_k, capture, reload in turn) this often
WARMUP_S = 20.0  # after the player starts: excluded from windows and baselines
STATUS_TIMEOUT_S = 30.0  # a status answer on a starved box (the run is not about its speed)
BASELINE_S = 60.0  # RSS / fd baseline: median of the first minute after warm-up, and the last


class OscCounter:
    """A UDP socket that reads and counts datagrams (a live OSC target)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(65536)
                self.count += 1
            except OSError:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Subscriber:
    """ZeroMQ SUB to everything: messages per kind, sequence gaps, hit headers."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.kinds: Counter[str] = Counter()
        self.gaps = 0
        # channel, hit, stage, arrival (Unix s), onset_s (stream s), top-1 path
        self.hits: list[tuple[int, int, str, float, float, str | None]] = []
        self._last: dict[bytes, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sub", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        ctx: Any = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100000)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(200):
                    continue
                frames = sock.recv_multipart()
                with contextlib.suppress(Exception):
                    h = json.loads(frames[1])
                    kind = str(h.get("kind"))
                    self.kinds[kind] += 1
                    seq = int(h["seq"])
                    last = self._last.get(frames[0])
                    if last is not None and seq > last + 1:
                        self.gaps += seq - last - 1
                    self._last[frames[0]] = seq
                    if kind == "hit":
                        top = h["matches"][0].get("path") if h["matches"] else None
                        self.hits.append((int(h["channel"]), int(h["hit"]), str(h["stage"]),
                                          time.time(), float(h["onset_s"]), top))  # fmt: skip
        finally:
            sock.close(0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------------- library, performance


def build_library(model: str, kits: tuple[str, ...]) -> Path:
    """Index ``kits`` into a cached library (incremental: unchanged files are skipped)."""
    from emberd.library.indexer import Indexer

    path = Path(tempfile.gettempdir()) / "emberd-soak-cache" / f"{model}-{len(kits)}kits"
    Indexer(path, model, jobs=1).run([str(KITS / k) for k in kits])
    return path


def performance(
    kits: tuple[str, ...], channels: int, loop_s: float, seed: int
) -> tuple[np.ndarray, list[tuple[int, float, str]]]:
    """The looped performance ``[frames, channels]`` at SR and its truth (channel, onset s,
    path). No sample crosses the loop's end, so the loop repeats without a seam."""
    from emberd.dsp.sources import load_audio
    from emberd.library import classes, waveform

    labelled = [(str(p), c) for k in kits for p, c in sorted(classes.hydrogen_classes(KITS / k)
                                                              .items())]  # fmt: skip
    rng = np.random.default_rng(seed)
    n = int(loop_s * SR)
    audio = (rng.standard_normal((n, channels)) * 10 ** (NOISE_DBFS / 20)).astype(np.float32)
    cache: dict[str, np.ndarray] = {}
    truth: list[tuple[int, float, str]] = []
    for ch in range(channels):
        want = STEMS[ch % len(STEMS)]
        pool = [p for p, c in labelled if c in want] or [p for p, c in labelled if c != "loop"]
        t = 0.3 + 0.1 * ch  # channels offset: onsets do not share a block
        while t + MAX_SAMPLE_S < loop_s - 0.1:
            path = pool[int(rng.integers(len(pool)))]
            if path not in cache:
                y, _ = load_audio(path, sr=SR)
                y = np.asarray(y, np.float32)[: int(MAX_SAMPLE_S * SR)].copy()
                fade = min(len(y), int(FADE_S * SR))
                y[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
                cache[path] = y / max(float(np.abs(y).max()), 1e-9) * np.float32(
                    10 ** (PEAK_DBFS / 20))  # fmt: skip
            y = cache[path] * np.float32(10 ** (rng.uniform(*GAIN_DB) / 20))
            a = int(t * SR)
            audio[a : a + len(y), ch] += y
            truth.append((ch, (a + waveform.onset_sample(y)) / SR, path))
            t += float(np.exp(rng.uniform(np.log(GAP_S[0]), np.log(GAP_S[1]))))
    return audio, truth


def accuracy(
    hits: list[tuple[int, int, str, float, float, str | None]],
    truth: list[tuple[int, float, str]], t0: float, t1: float, loop_s: float,
    clock: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Hits received in the Unix-time window ``[t0, t1]`` against the played truth.

    A detection is one ``(channel, onset_s)``: every stage of a hit carries the same
    onset, while hit numbers restart with each ladder a ``reload`` builds (keyed by
    number, the stages of different hits merged and most hits vanished: 71 of 322
    detections left in a minute with a reload every 9 s). Its place in the loop is its
    ``onset_s`` (the daemon's stream clock, in samples) modulo the loop, less the offset
    between the daemon's stream and the player's loop. That offset drifts: every JACK
    cycle the daemon or the player misses moves one clock against the other (0.85 s in
    110 s at load 5-10), so it is found for each detection from its neighbours on the
    stream clock (within ALIGN_SPAN_S, itself left out: alone, any detection would pair
    with the onset its own offset names): the offset that pairs the most of them with
    played onsets (within MATCH_TOLERANCE_S), then the median residual of those pairs,
    then the median of the neighbours' offsets (a vote the extra detections won), kept
    continuous along the stream. A detection whose neighbours agree on no offset (fewer
    than MIN_VOTES) is an extra.
    A played onset pairs with one detection at most (a double trigger is an extra).
    Played onsets in the window: with ``clock`` (the player's ``(unix, played_s)``
    samples), those the player played in the window, moved back by the median delay from
    a paired onset's playing to its detection's arrival; a daemon that stops detecting
    half-way through is then seen. Without it, those of the loop between the window's
    first and its last detection, on the loop's clock (the window's wall time would
    overstate them when the server runs slow: 50 s of stream in 73 s at load 15).

    Returned: ``played``, ``detections``, ``paired``, ``detected`` (paired / played),
    ``extra`` (detections not paired), ``provisional_top1`` / ``final_top1`` (of the
    paired hits with that stage, the top match is the played file), ``answered`` and
    ``drift_s`` (largest minus smallest offset in the window: the clocks' slip) and
    ``stream_per_wall_s`` (stream seconds the detections span per second of the window:
    below 1, the JACK server ran slow or the daemon lost cycles).
    """
    stages_of: dict[tuple[int, int], dict[str, str | None]] = {}
    first_arrival: dict[tuple[int, int], float] = {}
    for ch, _hit, stage, arrival, onset_s, top in hits:
        if t0 <= arrival <= t1:
            key = (ch, round(onset_s * ONSET_KEY_HZ))
            stages_of.setdefault(key, {}).setdefault(stage, top)
            first_arrival[key] = min(arrival, first_arrival.get(key, arrival))
    clock_t = np.array([c[0] for c in clock or []])
    clock_p = np.array([c[1] for c in clock or []])

    def played_at(unix: float) -> float:  # the player's clock at a Unix time
        return float(np.interp(unix, clock_t, clock_p))
    onsets = {c: np.array(sorted(o for cc, o, _ in truth if cc == c)) for c, _, _ in truth}
    path_of = {(c, round(o, 6)): p for c, o, p in truth}
    keys = sorted((k for k in stages_of if k[0] in onsets), key=lambda k: (k[1], k[0]))
    dets = [(k[1] / ONSET_KEY_HZ, k[0], stages_of[k]) for k in keys]
    arrivals = [first_arrival[k] for k in keys]
    at = np.array([d[0] for d in dets])

    def wrap(x: np.ndarray) -> np.ndarray:
        return (x + loop_s / 2) % loop_s - loop_s / 2

    # every detection's candidate offsets: its loop position minus each played onset
    cands = [(pos - onsets[ch]) % loop_s for pos, ch, _ in dets]
    shifts = np.zeros(len(dets))
    aligned = np.zeros(len(dets), bool)
    for i in range(len(dets)):
        lo, hi = np.searchsorted(at, [at[i] - ALIGN_SPAN_S, at[i] + ALIGN_SPAN_S])
        others = [cands[j] for j in range(lo, hi) if j != i]
        if not others:
            continue
        cand = np.concatenate(others)
        bins = np.floor(cand / MATCH_TOLERANCE_S).astype(int)
        counts = np.bincount(bins)
        counts = counts + np.roll(counts, -1)  # a cluster straddling two bins
        if counts.max() < MIN_VOTES:
            continue
        best = (int(np.argmax(counts)) + 0.5) * MATCH_TOLERANCE_S
        near = wrap(cand - best)
        near = near[np.abs(near) <= 1.5 * MATCH_TOLERANCE_S]
        shifts[i], aligned[i] = best + float(np.median(near)), True
    # a neighbourhood the extra detections outvoted: the median of its neighbours' offsets
    voted = shifts.copy()
    for i in np.flatnonzero(aligned).tolist():
        lo, hi = np.searchsorted(at, [at[i] - ALIGN_SPAN_S, at[i] + ALIGN_SPAN_S])
        near = voted[lo:hi][aligned[lo:hi]]
        shifts[i] = voted[i] + float(np.median(wrap(near - voted[i])))
    # continuous along the stream: an offset slipping past 0 must not renumber the loop
    # passes (the played onsets of one pass were taken twice, the next pass's never)
    if aligned.any():
        shifts[aligned] = np.unwrap(shifts[aligned], period=loop_s)
    paired = 0
    taken: set[tuple[int, int, int]] = set()  # (channel, loop pass, onset index)
    right: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    delays: list[float] = []  # player's clock at arrival minus the paired onset's playing
    for (pos, ch, stages), shift, ok, arrival in zip(dets, shifts, aligned, arrivals,
                                                      strict=True):  # fmt: skip
        if not ok:
            continue
        d = wrap(onsets[ch] - (pos - shift) % loop_s)
        j = int(np.argmin(np.abs(d)))
        onset = (ch, int(np.floor((pos - shift + d[j]) / loop_s + 1e-9)), j)
        if abs(d[j]) > MATCH_TOLERANCE_S or onset in taken:
            continue
        taken.add(onset)
        paired += 1
        if clock:
            delays.append(float(wrap(np.asarray(played_at(arrival) - onsets[ch][j]))))
        played = path_of[(ch, round(float(onsets[ch][j]), 6))]
        for stage in ("provisional", "final"):
            if stage in stages:
                answered[stage] += 1
                right[stage] += stages[stage] == played
    expected = (t1 - t0) / loop_s * len(truth)  # no detection: the window's wall time
    stream_s = float(at[-1] - at[0]) if len(dets) > 1 else float("nan")
    o = np.concatenate(list(onsets.values()))
    if clock:  # the onsets the player played in the window (less the detection delay)
        delay = float(np.median(delays)) if delays else 0.0
        lo, hi = played_at(t0) - delay, played_at(t1) - delay
        expected = float(np.sum(np.floor((hi - o) / loop_s) - np.ceil((lo - o) / loop_s) + 1))
    elif len(dets) > 1:  # the played onsets between the first and the last detection
        lo = float(at[0] - shifts[0])
        hi = lo + stream_s - float(shifts[-1] - shifts[0]) + MATCH_TOLERANCE_S
        lo -= MATCH_TOLERANCE_S  # the first and last detections' own onsets are in
        counted = float(np.sum(np.floor((hi - o) / loop_s) - np.ceil((lo - o) / loop_s) + 1))
        expected = counted if counted > 0 else expected  # no offset fits: drift_s says so
    drift = shifts if len(dets) else np.zeros(1)
    return {
        "played": round(expected), "detections": len(dets), "paired": paired,
        "detected": round(paired / expected, 4) if expected else float("nan"),
        "extra": len(dets) - paired,
        "provisional_top1": round(right["provisional"] / max(answered["provisional"], 1), 4),
        "final_top1": round(right["final"] / max(answered["final"], 1), 4),
        "answered": dict(answered),
        "drift_s": round(float(drift.max() - drift.min()), 3),
        "stream_per_wall_s": round(stream_s / (t1 - t0), 3),
    }  # fmt: skip


# ---------------------------------------------------------------------- load generators


class ControlClient(threading.Thread):
    """set_k / capture / reload in turn, one every CONTROL_PERIOD_S; replies counted."""

    def __init__(self, daemon: Daemon, period: float) -> None:
        super().__init__(name="soak-control", daemon=True)
        self.d = daemon
        self.period = period
        self.replies: Counter[str] = Counter()  # "<cmd> ok" / "<cmd> error: ..."
        # (monotonic s at the request, command, ms to its reply): a reload answered by
        # the analysis thread shows how long it held the hops back
        self.timeline: list[tuple[float, str, float]] = []
        self.stop_event = threading.Event()

    def reply_ms(self) -> dict[str, dict[str, float]]:
        """Per command: p50 and max milliseconds from request to reply."""
        by: dict[str, list[float]] = {}
        for _t, cmd, ms in self.timeline:
            by.setdefault(cmd, []).append(ms)
        return {cmd: {"p50": round(float(np.median(v)), 1), "max": round(max(v), 1)}
                for cmd, v in by.items()}  # fmt: skip

    def run(self) -> None:
        cmds: list[tuple[str, dict[str, Any]]] = [
            ("set_k", {"k": 4}), ("capture", {"seconds": 1.0, "channel": 0}), ("reload", {}),
            ("set_k", {"k": 5}), ("capture", {"seconds": 1.0, "channel": 1}), ("reload", {}),
        ]  # fmt: skip
        i = 0
        while not self.stop_event.wait(self.period):
            cmd, args = cmds[i % len(cmds)]
            i += 1
            t0 = time.monotonic()
            try:
                reply = self.d.request(cmd, timeout=20.0, **args)
                err = reply.get("error")
                key = f"{cmd} ok" if reply.get("ok") else f"{cmd} error: {str(err)[:40]}"
            except TimeoutError:
                key = f"{cmd} no reply"
            self.timeline.append((t0, cmd, round((time.monotonic() - t0) * 1000.0, 1)))
            self.replies[key] += 1


class Fuzzer(threading.Thread):
    """Malformed OSC control datagrams at ``rate``/s until stopped, in accounted chunks.

    Each chunk is :func:`emberd.testing.fuzzdrive.fuzz_osc` (sent = counted + kernel
    drops); a chunk that fails (a status poll unanswered on a loaded box) is counted in
    ``failed_chunks`` with its error, and the next one starts.
    """

    CHUNK_S = 10.0

    def __init__(self, daemon: Daemon, rate: float) -> None:
        super().__init__(name="soak-fuzz", daemon=True)
        self.d = daemon
        self.rate = rate
        self.sent = self.counted = self.kernel_drops = 0
        self.failed_chunks = 0
        self.errors: Counter[str] = Counter()
        self.stop_event = threading.Event()
        self.t0 = self.t1 = 0.0

    def run(self) -> None:
        seed = 17
        self.t0 = time.monotonic()
        while not self.stop_event.is_set():
            seed += 1
            try:
                r = fuzzdrive.fuzz_osc(self.d, int(self.rate * self.CHUNK_S), seed=seed,
                                       rate=self.rate)  # fmt: skip
            except Exception as exc:  # reported, never fatal to the soak
                self.failed_chunks += 1
                self.errors[f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"] += 1
                continue
            self.sent += r.sent
            self.counted += r.counted
            self.kernel_drops += r.kernel_drops
        self.t1 = time.monotonic()


def start_client(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "emberd", *args], stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its threads included)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def proc_sample(pid: int) -> tuple[int, int]:
    import psutil

    p = psutil.Process(pid)
    return int(p.memory_info().rss), int(p.num_fds())


class ProcSampler(threading.Thread):
    """RSS and open fds of named processes every ``period`` s (its own thread, so a slow
    status answer on a starved box never thins the samples)."""

    def __init__(self, pids: dict[str, int], period: float, t0: float) -> None:
        super().__init__(name="soak-proc", daemon=True)
        self.pids = pids
        self.period = period
        self.t0 = t0
        self.samples: dict[str, list[tuple[float, int, int]]] = {n: [] for n in pids}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            now = round(time.monotonic() - self.t0, 2)
            for name, pid in self.pids.items():
                with contextlib.suppress(Exception):  # a process that ended: no sample
                    self.samples[name].append((now, *proc_sample(pid)))
            self.stop_event.wait(self.period)

    def series(self, name: str, field: int) -> list[tuple[float, int]]:
        """``(t, rss)`` (field 1) or ``(t, fds)`` (field 2) of process ``name``."""
        return [(x[0], int(x[field])) for x in self.samples[name]]


def growth(samples: list[tuple[float, int]], t0: float, t1: float, *, floor: bool = False) -> float:
    """Median in the last BASELINE_S of ``[t0, t1]`` minus median in its first BASELINE_S
    (a quarter of the span each when the span is shorter than 4 x BASELINE_S); with
    ``floor``, the minimum of each instead of the median (for fd counts)."""
    base = min(BASELINE_S, (t1 - t0) / 4)
    head = [v for t, v in samples if t0 <= t <= t0 + base]
    tail = [v for t, v in samples if t1 - base <= t <= t1]
    if not head or not tail:
        return float("nan")
    if floor:  # the lowest value: transients (a connection, a file open) leave it alone
        return float(min(tail) - min(head))
    return float(np.median(tail) - np.median(head))


# ---------------------------------------------------------------------- the run


def missing_component() -> str | None:
    if not jack_available():
        return "jackd and jack_lsp (Debian jackd2)"
    try:
        import jack  # noqa: F401
    except (ImportError, OSError):
        return "JACK-Client with libjack"
    if not chromium_available():
        return "chromium and chromedriver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium"
    if not KITS.is_dir():
        return f"hydrogen-drumkits ({KITS})"
    return None


@dataclass
class SoakConfig:
    """One soak run (see the module docstring); durations in seconds."""

    duration: float = 1800.0
    model: str = "aisfx"
    channels: int = 4
    loop_s: float = 30.0
    window_s: float = 300.0
    sample_s: float = 10.0
    fuzz_rate: float = 300.0
    control_s: float = CONTROL_PERIOD_S
    period: int = PERIOD_FRAMES
    warmup_s: float = WARMUP_S
    seed: int = 0
    threads: int | None = None  # the daemon's --threads (None: its default)
    work: Path | None = None
    progress: Callable[[str], None] | None = None


def run(cfg: SoakConfig) -> dict[str, Any]:
    """Run the soak; the results (``ok``: the daemon survived, exited 0, and every client
    stayed connected). Raise on a set-up failure; :func:`missing_component` first."""
    say = cfg.progress or (lambda line: None)
    work = cfg.work or Path(tempfile.mkdtemp(prefix="emberd-soak-"))
    say(f"soak: work folder {work}")
    t_build = time.monotonic()
    lib = build_library(cfg.model, LIBRARY_KITS)
    audio, truth = performance(LIBRARY_KITS, cfg.channels, cfg.loop_s, cfg.seed)
    import soundfile as sf

    wav = work / "performance.wav"
    sf.write(wav, audio, SR, subtype="FLOAT")
    say(f"soak: library {lib} and a {cfg.loop_s:g} s x {cfg.channels} ch loop with "
        f"{len(truth)} hits ready in {time.monotonic() - t_build:.0f} s")

    server = f"emberd-soak-{uuid.uuid4().hex[:6]}"
    env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    jackd = start_jackd(server, rate=SR, period=cfg.period, capture_ports=cfg.channels,
                        real_time=True, log_path=work / "jackd.log")  # fmt: skip
    player: PlayerProcess | None = None
    anchor: BareCapture | None = None
    daemon: Daemon | None = None
    clients: dict[str, subprocess.Popen[bytes]] = {}
    driver: Any = None
    sub: Subscriber | None = None
    targets: list[OscCounter] = []
    control: ControlClient | None = None
    fuzzer: Fuzzer | None = None
    samples: list[dict[str, Any]] = []
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "model": cfg.model, "channels": cfg.channels, "loop_s": cfg.loop_s,
        "hits_per_loop": len(truth), "fuzz_rate": cfg.fuzz_rate, "period": cfg.period,
        "threads": cfg.threads,
    }  # fmt: skip
    ok = True
    try:
        player = PlayerProcess(server, wav, loop=True)
        anchor = BareCapture(server, cfg.channels, period=cfg.sample_s)
        targets = [OscCounter() for _ in range(OSC_TARGETS)]
        osc = [a for t in targets for a in ("--osc", f"127.0.0.1:{t.port}")]
        daemon = Daemon(["--library", str(lib), "--model", cfg.model, "--input", "default",
                         "--channels", "all", "--device", "cpu", "--k", "5",
                         "--midi", player.midi_port, *osc,
                         *(["--threads", str(cfg.threads)] if cfg.threads else [])],
                        work / "daemon.log", env=env)  # fmt: skip
        daemon.start(ready_timeout=300)
        d = daemon
        wait_for(lambda: "JACK" in str((d.try_status(STATUS_TIMEOUT_S) or {}).get("input", "")),
                 120, what="the JACK device")  # fmt: skip
        sub = Subscriber(daemon.pub)
        clients["watch"] = start_client(["watch", "--zmq", daemon.pub, "--control",
                                         daemon.control_endpoint, "--json"], work / "watch.log")
        clients["panel"] = start_client(["panel", "--port", "0", "--zmq", daemon.pub,
                                         "--control", daemon.control_endpoint, "--library",
                                         str(lib)], work / "panel.log")  # fmt: skip

        def panel_url() -> str | None:
            m = re.search(r"open (http://\S+)", (work / "panel.log").read_text("utf-8", "replace"))
            if clients["panel"].poll() is not None:
                raise RuntimeError(f"panel exited: {(work / 'panel.log').read_text()[-2000:]}")
            return m.group(1) if m else None

        url = wait_for(panel_url, 120, what="the panel's URL")
        driver = chromium_driver(work / "chromium")
        driver.get(url)
        play = player.go()
        results["player_ports"] = len(play["ports"])
        say(f"soak: playing into {len(play['ports'])} capture ports; warm-up {cfg.warmup_s:g} "
            f"s, then {cfg.duration:g} s")
        control = ControlClient(daemon, cfg.control_s)
        control.start()
        fuzzer = Fuzzer(daemon, cfg.fuzz_rate)
        fuzzer.start()
        time.sleep(cfg.warmup_s)
        t0_unix, t0 = time.time(), time.monotonic()
        procs = ProcSampler({"daemon": daemon.pid, **{n: p.pid for n, p in clients.items()}},
                            min(cfg.sample_s, 2.0), t0)  # fmt: skip
        procs.start()
        st0 = daemon.status(STATUS_TIMEOUT_S)
        a0 = anchor.overflows()
        cpu0 = cpu_seconds(daemon.pid)
        clock: list[tuple[float, float]] = []  # (Unix time, player's played_s): its clock

        def read_clock() -> dict[str, Any]:
            rep = player.report()
            clock.append((float(rep["unix"]), float(rep["played_s"])))
            return rep

        read_clock()
        end = t0 + cfg.duration
        next_print = t0
        while (now := time.monotonic()) < end:
            if not daemon.alive():
                break
            rss, fds = proc_sample(daemon.pid)
            read_clock()
            st = daemon.try_status(timeout=STATUS_TIMEOUT_S) or {}
            page = None
            with contextlib.suppress(Exception):
                page = driver.execute_script(
                    "const s = window.emberdState; return [s.matchMessages, s.connState]")
            samples.append({
                "t": round(now - t0, 1), "rss": rss, "fds": fds, "load1": os.getloadavg()[0],
                "hops": st.get("hops"), "overflows": st.get("overflows"),
                "dropped_hops": st.get("dropped_hops"), "skipped_hops": st.get("skipped_hops"),
                "reload_ms": st.get("reload_ms"), "hit_index_builds": st.get("hit_index_builds"),
                "anchor_overflows": anchor.overflows(),
                "outputs_dropped": {k: v.get("dropped") for k, v in
                                    (st.get("outputs") or {}).items()},
                "panel": page,
            })  # fmt: skip
            if now >= next_print:
                next_print += 60.0
                s = samples[-1]
                say(f"  {s['t']:6.0f} s  hops {s['hops']}  overflows {s['overflows']} "
                    f"(anchor {s['anchor_overflows']})  dropped {s['dropped_hops']}  rss "
                    f"{rss / MIB:.1f} MiB  fds {fds}  load {s['load1']:.1f}  panel {page}")
            time.sleep(max(0.0, min(cfg.sample_s, end - time.monotonic())))
        t1, t1_unix = time.monotonic(), time.time()
        procs.stop_event.set()
        procs.join(10)
        control.stop_event.set()
        fuzzer.stop_event.set()
        control.join(30)
        fuzzer.join(60)
        cpu1 = cpu_seconds(daemon.pid)
        st1 = daemon.status(STATUS_TIMEOUT_S)
        a1 = anchor.overflows()
        alive = daemon.alive()
        midi = read_clock()
        page_final = None
        with contextlib.suppress(Exception):
            page_final = driver.execute_script(
                "const s = window.emberdState; return [s.matchMessages, s.connState]")
        clients_alive = {name: p.poll() is None for name, p in clients.items()}
        ok = alive and all(clients_alive.values()) and isinstance(page_final, list) \
            and page_final[1] == "connected"  # fmt: skip
        span = t1 - t0
        hops = int(st1["hops"]) - int(st0["hops"])
        dropped = int(st1["dropped_hops"]) - int(st0["dropped_hops"])
        skipped = int(st1.get("skipped_hops", 0)) - int(st0.get("skipped_hops", 0))
        rss_s, fd_s = procs.series("daemon", 1), procs.series("daemon", 2)
        w = min(cfg.window_s, span / 2)
        loads = [s["load1"] for s in samples]
        outputs = st1.get("outputs") or {}
        results.update({
            "alive": alive, "clients_alive": clients_alive, "duration_s": round(span, 1),
            "load_mean": round(float(np.mean(loads)), 2) if loads else None,
            "load_min_max": [round(min(loads), 2), round(max(loads), 2)] if loads else None,
            "hops": hops, "dropped_hops": dropped, "skipped_hops": skipped,
            "dropped_share": round(dropped / max(hops + dropped, 1), 5),
            "overflows": int(st1["overflows"]) - int(st0["overflows"]),
            "anchor_overflows": a1 - a0,
            "overflows_added": int(st1["overflows"]) - int(st0["overflows"]) - (a1 - a0),
            "callback_interval_ms": st1.get("callback_interval_ms"),
            "outputs": {k: {f: v.get(f) for f in ("published", "dropped", "queue_dropped",
                                                  "transport_dropped", "errors", "disabled",
                                                  "counters")}
                        for k, v in outputs.items()},
            "zmq_subscriber": {"kinds": dict(sub.kinds), "seq_gaps": sub.gaps},
            "osc_datagrams_received": [t.count for t in targets],
            "midi_received": midi,
            "panel_final": page_final,
            "control_replies": dict(control.replies),
            "control_reply_ms": control.reply_ms(),
            # (s after the start of the run, command, ms to its reply)
            "control_timeline": [(round(t - t0, 2), c, ms) for t, c, ms in control.timeline],
            "hit_index_builds": st1.get("hit_index_builds"),
            "rss_start_mib": round(float(np.median([r for t, r in rss_s if t <= BASELINE_S]))
                                   / MIB, 1) if rss_s else None,
            "rss_growth_mib": round(growth(rss_s, 0.0, span) / MIB, 2),
            "rss_max_mib": round(max(r for _, r in rss_s) / MIB, 1) if rss_s else None,
            "fds_start": int(np.median([f for t, f in fd_s if t <= BASELINE_S])) if fd_s else None,
            "fd_growth": growth(fd_s, 0.0, span, floor=True),
            "fds_max": max(f for _, f in fd_s) if fd_s else None,
            "clients_rss_growth_mib": {
                name: round(growth(procs.series(name, 1), 0.0, span) / MIB, 2)
                for name in clients},
            "clients_fd_growth": {
                name: growth(procs.series(name, 2), 0.0, span, floor=True) for name in clients},
            "proc_samples": procs.samples,
            "accuracy_first": accuracy(sub.hits, truth, t0_unix, t0_unix + w, cfg.loop_s,
                                       clock),
            "accuracy_last": accuracy(sub.hits, truth, t1_unix - w, t1_unix, cfg.loop_s, clock),
            "player_clock": clock,
            "window_s": round(w, 1),
            # capture of a hop's first sample -> its last datagram sent (slowest transport;
            # the latest STATS_WINDOW_HOPS hops): the catch-up worker's backlog shows here
            "latency_p50_ms": st1.get("latency_p50_ms"),
            "latency_p99_ms": st1.get("latency_p99_ms"),
            "latency_ms_by_transport": st1.get("latency_ms_by_transport"),
            "inference_ms": st1.get("inference_ms"),
            "inference_p99_ms": st1.get("inference_p99_ms"),
            "hop_work_ms": st1.get("hop_work_ms"),
            "hop_ms": st1.get("hop_ms"),
            "hit_stage_ms": st1.get("hit_stage_ms"),
            "hits_started": int(st1.get("hits", 0)) - int(st0.get("hits", 0)),
            "hit_lost_frames": int(st1.get("hit_lost_frames", 0))
            - int(st0.get("hit_lost_frames", 0)),
            # the daemon process's CPU (every thread) per second of the run: above the
            # cores the box can give it, it cannot keep up
            "daemon_cpu_s_per_s": round((cpu1 - cpu0) / max(span, 1e-9), 3),
            "rate_limited_osc": int(st1.get("rate_limited_osc", 0)),
            # input stalls (no audio for 0.5 s: a starved server) and reconnections in the
            # run; each reconnection keeps the old stream open by design (it may be wedged)
            "input_stalls": int(st1.get("input_stalls", 0)) - int(st0.get("input_stalls", 0)),
            "input_reconnects": int(st1.get("input_reconnects", 0))
            - int(st0.get("input_reconnects", 0)),
        })  # fmt: skip
        results["fuzzer"] = {"sent": fuzzer.sent, "counted": fuzzer.counted,
                             "kernel_drops": fuzzer.kernel_drops,
                             "rate_per_s": round(fuzzer.sent / max(fuzzer.t1 - fuzzer.t0, 1e-9)),
                             "failed_chunks": fuzzer.failed_chunks,
                             "errors": dict(fuzzer.errors)}  # fmt: skip
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        for p in clients.values():
            stop_process(p)
        if sub is not None:
            sub.stop()
        rc = daemon.stop() if daemon is not None else None
        if anchor is not None:
            anchor.close()
        if player is not None:
            player.close()
        for t in targets:
            t.stop()
        stop_process(jackd, signal.SIGTERM)
    results["daemon_exit"] = rc
    if sub is not None:  # for a second look at the scoring
        (work / "hits.json").write_text(json.dumps({
            "hits": sub.hits, "truth": truth, "loop_s": cfg.loop_s,
            "clock": results.get("player_clock")}))  # fmt: skip
    results["samples"] = samples
    results["ok"] = ok and rc == 0
    return results

