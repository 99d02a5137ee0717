"""Live hits: how soon and how right the daemon names every hit of a drum performance.

A performance is built from Debian's hydrogen-drumkits one-shots (seeded): gaps drawn
log-uniformly from 80 ms to 1.6 s (tails overlap the next hit), gains -20..0 dB
(each sample peak-normalised to -1 dBFS first), a -50 dBFS white noise floor
throughout, SILENT_STRETCHES stretches of SILENT_S with no hit, and hits from kits
held out of the library (NOT in it: scored by instrument -- does the answer name a
library sound of the played sample's class?). The library holds LIBRARY_KITS; the
performance's library hits come from TEST_KITS (a subset), its held-out hits from
HELD_OUT_TEST; ``bench/fit_hit_confidence.py`` tunes on TUNE_KITS / HELD_OUT_TUNE.
Classes come from each kit's ``drumkit.xml`` (:mod:`emberd.library.classes`).

It is played through the real daemon (``emberd run``, a child process) at real-time
pace from a file, and through JACK capture (a private ``jackd`` with the dummy
backend paced at real time, JACK_PERIOD_FRAMES periods, a JACK-Client player child
process, the daemon's PortAudio input, and the bare-capture anchor -- a client that
only drains its ring -- on the same ports for the A/B of the audio callback), with a
ZeroMQ subscriber recording every ``hit.*`` and ``match.*`` message. Per stage it
prints top-1 (the answer is the played file or a level copy of it; ``strict``: the
file itself) and onset-to-publish latency p50/p90 (the message's ``latency_ms``:
publish time minus the capture time of the onset sample); false hits during silence
(detections inside a silent stretch), extra hits during sound (double triggers),
missed hits, window matches published for windows lying wholly in silence, ``exact``
claims for held-out hits, the calibration of ``confidence`` (expected calibration
error over 10 bins), and the same figures for an **SP-Tools-like baseline** in the
same run: the same onsets, loudness / spectral centroid / flatness / 13 MFCCs over
the first 256 samples at 44.1 kHz (5.8 ms), 1-nearest-neighbour (standardised
features) over every library file's first 256 samples after its onset. The baseline
runs in this process on the same onsets; its latency is the time its 256 samples
take to arrive at the daemon's block size plus its measured compute.

Usage::

    flock /tmp/emberd-bench.lock python bench/hits.py [--hits 160] [--seed 0]
        [--no-jack] [--library PATH]

The library (aiSFX) is kept in the temporary folder ``emberd-hits-cache`` and reused.
The last line is::

    provisional_ms_p50=... provisional_top1=... final_ms_p50=... final_top1=...
    baseline_top1=... false_hits=... missed=...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emberd.library import classes, waveform

KITS = Path("/usr/share/hydrogen/data/drumkits")
SR = 22050  # Hz: the daemon's rate (aiSFX front end); the performance is written at it
TUNE_KITS = ("BJA_Pacific", "ForzeeStereo", "Gimme A Hand 1.0", "circAfrique v4")
TEST_KITS = (
    "ElectricEmpireKit", "Millo_MultiLayered2", "Millo_MultiLayered3", "The Black Pearl 1.0",
    "rumpf_kit_z01_h2",
)  # fmt: skip
LIBRARY_KITS = TUNE_KITS + TEST_KITS
HELD_OUT_TUNE = ("ColomboAcousticDrumkit", "HardElectro1")
HELD_OUT_TEST = ("Millo-Drums_v.1", "VariBreaks", "Audiophob")
NOISE_DBFS = -50.0  # white noise floor, RMS
PEAK_DBFS = -1.0  # every sample's peak before its gain
GAIN_DB = (-20.0, 0.0)
GAP_S = (0.08, 1.6)  # onset-to-onset, log-uniform
HELD_OUT_SHARE = 0.2  # of the hits
SILENT_STRETCHES = 3
SILENT_S = 5.0  # onset-to-onset across a silent stretch
LEAD_IN_S = 2.0  # noise before the first hit (subscribers connect meanwhile)
TAIL_S = 3.0  # noise after the last hit
MAX_SAMPLE_S = 2.0  # longer samples are cut (30 ms fade): a performance, not a cymbal study
FADE_S = 0.03
MATCH_TOLERANCE_S = 0.025  # a detection this close to a true onset is that hit
SILENCE_AFTER_TAIL_S = 0.1  # a silent stretch starts this long after the last tail ends
DUPLICATE_RHO = 0.95  # a held-out sample this correlated with a library file is that file
BASELINE_SR = 44100
BASELINE_SAMPLES = 256  # SP-Tools' analysis window after the onset (5.8 ms at 44.1 kHz)
BLOCK_FRAMES = 256  # daemon input blocks (feeder and JACK period)
DAEMON_SR = 44100  # the daemon's (aiSFX's) rate: JACK runs at it, the file is resampled to it
STAGES = ("provisional", "refined50", "refined150", "final")


@dataclass
class Truth:
    onset_s: float
    path: str
    cls: str
    in_library: bool
    gain_db: float


@dataclass
class Performance:
    audio: np.ndarray
    hits: list[Truth]
    silent: list[tuple[float, float]] = field(default_factory=list)


def labelled(kits: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path, class) of every labelled one-shot of ``kits`` (loops left out)."""
    out = []
    for kit in kits:
        for p, c in sorted(classes.hydrogen_classes(KITS / kit).items()):
            if c != "loop":
                out.append((str(p), c))
    return out


