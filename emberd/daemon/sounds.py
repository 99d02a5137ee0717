"""Synthesised one-shots and a performance made of them (demo library and synth input).

Deterministic: the same ``(kind, variant)`` always gives the same samples. The demo
library holds :data:`VARIANTS` one-shots of each kind in a folder named after the kind
(``Kicks/kick 1.wav`` ...); the performance plays *other* variants of the same kinds
(different seeds and pitches), so the daemon finds similar sounds, not copies.
"""

from __future__ import annotations

import functools

import numpy as np

SR = 44100  # Hz, sample rate of everything synthesised here
VARIANTS = 4  # one-shots per kind in the demo library
PERFORMANCE_VARIANT_OFFSET = 100  # performance variants never equal library variants
BEAT_S = 0.6  # s between events in the performance (100 BPM)
PEAK = 0.8  # peak level of each one-shot (-1.9 dBFS)
MIX_GAIN = 0.7  # per-event gain in the performance, headroom for overlapping tails

#: Library folder per kind.
FOLDERS = {
    "kick": "Kicks",
    "snare": "Snares",
    "hat": "Hats",
    "clap": "Claps",
    "bass": "Bass",
    "pad": "Pads",
}

#: The performance: one kind per beat, repeated.
PATTERN = ("kick", "hat", "snare", "hat", "kick", "clap", "bass", "hat",
           "kick", "hat", "snare", "pad", "pad", "bass", "clap", "hat")  # fmt: skip


def _env(n: int, sr: int, decay_s: float, attack_s: float = 0.002) -> np.ndarray:
    t = np.arange(n) / sr
    env = np.exp(-t / decay_s)
    att = max(1, int(attack_s * sr))
    env[:att] *= np.linspace(0.0, 1.0, att)
    return env


def _onepole_lowpass(x: np.ndarray, cutoff_hz: float, sr: int) -> np.ndarray:
    a = np.exp(-2.0 * np.pi * cutoff_hz / sr)
    y = np.empty_like(x)
    acc = 0.0
    for i, v in enumerate(x):  # short one-shots: a Python loop is fine here
        acc = (1.0 - a) * v + a * acc
        y[i] = acc
    return y


def _saw(freq: float, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    t = np.arange(n) / sr
    return 2.0 * ((t * freq + phase) % 1.0) - 1.0


@functools.lru_cache(maxsize=128)
def one_shot(kind: str, variant: int, *, sr: int = SR) -> np.ndarray:
    """One synthesised sound of ``kind`` (a key of :data:`FOLDERS`), float32 mono (cached:
    do not modify the returned array)."""
    rng = np.random.default_rng([sum(map(ord, kind)), variant])
    jitter = 1.0 + 0.08 * (rng.random() - 0.5) + 0.04 * (variant % 4)
    if kind == "kick":
        n = int(0.5 * sr)
        t = np.arange(n) / sr
        f = 45.0 * jitter + 110.0 * np.exp(-t / 0.04)
        x = np.sin(2 * np.pi * np.cumsum(f) / sr) * _env(n, sr, 0.18)
        x[: int(0.004 * sr)] += 0.3 * rng.standard_normal(int(0.004 * sr))
    elif kind == "snare":
        n = int(0.3 * sr)
        t = np.arange(n) / sr
        noise = rng.standard_normal(n)
        noise = noise - _onepole_lowpass(noise, 900.0, sr)
        tone = np.sin(2 * np.pi * 185.0 * jitter * t)
        x = 0.7 * noise * _env(n, sr, 0.07) + 0.5 * tone * _env(n, sr, 0.05)
    elif kind == "hat":
        n = int(0.12 * sr)
        noise = rng.standard_normal(n)
        x = np.diff(noise, prepend=0.0) * _env(n, sr, 0.025 * jitter, 0.001)
    elif kind == "clap":
        n = int(0.35 * sr)
        noise = rng.standard_normal(n)
        band = _onepole_lowpass(noise, 2500.0, sr) - _onepole_lowpass(noise, 800.0, sr)
        env = _env(n, sr, 0.09 * jitter)
        for k in range(3):  # three quick hand hits before the tail
            s = int((0.011 * k) * sr)
            env[s : s + int(0.006 * sr)] += 1.0
        x = band * env
    elif kind == "bass":
        n = int(0.9 * sr)
        note = 55.0 * 2 ** ((variant % 5) / 12) * jitter
        x = _onepole_lowpass(_saw(note, n, sr), 400.0, sr) * _env(n, sr, 0.5, 0.005)
    elif kind == "pad":
        n = int(1.8 * sr)
        root = 220.0 * 2 ** ((variant % 3) / 12) * jitter
        x = np.zeros(n)
        for ratio, det in ((1.0, 0.997), (1.26, 1.003), (1.5, 0.999), (2.0, 1.002)):
            x += _saw(root * ratio * det, n, sr, phase=float(rng.random()))
        x = _onepole_lowpass(x, 1800.0, sr)
        t = np.arange(n) / sr
        x *= np.minimum(1.0, t / 0.35) * np.minimum(1.0, (t[-1] - t) / 0.4)
    else:
        raise ValueError(f"unknown one-shot kind {kind!r}")
    peak = float(np.max(np.abs(x))) or 1.0
    return (x * (PEAK / peak)).astype(np.float32)


def performance(*, sr: int = SR, seconds: float = 20.0) -> np.ndarray:
    """A mono performance of ``seconds``: :data:`PATTERN` one beat apart, looping."""
    n = int(seconds * sr)
    out = np.zeros(n, dtype=np.float32)
    beat = int(BEAT_S * sr)
    for i, start in enumerate(range(0, n, beat)):
        kind = PATTERN[i % len(PATTERN)]
        x = one_shot(kind, PERFORMANCE_VARIANT_OFFSET + i % 7, sr=sr)
        end = min(n, start + x.size)
        out[start:end] += MIX_GAIN * x[: end - start]
    np.clip(out, -1.0, 1.0, out=out)  # overlapping tails may still add up
    return out
