"""BS.1770 loudness, true peak and crest factor (emberd.dsp.loudness) against pyloudnorm."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dev_module

from emberd.dsp.loudness import SILENCE_LUFS, LoudnessMeter, integrated_loudness

SR = 44100


def _signals(sr: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    t = np.arange(sr * 8) / sr
    gate = (np.sin(2 * np.pi * 0.4 * t) > 0).astype(np.float64)
    return {
        "noise": 0.1 * rng.standard_normal(t.size),
        "low sine": 0.5 * np.sin(2 * np.pi * 60 * t),
        "high sine": 0.3 * np.sin(2 * np.pi * 9000 * t),
        # loud bursts over near-silence: exercises both gates
        "bursts": gate * 0.4 * rng.standard_normal(t.size) + 1e-4 * rng.standard_normal(t.size),
    }


@pytest.mark.parametrize("sr", [44100, 48000])
def test_integrated_matches_pyloudnorm(sr: int) -> None:
    pyln = dev_module("pyloudnorm")
    for name, x in _signals(sr).items():
        ref = pyln.Meter(sr).integrated_loudness(x)
        got = integrated_loudness(x, sr=sr)
        assert abs(got - ref) <= 0.1, (name, got, ref)


def test_997hz_full_scale_sine_reads_minus_3_01() -> None:
    # BS.1770-4 section 2.1: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS.
    t = np.arange(SR * 2) / SR
    m = LoudnessMeter(sr=SR, channels=1)
    m.push(np.sin(2 * np.pi * 997 * t)[None])
    assert m.momentary()[0] == pytest.approx(-3.01, abs=0.02)
    assert m.integrated()[0] == pytest.approx(-3.01, abs=0.02)


def test_pieces_of_any_size_give_the_same_figures() -> None:
    x = np.stack([_signals(SR)["bursts"], _signals(SR)["noise"]])
    whole = LoudnessMeter(sr=SR, channels=2)
    whole.push(x)
    parts = LoudnessMeter(sr=SR, channels=2)
    rng = np.random.default_rng(1)
    i = 0
    while i < x.shape[1]:
        n = int(rng.integers(0, 9000))
        parts.push(x[:, i : i + n])
        i += n
    for f in ("momentary", "short_term", "integrated", "true_peak_db", "crest_db"):
        np.testing.assert_allclose(getattr(parts, f)(), getattr(whole, f)(), atol=1e-9, err_msg=f)


def test_momentary_and_short_term_windows() -> None:
    m = LoudnessMeter(sr=SR, channels=1)
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    m.push(tone[None])
    loud = m.momentary()[0]
    assert m.short_term()[0] == pytest.approx(loud + 10 * np.log10(1 / 3), abs=0.05)
    m.push(np.zeros((1, SR // 2)))  # 500 ms of silence: momentary (400 ms) is empty
    assert m.momentary()[0] == SILENCE_LUFS
    assert m.short_term()[0] > loud - 6.0  # 1 s of tone still inside the 3 s window
    # Ten gating blocks pass the gates: 7 full of tone, 3 with 3/4, 1/2, 1/4 of it; the
    # all-silent ones are gated out.
    assert m.integrated()[0] == pytest.approx(loud + 10 * np.log10(8.5 / 10), abs=0.01)


def test_true_peak_sees_the_inter_sample_peak() -> None:
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * (SR / 4) * t + np.pi / 4)  # samples at +-0.707, waveform peak 1.0
    m = LoudnessMeter(sr=SR, channels=1)
    m.push(x[None])
    assert np.max(np.abs(x)) == pytest.approx(0.7071, abs=1e-3)
    assert m.true_peak_db()[0] == pytest.approx(0.0, abs=0.3)


def test_crest_factor() -> None:
    t = np.arange(SR * 2) / SR
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    square = 0.5 * np.sign(np.sin(2 * np.pi * 441 * t + 0.1))
    m = LoudnessMeter(sr=SR, channels=3)
    m.push(np.stack([sine, square, np.zeros_like(t)]))
    crest = m.crest_db()
    assert crest[0] == pytest.approx(3.01, abs=0.05)
    assert crest[1] == pytest.approx(0.0, abs=0.05)
    assert crest[2] == 0.0
    assert m.integrated()[2] == SILENCE_LUFS
    assert m.true_peak_db()[2] <= -120.0


def test_bad_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="need"):
        LoudnessMeter(sr=SR, channels=2).push(np.zeros((3, 10)))