def window(y: np.ndarray, start: int, n: int) -> np.ndarray:
    """``y[start:start + n]`` with zeros outside ``y``."""
    out = np.zeros(n, np.float32)
    a, b = max(start, 0), min(start + n, len(y))
    if b > a:
        out[a - start : b - start] = y[a:b]
    return out


def held_out(lib: Any, kits: tuple[str, ...]) -> tuple[list[tuple[str, str]], list[str]]:
    """Labelled samples of held-out ``kits`` that are not a library file under another name.

    Kits share recordings (one author's kits); a held-out sample whose whole snippet
    correlates DUPLICATE_RHO with a library file IS in the library: left out (returned
    second, to be printed), so that held-out hits are truly not in the library.
    """
    from emberd.library.hitindex import (
        DESC_OFFSET_SAMPLES,
        EARLY_SAMPLES,
        LAG_SAMPLES,
        PRE_SAMPLES,
        HitIndex,
    )  # fmt: skip

    index = HitIndex.from_library(lib)
    keep, dups = [], []
    n = waveform.SNIPPET_SAMPLES - waveform.PRE_ROLL_SAMPLES
    for path, cls in labelled(kits):
        y = load(path)
        o = waveform.onset_sample(y)
        seg = window(y, o - PRE_SAMPLES - LAG_SAMPLES, PRE_SAMPLES + n + 2 * LAG_SAMPLES)
        desc = window(y, o - DESC_OFFSET_SAMPLES, EARLY_SAMPLES)
        rows, _ = index.candidates(desc, EARLY_SAMPLES, 64)
        rho, _, _ = index.correlate(seg, rows, n)
        (dups if len(rho) and float(rho.max()) >= DUPLICATE_RHO else keep).append((path, cls))
    return keep, [p for p, _ in dups]


def library_path(arg: str | None) -> Path:
    return Path(arg) if arg else Path(tempfile.gettempdir()) / "emberd-hits-cache" / "lib"


def build_library(path: Path, model: str = "aisfx") -> None:
    """Index LIBRARY_KITS into ``path`` (incremental: unchanged files are skipped)."""
    from emberd.library.indexer import Indexer

    ix = Indexer(path, model, jobs=1)
    ix.run([KITS / k for k in LIBRARY_KITS])


def load(path: str, sr: int = SR) -> np.ndarray:
    from emberd.dsp.sources import load_audio

    y, _ = load_audio(path, sr=sr)
    return np.asarray(y, np.float32)


