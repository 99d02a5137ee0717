"""Deterministic beats assembled from library sounds, for the timeline bench and tests.

A *beat* is a mono track made of library one-shots and loops placed at known start
times, speeds (resampling factors: pitch and length change together, as on a
sampler) and gains, with sounds that are not in the library mixed in. Every
placement is recorded as an :class:`Event`, so :func:`emberd.library.timeline`
answers can be scored against the truth.

*Loops* are 1-2 bar files made by overlap-adding hydrogen one-shots on a 16th-note
grid (:func:`write_loops`); they go into the library beside the kits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100  # Hz, the rate beats and loops are written at
LOOP_BPM = (90.0, 130.0)  # tempo range of the generated loops
LOOP_HIT_DB = (-6.0, 0.0)  # level range of each hit inside a loop
SPEEDS = (0.9, 1.12)  # resampling factors drawn for placements (1.0 for a share of them)
UNSPEED_SHARE = 0.3  # share of placements played at speed 1.0
GAIN_DB = (-12.0, 0.0)  # placement gains
MIN_GAP_S = 0.07  # events of a beat start at least this far apart (one onset each)


@dataclass(frozen=True)
class Event:
    """One placement in a beat."""

    path: str  # the sound's file
    start_s: float  # where the file's first sample lands in the beat
    speed: float  # resampling factor (>1: faster and higher)
    gain_db: float
    library: bool  # whether the sound is in the library (False: a distractor)


def load_mono(path: str | os.PathLike[str], sr: int = SR) -> np.ndarray:
    """A file as mono float32 at ``sr``."""
    from emberd.dsp.resample import mono_at

    y, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    return mono_at(y, int(file_sr), sr)


def at_speed(y: np.ndarray, speed: float) -> np.ndarray:
    """``y`` played ``speed`` times faster (resampled: pitch and duration change together)."""
    if speed == 1.0:
        return np.asarray(y, np.float32)
    import soxr

    return np.asarray(soxr.resample(y, SR, SR / speed, quality="HQ"), np.float32)


def make_loop(hits: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A 1- or 2-bar loop: ``hits`` overlap-added on a random 16th-note pattern."""
    bpm = float(rng.uniform(*LOOP_BPM))
    bars = int(rng.integers(1, 3))
    step = round(SR * 60.0 / bpm / 4)  # one 16th note
    n_steps = 16 * bars
    out = np.zeros(step * n_steps, np.float32)
    # The first hit on step 0 (a loop starts with a sound), then a seeded pattern.
    pattern = [(0, 0)]
    for s in range(1, n_steps):
        if rng.random() < 0.35:
            pattern.append((s, int(rng.integers(len(hits)))))
    for s, h in pattern:
        y = hits[h] * np.float32(10 ** (rng.uniform(*LOOP_HIT_DB) / 20))
        a = s * step
        n = min(len(y), len(out) - a)
        out[a : a + n] += y[:n]
    peak = float(np.max(np.abs(out)))
    return out * np.float32(0.9 / peak) if peak > 0.9 else out


