"""Deterministic synthetic bass, pad and lead sounds (one-shots and stems) for the mix-down bench.

hydrogen-drumkits has only drums; the mix-down assistant also needs bass and pad
stems with known spectra.  Every sound is a function of ``(kind, seed)``: a bass
is a low saw or square (30-100 Hz fundamental) through a resonant low-pass, a
pad a detuned saw chord (130-520 Hz) with a slow attack through a gentle
low-pass, a lead a bright single saw/square line (400-1600 Hz).  Seeds choose
the waveform, notes, filter and envelope, so training seeds and test seeds give
different sounds of the same kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

SR = 44100  # Hz
KINDS = ("bass", "pad", "lead")


def _osc(freq: np.ndarray, shape: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    phase = np.cumsum(freq) / sr + rng.random()
    if shape == "saw":
        return 2.0 * (phase % 1.0) - 1.0
    if shape == "square":
        return np.sign(np.sin(2 * np.pi * phase))
    return np.sin(2 * np.pi * phase)


def note(kind: str, seed: int, *, seconds: float, midi: float | None = None,
         sr: int = SR) -> np.ndarray:  # fmt: skip
    """One note of ``kind`` (``bass``, ``pad`` or ``lead``), peak-normalised to 0.8."""
    rng = np.random.default_rng([KINDS.index(kind), seed])
    n = int(seconds * sr)
    t = np.arange(n) / sr
    if kind == "bass":
        m = midi if midi is not None else float(rng.integers(23, 44))  # 31-104 Hz
        f0 = 440.0 * 2 ** ((m - 69) / 12)
        shape = str(rng.choice(["saw", "square", "sine"]))
        y = _osc(np.full(n, f0), shape, rng, sr) + 0.5 * np.sin(2 * np.pi * f0 * t)
        cutoff = float(rng.uniform(150, 400))
        env = np.minimum(1.0, t / 0.005) * np.exp(-t * rng.uniform(0.3, 2.0))
    elif kind == "pad":
        m = midi if midi is not None else float(rng.integers(48, 60))  # 131-247 Hz root
        chord = [0, 4, 7, 12] if rng.random() < 0.5 else [0, 3, 7, 10]
        y = np.zeros(n)
        for step in chord:
            f = 440.0 * 2 ** ((m + step - 69) / 12)
            for detune in (-0.004, 0.0, 0.004):
                y += _osc(np.full(n, f * (1 + detune)), "saw", rng, sr)
        cutoff = float(rng.uniform(1500, 3500))
        attack = float(rng.uniform(0.2, 0.6))
        env = np.minimum(1.0, t / attack) * np.minimum(1.0, (seconds - t) / 0.3)
    elif kind == "lead":
        m = midi if midi is not None else float(rng.integers(67, 91))  # 392-1568 Hz
        f0 = 440.0 * 2 ** ((m - 69) / 12)
        vib = 1 + 0.006 * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
        y = _osc(f0 * vib, str(rng.choice(["saw", "square"])), rng, sr)
        cutoff = float(rng.uniform(4000, 9000))
        env = np.minimum(1.0, t / 0.01) * np.minimum(1.0, (seconds - t) / 0.05)
    else:
        raise ValueError(f"kind {kind!r}: choose from {', '.join(KINDS)}")
    sos = signal.butter(4, min(cutoff, 0.45 * sr), "lowpass", fs=sr, output="sos")
    if kind == "pad":
        sos = np.vstack([sos, signal.butter(2, 120, "highpass", fs=sr, output="sos")])
    y = signal.sosfilt(sos, y) * np.maximum(env, 0.0)
    peak = float(np.max(np.abs(y)))
    return (0.8 * y / peak if peak > 0 else y).astype(np.float32)


def stem(kind: str, seed: int, *, seconds: float, bpm: float = 120.0,
         sr: int = SR) -> np.ndarray:  # fmt: skip
    """A stem: one note per bar (pad) or per beat (bass, lead), notes from ``seed``."""
    rng = np.random.default_rng([99, KINDS.index(kind), seed])
    n = int(seconds * sr)
    beat = 60.0 / bpm
    length = 4 * beat if kind == "pad" else beat
    out = np.zeros(n, np.float32)
    start = 0.0
    k = 0
    while start < seconds:
        s = int(start * sr)
        y = note(kind, seed * 1000 + k % 4, seconds=length, sr=sr)  # a four-note riff
        out[s : s + y.size] += y[: n - s]
        start += length
        k += 1
    del rng
    return out


def write_one_shots(root: str | Path, *, seeds: range, seconds: float = 1.5,
                    sr: int = SR) -> list[Path]:  # fmt: skip
    """Write ``Bass/``, ``Pads/`` and ``Leads/`` folders of one-shots under ``root``."""
    out = []
    for kind, folder in (("bass", "Bass"), ("pad", "Pads"), ("lead", "Leads")):
        d = Path(root) / folder
        d.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            path = d / f"{kind}_{seed:03d}.wav"
            sf.write(path, note(kind, seed, seconds=seconds, sr=sr), sr, subtype="PCM_16")
            out.append(path)
    return out