def performance(
    seed: int, lib: list[tuple[str, str]], held: list[tuple[str, str]], n_hits: int
) -> Performance:
    """The seeded performance (see module docstring)."""
    rng = np.random.default_rng(seed)
    library_classes = {c for _, c in lib}
    held = [(p, c) for p, c in held if c in library_classes]  # scored by a class the library has
    picks: list[tuple[str, str, bool]] = []
    for _ in range(n_hits):
        if held and rng.random() < HELD_OUT_SHARE:
            p, c = held[int(rng.integers(len(held)))]
            picks.append((p, c, False))
        else:
            p, c = lib[int(rng.integers(len(lib)))]
            picks.append((p, c, True))
    gaps = np.exp(rng.uniform(np.log(GAP_S[0]), np.log(GAP_S[1]), n_hits))
    for i in rng.choice(np.arange(1, n_hits), SILENT_STRETCHES, replace=False):
        gaps[i - 1] = SILENT_S
    starts = LEAD_IN_S + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    total = int((starts[-1] + MAX_SAMPLE_S + TAIL_S) * SR)
    audio = rng.standard_normal(total).astype(np.float32) * np.float32(10 ** (NOISE_DBFS / 20))
    cache: dict[str, np.ndarray] = {}
    truth, ends = [], []
    for (path, cls, in_lib), start in zip(picks, starts, strict=True):
        if path not in cache:
            y = load(path)[: int(MAX_SAMPLE_S * SR)]
            fade = min(len(y), int(FADE_S * SR))
            if len(y) == int(MAX_SAMPLE_S * SR):
                y[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
            peak = max(float(np.max(np.abs(y))), 1e-9)
            cache[path] = y / peak * np.float32(10 ** (PEAK_DBFS / 20))
        y = cache[path]
        gain = float(rng.uniform(*GAIN_DB))
        a = int(start * SR)
        audio[a : a + len(y)] += y * np.float32(10 ** (gain / 20))
        onset = a + waveform.onset_sample(y)
        truth.append(Truth(onset / SR, path, cls, in_lib, gain))
        ends.append((a + len(y)) / SR)
    silent = []
    for i in range(1, n_hits):
        if gaps[i - 1] == SILENT_S:
            lo = max(ends[: i]) + SILENCE_AFTER_TAIL_S
            hi = truth[i].onset_s - MATCH_TOLERANCE_S
            if hi - lo > 0.5:
                silent.append((lo, hi))
    return Performance(audio, truth, silent)


def level_copies(lib: Any) -> dict[str, str]:
    """Path -> a representative path of its level-copy group (one recording, several
    levels): :func:`emberd.testing.drumkits.level_copies` (any lag within 4.4 ms), by path."""
    from emberd.testing import drumkits

    files = lib.files()
    return {files[f].path: files[g].path for f, g in drumkits.level_copies(lib).items()}


# ---------------------------------------------------------------------- scoring


def stage_key(header: dict[str, Any], seen: dict[str, dict[str, Any]]) -> str:
    """provisional, refined50 (a hit's first refined message), refined150, final."""
    if header["stage"] != "refined":
        return str(header["stage"])
    return "refined150" if "refined50" in seen else "refined50"


def score(
    perf: Performance,
    hits: list[dict[str, Any]],
    matches: list[dict[str, Any]],
    copies: dict[str, str],
    file_class: dict[str, str | None],
    window_s: float,
) -> dict[str, Any]:
    """Per-stage accuracy/latency, false/extra/missed hits, silence matches, calibration."""
    by_hit: dict[tuple[int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for h in hits:  # in publish order
        seen = by_hit[(int(h["channel"]), int(h["hit"]))]
        seen[stage_key(h, seen)] = h
    detections = sorted(by_hit.values(), key=lambda st: float(next(iter(st.values()))["onset_s"]))
    onsets = np.array([float(next(iter(st.values()))["onset_s"]) for st in detections])
    used = np.zeros(len(detections), bool)
    paired: list[tuple[Truth, dict[str, dict[str, Any]]]] = []
    missed = 0
    for t in perf.hits:
        free = np.nonzero(~used & (np.abs(onsets - t.onset_s) <= MATCH_TOLERANCE_S))[0]
        if not len(free):
            missed += 1
            continue
        j = int(free[np.argmin(np.abs(onsets[free] - t.onset_s))])
        used[j] = True
        paired.append((t, detections[j]))
    in_silence = lambda s: any(lo <= s <= hi for lo, hi in perf.silent)  # noqa: E731
    false_hits = int(sum(1 for j in np.nonzero(~used)[0] if in_silence(onsets[j])))
    extra = int((~used).sum()) - false_hits
    silent_matches = sum(
        1 for m in matches
        if m["matches"] and in_silence(float(m["stream_s"]))
        and in_silence(float(m["stream_s"]) - window_s)
    )  # fmt: skip
    out: dict[str, Any] = {"hits": len(perf.hits), "detected": len(detections),
                           "missed": missed, "false_hits": false_hits, "extra_hits": extra,
                           "silent_matches": silent_matches}  # fmt: skip
    calib: list[tuple[float, bool]] = []
    exact_claims_held = 0
    for st in STAGES:
        ok, strict, lat, inst = [], [], [], []
        for t, det in paired:
            h = det.get(st)
            if h is None:
                continue
            lat.append(float(h["latency_ms"]))
            top = h["matches"][0] if h["matches"] else None
            if t.in_library:
                right = top is not None and copies.get(top["path"], top["path"]) == copies.get(
                    t.path, t.path
                )
                ok.append(right)
                strict.append(top is not None and top["path"] == t.path)
            else:
                right = top is not None and file_class.get(top["path"]) == t.cls
                inst.append(right)
                exact_claims_held += sum(m.get("kind") == "exact" for m in h["matches"])
            if top is not None and "confidence" in top:
                # exact answers claim the file; similar answers claim the instrument
                if top["kind"] == "exact":
                    calib.append((float(top["confidence"]), bool(t.in_library and right)))
                else:
                    cls_right = file_class.get(top["path"]) == t.cls
                    calib.append((float(top["confidence"]), cls_right))
        wait = [float(h["capture_time"]) - float(h["onset_time"]) for _, d in paired
                if (h := d.get(st)) is not None and "capture_time" in h]
        work = [float(h["publish_time"]) - float(h["capture_time"]) for _, d in paired
                if (h := d.get(st)) is not None and "publish_time" in h]
        out[st] = {
            # onset -> the newest sample the stage used (audio waited for), and that sample's
            # capture -> publish (wake-ups, hand-offs, compute): where the latency goes
            "wait_ms_p90": float(np.percentile(wait, 90)) * 1000.0 if wait else float("nan"),
            "work_ms_p50": float(np.percentile(work, 50)) * 1000.0 if work else float("nan"),
            "work_ms_p90": float(np.percentile(work, 90)) * 1000.0 if work else float("nan"),
            "top1": float(np.mean(ok)) if ok else float("nan"),
            "strict": float(np.mean(strict)) if strict else float("nan"),
            "n": len(ok),
            "held_out_instrument": float(np.mean(inst)) if inst else float("nan"),
            "held_out_n": len(inst),
            "ms_p50": float(np.percentile(lat, 50)) if lat else float("nan"),
            "ms_p90": float(np.percentile(lat, 90)) if lat else float("nan"),
        }
    # The same hits at two stages: the final answer must not lose what refined150 had.
    lost = won = 0
    for t, det in paired:
        a, b = det.get("refined150"), det.get("final")
        if t.in_library and a is not None and b is not None and a["matches"] and b["matches"]:
            ra = copies.get(a["matches"][0]["path"]) == copies.get(t.path, t.path)
            rb = copies.get(b["matches"][0]["path"]) == copies.get(t.path, t.path)
            lost += ra and not rb
            won += rb and not ra
    out["final_lost"], out["final_won"] = lost, won
    out["exact_claims_held_out"] = exact_claims_held
    out["ece"] = ece(calib)
    return out


def ece(pairs: list[tuple[float, bool]], bins: int = 10) -> float:
    """Expected calibration error: sum over confidence bins of |accuracy - confidence| * share."""
    if not pairs:
        return float("nan")
    conf = np.array([c for c, _ in pairs])
    right = np.array([r for _, r in pairs], float)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += abs(right[m].mean() - conf[m].mean()) * m.mean()
    return float(total)


# ---------------------------------------------------------------------- baseline


class Baseline:
    """SP-Tools-like: loudness, centroid, flatness, 13 MFCCs of 256 samples at 44.1 kHz, 1-NN."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        feats = []
        for p in paths:
            y = load(p, BASELINE_SR)
            feats.append(self.features(y, self.onset(y)))
        f = np.array(feats)
        self.mean, self.std = f.mean(axis=0), f.std(axis=0) + 1e-9
        self.matrix = (f - self.mean) / self.std

    @staticmethod
    def onset(y: np.ndarray) -> int:
        """The corpus file's onset by the same detector the queries' onsets come from (as
        SP-Tools analyses its corpus with its own onset detector)."""
        from emberd.dsp.onset import OnsetDetector

        lead = int(0.1 * BASELINE_SR)
        noise = np.random.default_rng(0).standard_normal(lead).astype(np.float32)
        x = np.concatenate([noise * np.float32(10 ** (NOISE_DBFS / 20)), y])
        det = OnsetDetector(sr=BASELINE_SR)
        for i in range(0, len(x), BLOCK_FRAMES):
            found = det.push(x[i : i + BLOCK_FRAMES])
            if found:
                return max(0, found[0] - lead)
        return waveform.onset_sample(y)

    @staticmethod
    def features(y: np.ndarray, onset: int) -> np.ndarray:
        import librosa

        seg = np.zeros(BASELINE_SAMPLES, np.float32)
        piece = y[max(onset, 0) : max(onset, 0) + BASELINE_SAMPLES]
        seg[: len(piece)] = piece
        win = seg * np.hanning(BASELINE_SAMPLES).astype(np.float32)
        power = np.abs(np.fft.rfft(win)) ** 2 + 1e-12
        freqs = np.fft.rfftfreq(BASELINE_SAMPLES, 1.0 / BASELINE_SR)
        loud = 10 * np.log10(np.mean(seg**2) + 1e-12)
        centroid = float((freqs * power).sum() / power.sum())
        flatness = float(np.exp(np.mean(np.log(power))) / np.mean(power))
        mel = librosa.feature.melspectrogram(
            S=power[:, None], sr=BASELINE_SR, n_fft=BASELINE_SAMPLES, n_mels=40
        )
        mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=13)[:, 0]
        return np.concatenate([[loud, np.log(centroid + 1.0), flatness], mfcc])

    def answer(self, y: np.ndarray, onset: int) -> tuple[str, float]:
        """(path of the nearest file, compute ms)."""
        t0 = time.perf_counter()
        q = (self.features(y, onset) - self.mean) / self.std
        best = int(np.argmin(((self.matrix - q) ** 2).sum(axis=1)))
        return self.paths[best], (time.perf_counter() - t0) * 1000.0


def baseline_scores(
    perf: Performance, onsets_s: list[float], base: Baseline, copies: dict[str, str],
    file_class: dict[str, str | None],
) -> dict[str, Any]:
    """The baseline on the daemon's own onsets (re-detected on the 44.1 kHz performance)."""
    import soxr

    y = np.asarray(soxr.resample(perf.audio, SR, BASELINE_SR), np.float32)
    truth = np.array([t.onset_s for t in perf.hits])
    ok, inst, lat = [], [], []
    block_s = BLOCK_FRAMES / DAEMON_SR
    for s in onsets_s:
        j = int(np.argmin(np.abs(truth - s)))
        if abs(truth[j] - s) > MATCH_TOLERANCE_S:
            continue
        path, ms = base.answer(y, round(s * BASELINE_SR))  # the daemon's onset
        t = perf.hits[j]
        if t.in_library:
            ok.append(copies.get(path, path) == copies.get(t.path, t.path))
        else:
            inst.append(file_class.get(path) == t.cls)
        wait_s = BASELINE_SAMPLES / BASELINE_SR
        arrive = np.ceil((s + wait_s) / block_s) * block_s - s  # the block holding its end
        lat.append(arrive * 1000.0 + ms)
    return {"top1": float(np.mean(ok)) if ok else float("nan"),
            "held_out_instrument": float(np.mean(inst)) if inst else float("nan"),
            "ms_p50": float(np.percentile(lat, 50)) if lat else float("nan"),
            "ms_p90": float(np.percentile(lat, 90)) if lat else float("nan")}  # fmt: skip


# ---------------------------------------------------------------------- daemon runs


class Recorder:
    """A ZeroMQ subscriber thread recording hit and match headers until the final status."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        for t in (b"hit.", b"match.", b"status"):
            self.sock.setsockopt(zmq.SUBSCRIBE, t)
        self.sock.connect(endpoint)
        self.hits: list[dict[str, Any]] = []
        self.matches: list[dict[str, Any]] = []
        self.final = threading.Event()
        self.window_s = 0.0
        self.status: dict[str, Any] = {}
        self.offset_s = 0.0  # JACK runs: the performance's start on the input's clock (s)
        self.jack: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from emberd.clients import wire

        while not self._stop.is_set():
            if not self.sock.poll(200):
                continue
            msg = wire.decode(self.sock.recv_multipart())
            if msg.kind == wire.KIND_HIT:
                self.hits.append(msg.header)
            elif msg.kind == wire.KIND_MATCH:
                self.matches.append(msg.header)
            elif msg.kind == wire.KIND_STATUS:
                st = msg.header["status"]
                self.window_s = float(st.get("window_ms", 0.0)) / 1000.0
                self.status = st
                if st.get("final"):
                    self.final.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def run_file(lib: Path, wav: Path, work: Path, model: str, duration_s: float) -> Recorder:
    """The daemon on the performance file at real-time pace."""
    from emberd.testing.harness import Daemon

    d = Daemon(["--library", str(lib), "--input", str(wav), "--pace", "realtime",
                "--model", model, "--k", "5"], work / "daemon-file.log", osc_in=False)  # fmt: skip
    d.start(ready_timeout=300)
    rec = Recorder(d.pub)
    try:
        rec.final.wait(duration_s + 60)
    finally:
        d.stop()
        rec.close()
    return rec


JACK_PERIOD_FRAMES = 1024  # the soak's period: a Python player keeps up with it on 2 cores


def run_jack(lib: Path, wav: Path, work: Path, model: str, duration_s: float,
             period: int = JACK_PERIOD_FRAMES) -> Recorder | None:  # fmt: skip
    """The daemon capturing a private JACK server (dummy backend at real-time pace) that a
    player child process plays into (``wav`` at DAEMON_SR: JACK does not resample), with
    the bare-capture anchor on the same ports for the whole run (the A/B of the audio
    callback: overflows of the daemon's input vs a client that only drains its ring)."""
    from emberd.testing.harness import (
        BareCapture,
        Daemon,
        PlayerProcess,
        jack_available,
        start_jackd,
        stop_process,
        wait_for,
    )

    if not jack_available():
        print("bench: jackd not installed: JACK run skipped", file=sys.stderr)
        return None
    server = f"emberd-hits-{uuid.uuid4().hex[:6]}"
    jackd = start_jackd(server, rate=DAEMON_SR, period=period, real_time=True,
                        log_path=work / "jackd.log")  # fmt: skip
    env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    player: PlayerProcess | None = None
    anchor: BareCapture | None = None
    d = Daemon(["--library", str(lib), "--input", "default", "--channels", "0", "--model", model,
                "--k", "5"], work / "daemon-jack.log", env=env, osc_in=False)  # fmt: skip
    try:
        d.start(ready_timeout=300)
        anchor = BareCapture(server, 1, period=1.0)
        rec = Recorder(d.pub)
        player = PlayerProcess(server, wav)
        wait_for(lambda: bool(anchor.samples), 60, what="the bare-capture anchor")
        player.go()
        p = player
        wait_for(lambda: p.report()["loops"] >= 1, duration_s + 120, interval=0.5,
                 what="the JACK player")  # fmt: skip
        rec.status = d.status()
        rec.jack = {"anchor_overflows": anchor.overflows(), **player.report(),
                    "xruns_logged": (work / "jackd.log").read_text(errors="replace")
                    .lower().count("xrun"), "period": period}  # fmt: skip
        rec.close()
        return rec
    finally:
        d.stop()
        if anchor is not None:
            anchor.close()
        if player is not None:
            player.close()
        stop_process(jackd, signal.SIGTERM)


def align_jack(rec: Recorder, perf: Performance) -> list[dict[str, Any]]:
    """JACK onsets count from the stream start: shift them onto the performance's clock.

    The shift is the one that pairs the most detections with true onsets (a vote over
    every detection-minus-onset difference), then the median residual of those pairs.
    The player's start time is no anchor: the daemon's ``start_time`` precedes its
    stream by the model's load time.
    """
    if not rec.hits:
        return []
    truth = np.array([t.onset_s for t in perf.hits])
    onsets = np.array(sorted({float(h["onset_s"]) for h in rec.hits}))

    def paired(shift: float) -> np.ndarray:
        """Residuals (truth - shifted onset) of the onsets within tolerance of a truth."""
        moved = onsets - shift
        nearest = truth[np.argmin(np.abs(truth[None, :] - moved[:, None]), axis=1)]
        res = nearest - moved
        return res[np.abs(res) <= MATCH_TOLERANCE_S]

    candidates = np.unique(np.round((onsets[:, None] - truth[None, :]).ravel(), 3))
    best = max(candidates, key=lambda c: paired(float(c)).size)
    res = paired(float(best))
    shift = float(best) - float(np.median(res)) if res.size else float(best)
    rec.offset_s = shift
    out = []
    for h in rec.hits:
        h = dict(h)
        h["onset_s"] = float(h["onset_s"]) - shift
        out.append(h)
    return out


STRESS_CHANNELS = 4
STRESS_RATE_HZ = 16.0  # hits per second per channel
STRESS_S = 30.0
HOP_MS = 1000.0 * 1024 / DAEMON_SR  # the daemon's hop (aiSFX: 4 mel frames of 256 samples)


@dataclass
class StressHit:
    """One hit of the stress performance: where it starts and what plays."""

    channel: int
    start: int  # first sample of the (gained) one-shot in the performance, at SR
    onset_s: float  # its true onset (the sample's onset_sample after ``start``)
    path: str
    cls: str
    gain_db: float


def stress_audio(
    samples: list[tuple[str, str]], plan: list[StressHit] | None = None
) -> tuple[np.ndarray, list[list[float]]]:
    """The stress performance: STRESS_CHANNELS channels [n, channels] at SR, and per channel
    the true onsets (s) of its hits (each sample's :func:`~emberd.library.waveform.onset_sample`
    after its start). Each hit's placement is appended to ``plan`` when given (analysis)."""
    rng = np.random.default_rng(7)
    n = int(STRESS_S * SR)
    audio = rng.standard_normal((n, STRESS_CHANNELS)).astype(np.float32) * np.float32(
        10 ** (NOISE_DBFS / 20))  # fmt: skip
    onsets: list[list[float]] = [[] for _ in range(STRESS_CHANNELS)]
    cache: dict[str, np.ndarray] = {}
    for c in range(STRESS_CHANNELS):
        t = LEAD_IN_S + c * 0.013  # channels offset: onsets do not all share a block
        while t < STRESS_S - 1.0:
            p, cls = samples[int(rng.integers(len(samples)))]
            if p not in cache:
                y = load(p)[: int(0.5 * SR)]
                cache[p] = y / max(float(np.max(np.abs(y))), 1e-9) * np.float32(0.5)
            g = rng.uniform(*GAIN_DB)
            y = cache[p] * np.float32(10 ** (g / 20))
            a = int(t * SR)
            audio[a : a + len(y), c] += y[: n - a]
            onsets[c].append((a + waveform.onset_sample(cache[p])) / SR)
            if plan is not None:
                plan.append(StressHit(c, a, onsets[c][-1], p, cls, float(g)))
            t += 1.0 / STRESS_RATE_HZ
    return audio, onsets


def stress(lib_path: Path, work: Path, model: str, samples: list[tuple[str, str]],
           extra: list[str]) -> dict[str, Any]:
    """4 channels x 16 hits/s of library one-shots at real-time pace: hops dropped, hits."""
    import soundfile as sf

    from emberd.testing.harness import Daemon

    audio, onsets = stress_audio(samples)
    expected = sum(len(o) for o in onsets)
    wav = work / "stress.wav"
    sf.write(wav, audio, SR, subtype="FLOAT")
    d = Daemon(["--library", str(lib_path), "--input", str(wav), "--pace", "realtime",
                "--model", model, "--channels", "all", "--k", "5", *extra],
               work / "daemon-stress.log", osc_in=False)  # fmt: skip
    d.start(ready_timeout=300)
    rec = Recorder(d.pub)
    try:
        rec.final.wait(STRESS_S + 60)
    finally:
        d.stop()
        rec.close()
    st = getattr(rec, "status", {})
    prov = [float(h["latency_ms"]) for h in rec.hits if h["stage"] == "provisional"]
    fin = [float(h["latency_ms"]) for h in rec.hits if h["stage"] == "final"]
    return {
        "expected": expected, "hits": len(prov), "skipped_hops": st.get("skipped_hops"),
        "dropped_hops": st.get("dropped_hops"), "overflows": st.get("overflows"),
        "hop_p99_ms": st.get("latency_p99_ms"), "inference_ms": st.get("inference_ms"),
        "hop_work_ms": st.get("hop_work_ms"), "hit_stage_ms": st.get("hit_stage_ms"),
        "hops": st.get("hops"),
        "prov_p50": float(np.percentile(prov, 50)) if prov else float("nan"),
        "prov_p90": float(np.percentile(prov, 90)) if prov else float("nan"),
        "final_p90": float(np.percentile(fin, 90)) if fin else float("nan"),
    }  # fmt: skip


@dataclass
class OfflineRecord:
    hits: list[dict[str, Any]]


def offline_run(lib_path: Path, perf: Performance) -> OfflineRecord:
    """The ladder in this process on the performance at the daemon's rate, 256-sample blocks;
    latency_ms = the audio each stage waited for plus its compute time."""
    import soxr

    from emberd.daemon.hits import HitLadder
    from emberd.library import Library
    from emberd.library.hitindex import HitIndex

    y = np.asarray(soxr.resample(perf.audio, SR, DAEMON_SR), np.float32)
    out: list[dict[str, Any]] = []
    with Library.open(lib_path) as lib:
        lad = HitLadder(HitIndex.from_library(lib), lib.files(), sr=DAEMON_SR, channels=[0],
                        model="offline", time_of=lambda pos: pos / DAEMON_SR)  # fmt: skip
        for i in range(0, len(y), BLOCK_FRAMES):
            t0 = time.perf_counter()
            res = lad.push(0, y[i : i + BLOCK_FRAMES])
            spent = time.perf_counter() - t0
            block_end = (i + BLOCK_FRAMES) / DAEMON_SR  # when this block would have arrived
            for r in res:
                out.append({"channel": r.channel, "hit": r.hit, "stage": r.stage,
                            "window_ms": r.window_ms, "onset_s": r.onset_s,
                            "latency_ms": (block_end + spent - r.onset_time) * 1000.0,
                            "matches": r.matches})  # fmt: skip
    return OfflineRecord(out)


def fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.3f}"


def report(name: str, s: dict[str, Any]) -> None:
    print(f"  {name}: {s['hits']} hits, {s['detected']} detections, missed {s['missed']}, "
          f"false hits in silence {s['false_hits']}, extra hits in sound {s['extra_hits']}, "
          f"window matches in silence {s['silent_matches']}, exact claims on held-out hits "
          f"{s['exact_claims_held_out']}, confidence ECE {fmt(s['ece'])}")  # fmt: skip
    for st in STAGES:
        r = s[st]
        print(f"    {st:12s} top1 {fmt(r['top1'])} (strict {fmt(r['strict'])}, n {r['n']})  "
              f"held-out instrument {fmt(r['held_out_instrument'])} (n {r['held_out_n']})  "
              f"onset->publish p50 {r['ms_p50']:.1f} ms p90 {r['ms_p90']:.1f} ms "
              f"(audio wait p90 {r['wait_ms_p90']:.1f} ms, capture->publish p50 "
              f"{r['work_ms_p50']:.1f} p90 {r['work_ms_p90']:.1f} ms)")  # fmt: skip
    print(f"    the same hits at refined150 and final: final right where refined150 was wrong "
          f"{s['final_won']}, wrong where it was right {s['final_lost']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--library")
    ap.add_argument("--model", default="aisfx")
    ap.add_argument("--no-jack", action="store_true")
    ap.add_argument("--offline", action="store_true",
                    help="the ladder in this process, block by block (accuracy and detection; "
                         "latency is then only the audio each stage waits for)")
    ap.add_argument("--stress", action="store_true",
                    help="first the 4-channel, 16 hits/s run and its --no-hits anchor, then "
                         "the file-input run (no JACK)")
    ap.add_argument("--tune", action="store_true",
                    help="the tuning split: library hits from TUNE_KITS, held-out hits from "
                         "HELD_OUT_TUNE (choose settings here, report the default split)")
    args = ap.parse_args(argv)

    import soundfile as sf

    from emberd.library import Library
    from emberd.library.hitindex import file_class as class_of

    lib_path = library_path(args.library)
    build_library(lib_path, args.model)
    if args.stress:
        work = Path(tempfile.mkdtemp(prefix="emberd-hits-"))
        for name, extra in (("hits", []), ("anchor --no-hits", ["--no-hits"])):
            r = stress(lib_path, work, args.model, labelled(TEST_KITS), extra)
            print(f"stress {name}: {STRESS_CHANNELS} ch x {STRESS_RATE_HZ:g} hits/s, "
                  f"{STRESS_S:g} s: hits {r['hits']}/{r['expected']}, skipped hops "
                  f"{r['skipped_hops']}, dropped hops {r['dropped_hops']}, overflows "
                  f"{r['overflows']}, hop latency p99 {r['hop_p99_ms']} ms, provisional p50 "
                  f"{r['prov_p50']:.1f} ms p90 {r['prov_p90']:.1f} ms, final p90 "
                  f"{r['final_p90']:.1f} ms; per hop (p50, 4 channels): encoder "
                  f"{r['inference_ms']} ms, whole hop {r['hop_work_ms']} ms of a "
                  f"{HOP_MS:.1f} ms hop; per hit stage {r['hit_stage_ms']} ms")  # fmt: skip
        args.no_jack = True  # then the file-input run, as without --stress
    lib_samples = labelled(TUNE_KITS if args.tune else TEST_KITS)
    with Library.open(lib_path) as lib:
        held, dups = held_out(lib, HELD_OUT_TUNE if args.tune else HELD_OUT_TEST)
    perf = performance(args.seed, lib_samples, held, args.hits)
    work = Path(tempfile.mkdtemp(prefix="emberd-hits-"))
    wav = work / "performance.wav"
    sf.write(wav, perf.audio, SR, subtype="FLOAT")
    with Library.open(lib_path) as lib:
        copies = level_copies(lib)
        lib_paths = [r.path for r in lib.files().values()]
    file_class = {p: class_of(p) for p in lib_paths}
    duration = len(perf.audio) / SR
    n_lib = sum(t.in_library for t in perf.hits)
    print(f"emberd hits bench: {len(perf.hits)} hits ({n_lib} library, "
          f"{len(perf.hits) - n_lib} held-out kits), {duration:.0f} s, "
          f"{len(perf.silent)} silent stretches, {len(lib_paths)} library files "
          f"({len(dups)} held-out samples left out: the same recording is in the library), model "
          f"{args.model}; {os.cpu_count()} CPUs, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    if args.offline:
        rec = offline_run(lib_path, perf)
        results["file"] = score(perf, rec.hits, [], copies, file_class, 0.0)
        report("offline (ladder in process, 256-sample blocks at 44.1 kHz)", results["file"])
    else:
        rec = run_file(lib_path, wav, work, args.model, duration)
        results["file"] = score(perf, rec.hits, rec.matches, copies, file_class, rec.window_s)
        (work / "hits.json").write_text(json.dumps(rec.hits))
        report("file input, real-time pace", results["file"])
    if not args.no_jack and not args.offline:
        import soxr

        jwav = work / "performance-44k.wav"
        sf.write(jwav, soxr.resample(perf.audio, SR, DAEMON_SR), DAEMON_SR, subtype="FLOAT")
        jrec = run_jack(lib_path, jwav, work, args.model, duration)
        if jrec is not None:
            (work / "jack-hits.json").write_text(json.dumps(jrec.hits))
            results["jack"] = score(perf, align_jack(jrec, perf), [], copies, file_class,
                                    jrec.window_s)  # fmt: skip
            report("JACK capture", results["jack"])
            print(f"    JACK status: overflows {jrec.status.get('overflows')} (bare-capture "
                  f"anchor {jrec.jack['anchor_overflows']}), dropped hops "
                  f"{jrec.status.get('dropped_hops')}, player xruns {jrec.jack['xruns']}, "
                  f"jackd xrun lines {jrec.jack['xruns_logged']}, period "
                  f"{jrec.jack['period']} frames")  # fmt: skip
    base = Baseline(lib_paths)
    onsets = sorted({float(h["onset_s"]) for h in rec.hits})
    b = baseline_scores(perf, onsets, base, copies, file_class)
    print(f"  SP-Tools-like baseline (same onsets): top1 {fmt(b['top1'])}, held-out instrument "
          f"{fmt(b['held_out_instrument'])}, onset->answer p50 {b['ms_p50']:.1f} ms "
          f"p90 {b['ms_p90']:.1f} ms")  # fmt: skip
    f = results["file"]
    (work / "results.json").write_text(json.dumps({**results, "baseline": b}, indent=1))
    print(f"  raw hit messages and results: {work}")
    print(f"provisional_ms_p50={f['provisional']['ms_p50']:.1f} "
          f"provisional_top1={f['provisional']['top1']:.3f} "
          f"final_ms_p50={f['final']['ms_p50']:.1f} final_top1={f['final']['top1']:.3f} "
          f"baseline_top1={b['top1']:.3f} false_hits={f['false_hits']} missed={f['missed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
