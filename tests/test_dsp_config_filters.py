"""Front-end config, presets, filterbanks and windows against librosa and Essentia."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import dev_module, rel

from emberd.dsp import filters
from emberd.dsp.config import AISFX_SCALE_MAX, PRESETS, FrontEndConfig, preset
from emberd.errors import EmberdError


def test_aisfx_preset_is_the_training_front_end() -> None:
    c = preset("aisfx")
    assert (c.sr, c.n_fft, c.win_length, c.hop_length, c.n_mels) == (44100, 2048, 2048, 1024, 96)
    assert c.window == "hann_symmetric" and c.center and c.power == 2.0
    assert (c.fmin, c.fmax_hz, c.filterbank) == (0.0, 22050.0, "aisfx")
    assert c.compression == "log10_1e4" and c.framing == "essentia"
    assert (c.scale_min, c.scale_max) == (0.0, AISFX_SCALE_MAX) == (0.0, 9.457798957824707)


def test_librosa_preset_matches_librosa_defaults() -> None:
    c = preset("librosa")
    assert (c.sr, c.n_fft, c.hop_length, c.n_mels, c.htk, c.norm) == (
        22050, 2048, 512, 128, False, "slaney",
    )
    assert c.window == "hann" and c.pad_mode == "constant" and c.compression == "none"


def test_preset_overrides_and_errors() -> None:
    c = preset("librosa", sr=44100, htk=True, norm=None)
    assert (c.sr, c.htk, c.norm) == (44100, True, None)
    assert PRESETS["librosa"].sr == 22050  # the preset itself is untouched
    with pytest.raises(EmberdError, match="unknown"):
        preset("nope")
    with pytest.raises(EmberdError, match="unknown field"):
        preset("aisfx", n_fft_typo=1)
    for bad in ({"sr": 0}, {"hop_length": 0}, {"n_fft": 512, "win_length": 1024},
                {"power": 3.0}, {"window": "hamming"}, {"fmax": 30000.0},
                {"scale_max": 0.0}, {"pad_mode": "reflect"}):
        with pytest.raises(EmberdError, match="front end"):
            preset("aisfx", **bad)


def test_config_is_hashable_and_frozen() -> None:
    c = preset("aisfx")
    assert hash(c) == hash(preset("aisfx"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.sr = 1  # type: ignore[misc]


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("norm", ["slaney", None])
@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [(22050, 2048, 128, 0.0, None), (44100, 1024, 64, 30.0, 8000.0), (16000, 512, 40, 0.0, None)],
)
def test_librosa_filterbank_equals_librosa(
    htk: bool, norm: str | None, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> None:
    librosa = dev_module("librosa")
    ours = filters.librosa_mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax or sr / 2, htk=htk, norm=norm
    )
    ref = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm
    )
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert rel(ours, ref) < 1e-6


def test_aisfx_filterbank_equals_essentia_melbands() -> None:
    es = dev_module("essentia.standard")
    mb = es.MelBands(
        numberBands=96, lowFrequencyBound=0, highFrequencyBound=22050, warpingFormula="htkMel",
        weighting="warping", normalize="unit_sum", type="power", inputSize=1025, sampleRate=44100,
    )
    eye = np.eye(1025, dtype=np.float32)
    # MelBands is linear in the (squared) input; a unit bin probes one column.
    ref = np.stack([mb(eye[k]) for k in range(1025)], axis=1)
    ours = filters.mel_filterbank(preset("aisfx"))
    assert np.max(np.abs(ours - ref)) < 1e-6
    assert np.allclose(ours.sum(axis=1), 1.0, atol=1e-5)


def test_filterbanks_are_cached_and_read_only() -> None:
    a = filters.mel_filterbank(preset("aisfx"))
    assert a is filters.mel_filterbank(preset("aisfx"))
    assert not a.flags.writeable
    w = filters.config_window(preset("librosa"))
    assert w is filters.config_window(preset("librosa")) and not w.flags.writeable


def test_windows() -> None:
    scipy_signal = dev_module("scipy.signal")
    periodic = filters.analysis_window(kind="hann", win_length=2048, n_fft=2048)
    assert np.allclose(periodic, scipy_signal.get_window("hann", 2048), atol=1e-7)
    sym = filters.analysis_window(kind="hann_symmetric", win_length=2048, n_fft=2048)
    assert np.allclose(sym, np.hanning(2048), atol=1e-7)  # numpy's is symmetric
    assert sym[0] == 0.0 and sym[-1] == pytest.approx(0.0, abs=1e-7)
    short = filters.analysis_window(kind="hann", win_length=1000, n_fft=2048)
    assert np.all(short[:524] == 0) and np.all(short[1524:] == 0)  # centred like librosa


def test_mel_scale_round_trip() -> None:
    f = np.array([0.0, 100.0, 999.0, 1000.0, 4000.0, 22050.0])
    for htk in (False, True):
        assert np.allclose(filters.mel_to_hz(filters.hz_to_mel(f, htk=htk), htk=htk), f)
    assert filters.hz_to_mel(1000.0, htk=False) == pytest.approx(15.0)
    assert isinstance(FrontEndConfig().n_bins, int)
