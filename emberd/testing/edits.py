"""What producers do to samples: the identification benchmark's query edits (issue 13).

Each edit maps ``(audio at drumkits.SR, query index) -> audio`` and is
deterministic for a seed. :func:`edits` returns the four transforms of
:func:`emberd.testing.drumkits.transforms` (noise, detune + low-pass, reverb,
a mix) and these, each on its own:

* ``pitch+N`` / ``pitch-N`` (N = 1, 2, 3 semitones): resampled, as a sampler
  plays a sample at another key: pitch and length change together;
* ``keep+2`` / ``keep-2``: pitch-preserving shift by 2 semitones (phase
  vocoder time stretch, then resampling: length unchanged);
* ``stretch+10`` / ``stretch-10``: 10 % longer / shorter without pitch change
  (phase vocoder);
* ``trim10`` / ``trim25`` / ``trim50``: the first 10, 25, 50 ms after the
  onset cut off (a chopped attack, no fade: the click a sampler makes);
* ``tail``: only the first max(TAIL_MIN_S, TAIL_SHARE of the sound) after the
  onset kept, faded out over TAIL_FADE_S;
* ``reverse``: played backwards;
* ``lofi11k``: down-sampled to 11.025 kHz and back; ``lofi8bit``: 8-bit
  quantisation at full scale (quiet samples lose more).

:func:`non_library` gives sounds that are in no library (synthetic one-shots
of another seed): the honest answer for them is ``"similar"`` at most.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from emberd.testing import drumkits as dk

SR = dk.SR
PITCH_SEMITONES = (1, 2, 3)
KEEP_SEMITONES = 2
STRETCH_PERCENT = 10
TRIM_MS = (10, 25, 50)
TAIL_MIN_S = 0.1
TAIL_SHARE = 0.4
TAIL_FADE_S = 0.01
LOFI_SR = 11025
ONSET_DBFS_BELOW_PEAK = 40.0  # the attack starts where |y| first comes within this of its peak

Edit = Callable[[np.ndarray, int], np.ndarray]

#: Every edit name, in report order (the four drumkits transforms first).
EDITS: tuple[str, ...] = (
    *dk.TRANSFORMS,
    *(f"pitch{s:+d}" for k in PITCH_SEMITONES for s in (k, -k)),
    f"keep+{KEEP_SEMITONES}", f"keep-{KEEP_SEMITONES}",
    f"stretch+{STRETCH_PERCENT}", f"stretch-{STRETCH_PERCENT}",
    *(f"trim{ms}" for ms in TRIM_MS),
    "tail", "reverse", "lofi11k", "lofi8bit",
)


def attack_start(y: np.ndarray) -> int:
    """First sample whose magnitude is within ONSET_DBFS_BELOW_PEAK of the peak."""
    a = np.abs(y)
    if len(a) == 0 or a.max() == 0:
        return 0
    return int(np.argmax(a >= a.max() * 10 ** (-ONSET_DBFS_BELOW_PEAK / 20)))


def _resample_pitch(y: np.ndarray, semitones: float) -> np.ndarray:
    import soxr

    return np.asarray(soxr.resample(y, SR * 2 ** (semitones / 12), SR), np.float32)


def edits(
    pool_audio: list[np.ndarray], seed: int, mixed_in: list[int] | None = None
) -> dict[str, Edit]:
    """All :data:`EDITS` by name (seeded; ``mixed_in`` as in ``drumkits.transforms``)."""
    import librosa
    import soxr

    out: dict[str, Edit] = dict(dk.transforms(pool_audio, seed, mixed_in))

    def pitch(semitones: int) -> Edit:
        return lambda y, i: _resample_pitch(y, semitones)

    def keep(semitones: int) -> Edit:
        return lambda y, i: np.asarray(
            librosa.effects.pitch_shift(y, sr=SR, n_steps=semitones), np.float32
        )

    def stretch(percent: int) -> Edit:
        # librosa's rate > 1 speeds up: a sound 10 % longer plays at rate 1 / 1.1.
        return lambda y, i: np.asarray(
            librosa.effects.time_stretch(y, rate=1.0 / (1.0 + percent / 100)), np.float32
        )

    def trim(ms: int) -> Edit:
        return lambda y, i: y[attack_start(y) + int(ms * SR / 1000) :].copy()

    def tail(y: np.ndarray, i: int) -> np.ndarray:
        a = attack_start(y)
        n = max(int(TAIL_MIN_S * SR), int(TAIL_SHARE * (len(y) - a)))
        cut = y[: a + n].copy()
        fade = min(int(TAIL_FADE_S * SR), len(cut))
        cut[len(cut) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        return cut

    def lofi11k(y: np.ndarray, i: int) -> np.ndarray:
        low = soxr.resample(y, SR, LOFI_SR)
        return np.asarray(soxr.resample(low, LOFI_SR, SR), np.float32)

    def lofi8bit(y: np.ndarray, i: int) -> np.ndarray:
        return (np.round(np.clip(y, -1.0, 1.0) * 127.0) / 127.0).astype(np.float32)

    for k in PITCH_SEMITONES:
        out[f"pitch+{k}"], out[f"pitch-{k}"] = pitch(k), pitch(-k)
    out[f"keep+{KEEP_SEMITONES}"] = keep(KEEP_SEMITONES)
    out[f"keep-{KEEP_SEMITONES}"] = keep(-KEEP_SEMITONES)
    out[f"stretch+{STRETCH_PERCENT}"] = stretch(STRETCH_PERCENT)
    out[f"stretch-{STRETCH_PERCENT}"] = stretch(-STRETCH_PERCENT)
    for ms in TRIM_MS:
        out[f"trim{ms}"] = trim(ms)
    out["tail"] = tail
    out["reverse"] = lambda y, i: y[::-1].copy()
    out["lofi11k"] = lofi11k
    out["lofi8bit"] = lofi8bit
    assert tuple(out) == EDITS, "EDITS and edits() disagree"
    return out


def non_library(n: int, seed: int) -> list[np.ndarray]:
    """``n`` synthetic one-shots and loops that no library holds (``seed`` != the test
    library's distractor seed 0)."""
    import tempfile
    from pathlib import Path

    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        paths = dk.write_distractors(Path(tmp), n, seed=seed)
        return [sf.read(p, dtype="float32")[0] for p in paths]
