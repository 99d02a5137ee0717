"""Streaming front end == batch front end == librosa / Essentia.

"Relative" error here is ``max |ours - reference| / max |reference|`` over the whole
mel matrix: the worst element error measured against the signal's own scale.
"""

from __future__ import annotations

import contextlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import dev_module, rel
from hypothesis import given, settings
from hypothesis import strategies as st

from emberd.dsp.config import preset
from emberd.dsp.frontend import StreamingFrontEnd, melspectrogram, n_frames_for
from emberd.dsp.sources import load_audio, synth_signal
from emberd.errors import EmberdError
from emberd.testing import parity
from emberd.testing.parity import drum_files, stream

BLOCK_SIZES = [1, 64, 256, 1000, 4096]
# Within ~10x of the worst figure bench/bounds.py measures (README, Audio front end):
STREAM_TOL = 1e-6  # streaming vs batch: measured 0 (same arithmetic); ~8 float32 ulps of slack
LIBROSA_TOL = 2e-5  # librosa preset vs librosa: measured 4.4e-6 (worst: dB compression)
ESSENTIA_TOL = 1e-4  # aisfx preset vs Essentia (float32 inside Essentia): measured 1.2e-5




@pytest.fixture(scope="module")
def mix() -> np.ndarray:
    return synth_signal("mix", 0, 3 * 44100 + 123, sr=44100, seed=3)


@pytest.mark.parametrize("name", ["librosa", "aisfx"])
@pytest.mark.parametrize("block", BLOCK_SIZES)
def test_stream_equals_batch(name: str, block: int, mix: np.ndarray) -> None:
    config = preset(name)
    y = mix if block > 1 else mix[: 44100 // 2 + 7]  # block 1 is slow in Python; 0.5 s
    ref = melspectrogram(y, config)
    assert rel(stream(y, config, [block]), ref) <= STREAM_TOL


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["librosa", "aisfx"]),
    splits=st.lists(st.integers(1, 3000), min_size=1, max_size=12),
    length=st.integers(1, 20000),
)
def test_stream_equals_batch_random_splits(name: str, splits: list[int], length: int) -> None:
    y = synth_signal("noise", 0, length, sr=44100, seed=length) + synth_signal(
        "sine", 0, length, sr=44100, freq_hz=1234.5
    )
    config = preset(name)
    ref = melspectrogram(y, config)
    assert rel(stream(y, config, splits), ref) <= STREAM_TOL


@pytest.mark.parametrize(
    "overrides",
    [{}, {"htk": True}, {"norm": None}, {"compression": "db"}, {"power": 1.0},
     {"sr": 44100, "n_fft": 1024, "hop_length": 256, "win_length": 800, "n_mels": 64,
      "fmin": 40.0, "fmax": 12000.0}],
)
def test_librosa_preset_equals_librosa(drumkit_dir: Path, overrides: dict) -> None:
    librosa = dev_module("librosa")
    config = preset("librosa", **overrides)
    for path in drum_files(drumkit_dir, 3):
        y, _ = load_audio(path, sr=config.sr)
        ref = librosa.feature.melspectrogram(
            y=y, sr=config.sr, n_fft=config.n_fft, hop_length=config.hop_length,
            win_length=config.win_length, power=config.power, n_mels=config.n_mels,
            fmin=config.fmin, fmax=config.fmax, htk=config.htk, norm=config.norm,
        ).T
        if config.compression == "db":
            ref = librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=None)
        assert rel(melspectrogram(y, config), ref) <= LIBROSA_TOL, path
        assert rel(stream(y, config, [256]), ref) <= LIBROSA_TOL, path


def essentia_aisfx(y: np.ndarray) -> np.ndarray:
    """The aiSFX training chain in Essentia (a dev dependency: skip, or fail in CI)."""
    return parity.essentia_aisfx(y, dev_module("essentia.standard"))


def test_aisfx_preset_equals_essentia(drumkit_dir: Path) -> None:
    config = preset("aisfx")
    for path in drum_files(drumkit_dir, 4):
        y, _ = load_audio(path, sr=44100)
        ref = essentia_aisfx(y)
        assert rel(melspectrogram(y, config), ref) <= ESSENTIA_TOL, path
        assert rel(stream(y, config, [256]), ref) <= ESSENTIA_TOL, path