def write_loops(
    root: str | os.PathLike[str], sources: Sequence[str], n: int, *, seed: int, prefix: str
) -> list[Path]:
    """Write ``n`` loops made of 3-4 of ``sources`` each (seeded); return their paths."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        pick = rng.choice(len(sources), size=int(rng.integers(3, 5)), replace=False)
        loop = make_loop([load_mono(sources[j]) for j in pick], rng)
        path = root / f"{prefix}loop{i:02d}.wav"
        if not path.exists():
            sf.write(path, loop, SR, subtype="PCM_16")
        out.append(path)
    return out


def synth_distractor(rng: np.random.Generator) -> np.ndarray:
    """A non-library sound: a decaying tone, a chirp or a noise burst (seeded)."""
    kind = int(rng.integers(3))
    dur = float(rng.uniform(0.15, 0.8))
    t = np.arange(int(dur * SR)) / SR
    env = np.exp(-t * rng.uniform(4, 20)) * np.minimum(t / 0.002, 1.0)
    if kind == 0:
        f = rng.uniform(80, 1500)
        y = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 2.01 * f * t)
    elif kind == 1:
        f0, f1 = rng.uniform(60, 300), rng.uniform(300, 3000)
        y = np.sin(2 * np.pi * np.cumsum(np.geomspace(f1, f0, len(t))) / SR)
    else:
        y = rng.standard_normal(len(t))
    return (0.5 * env * y / max(np.max(np.abs(y)), 1e-9)).astype(np.float32)


def make_beat(
    duration_s: float,
    one_shots: Sequence[str],
    loops: Sequence[str],
    outsiders: Sequence[str],
    *,
    seed: int,
    events_per_s: float = 2.0,
    loops_per_beat: int = 2,
    outsiders_per_s: float = 0.5,
    synth_per_s: float = 0.2,
) -> tuple[np.ndarray, list[Event]]:
    """A beat of ``duration_s`` at SR and the events it was built from (seeded).

    One-shots land on a 16th-note grid at a random tempo (so some coincide, as
    in a real beat, but never closer than MIN_GAP_S unless they coincide
    exactly... which is then one onset for two sounds); loops at grid positions
    too; ``outsiders`` (files not in the library) and synthetic sounds are the
    non-library part. Gains and speeds are drawn from GAIN_DB and SPEEDS.
    """
    rng = np.random.default_rng(seed)
    n = int(duration_s * SR)
    step_s = 60.0 / float(rng.uniform(85, 135)) / 4
    taken: list[float] = []

    def slot(last_s: float) -> float | None:
        for _ in range(50):
            t = float(rng.integers(0, int((duration_s - last_s) / step_s))) * step_s
            t += float(rng.uniform(0, 0.004))  # a hand-placed sample is rarely sample-exact
            if all(abs(t - u) >= MIN_GAP_S for u in taken):
                taken.append(t)
                return t
        return None

    def speed() -> float:
        return 1.0 if rng.random() < UNSPEED_SHARE else float(rng.uniform(*SPEEDS))

    events: list[Event] = []
    for p in rng.choice(len(loops), size=min(loops_per_beat, len(loops)), replace=False):
        t = slot(6.0)
        if t is not None:
            events.append(Event(loops[p], t, speed(), float(rng.uniform(-6, 0)), True))
    for _ in range(int(events_per_s * duration_s)):
        t = slot(1.0)
        if t is not None:
            path = one_shots[int(rng.integers(len(one_shots)))]
            events.append(Event(path, t, speed(), float(rng.uniform(*GAIN_DB)), True))
    for _ in range(int(outsiders_per_s * duration_s)) if outsiders else []:
        t = slot(1.0)
        if t is not None:
            path = outsiders[int(rng.integers(len(outsiders)))]
            events.append(Event(path, t, speed(), float(rng.uniform(*GAIN_DB)), False))
    y = np.zeros(n, np.float32)
    for e in events:
        _add(y, at_speed(load_mono(e.path), e.speed), e.start_s, e.gain_db)
    for _ in range(int(synth_per_s * duration_s)):
        t = slot(1.0)
        if t is not None:
            _add(y, synth_distractor(rng), t, float(rng.uniform(*GAIN_DB)))
            events.append(Event("synth", t, 1.0, 0.0, False))
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:  # keep the bounce unclipped: scale the whole beat (gains stay relative)
        y *= np.float32(0.99 / peak)
        shift = 20 * np.log10(0.99 / peak)
        events = [Event(e.path, e.start_s, e.speed, e.gain_db + shift, e.library) for e in events]
    return y, sorted(events, key=lambda e: e.start_s)


def _add(y: np.ndarray, sound: np.ndarray, start_s: float, gain_db: float) -> None:
    a = round(start_s * SR)
    m = min(len(sound), len(y) - a)
    if m > 0:
        y[a : a + m] += sound[:m] * np.float32(10 ** (gain_db / 20))