@pytest.mark.parametrize("length", [2, 500, 1023, 1024, 1025, 2047, 2048, 2049, 3000, 5000])
def test_aisfx_end_of_stream_matches_framecutter(length: int) -> None:
    """Frame count and the zero-padded last frames match FrameCutter at every edge case."""
    y = synth_signal("noise", 0, length, sr=44100, seed=1) + 0.01
    ref = essentia_aisfx(y)
    assert n_frames_for(length, preset("aisfx")) == ref.shape[0]
    assert rel(stream(y, preset("aisfx"), [256]), ref) <= ESSENTIA_TOL


@pytest.mark.parametrize("length", [2048, 2600, 5000])
def test_librosa_uncentred(length: int) -> None:
    librosa = dev_module("librosa")
    y = synth_signal("noise", 0, length, sr=22050, seed=4) + 0.01
    ref = librosa.feature.melspectrogram(y=y, sr=22050, center=False).T
    config = preset("librosa", center=False)
    assert n_frames_for(2047, config) == 0  # librosa refuses a signal shorter than n_fft
    assert rel(melspectrogram(y, config), ref) <= LIBROSA_TOL
    assert rel(stream(y, config, [300]), ref) <= LIBROSA_TOL


@pytest.mark.parametrize("length", [1, 500, 512, 513, 2048, 5000])
def test_librosa_frame_count_at_edges(length: int) -> None:
    librosa = dev_module("librosa")
    y = synth_signal("noise", 0, length, sr=22050, seed=2) + 0.01
    with pytest.warns(UserWarning) if length < 2048 else contextlib.nullcontext():
        ref = librosa.feature.melspectrogram(y=y, sr=22050).T
    assert rel(stream(y, preset("librosa"), [100]), ref) <= LIBROSA_TOL


@pytest.mark.parametrize("name", ["librosa", "aisfx"])
def test_push_allocates_nothing_after_warm_up(name: str) -> None:
    fe = StreamingFrontEnd(preset(name))
    block = synth_signal("mix", 0, 256, sr=44100)
    for _ in range(40):
        fe.push(block)
    frames_before = fe.total_frames
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(400):
            fe.push(block)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert fe.total_frames - frames_before >= 100  # frames were really computed
    # One spectrum (1025 complex128) would be 16 KB; views and ints stay well below.
    assert peak < 8192, peak


def test_latest_frames_and_counter() -> None:
    config = preset("aisfx")
    y = synth_signal("mix", 0, 44100, sr=44100)
    fe = StreamingFrontEnd(config, frame_capacity=16)
    out = np.zeros((8, config.n_mels), dtype=np.float32)
    for i in range(0, y.size, 512):
        fe.push(y[i : i + 512])
    assert fe.total_frames == (1024 + y.size - 2048) // 1024 + 1  # complete frames so far
    assert fe.frames.latest(8, out) == 8
    ref = melspectrogram(y, config)
    assert rel(out, ref[fe.total_frames - 8 : fe.total_frames]) <= STREAM_TOL


def test_flush_then_push_is_an_error_and_reset_restarts() -> None:
    config = preset("librosa")
    fe = StreamingFrontEnd(config)
    y = synth_signal("sine", 0, 3000, sr=22050)
    fe.push(y)
    fe.flush()
    assert fe.flush() == 0
    with pytest.raises(EmberdError, match="push after flush"):
        fe.push(y)
    fe.reset()
    first = fe.total_frames
    fe.push(y)
    fe.flush()
    assert fe.total_frames - first == n_frames_for(3000, config)


def test_bad_input() -> None:
    with pytest.raises(EmberdError, match="mono"):
        melspectrogram(np.zeros((10, 2)), preset("librosa"))
    with pytest.raises(EmberdError, match="NaN"):
        melspectrogram(np.array([0.0, np.nan, 1.0]), preset("librosa"))
    with pytest.raises(EmberdError, match="mono"):
        StreamingFrontEnd(preset("aisfx")).push(np.zeros((4, 2)))
    assert melspectrogram(np.zeros(0), preset("aisfx")).shape == (0, 96)
