"""File and synthetic sources, load_audio and its refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import wav_bytes

from emberd.dsp.sources import (
    AudioSource,
    Block,
    FileSource,
    SynthSource,
    load_audio,
    synth_signal,
)
from emberd.errors import EmberdError


@pytest.fixture()
def stereo(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Two different channels at 48 kHz, 0.5 s."""
    t = np.arange(24000) / 48000
    data = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 3000 * t)], 1)
    path = tmp_path / "stereo.flac"
    sf.write(path, data, 48000, subtype="PCM_24")
    return path, sf.read(path, dtype="float32", always_2d=True)[0]


def test_load_audio_shapes_and_resampling(stereo: tuple[Path, np.ndarray]) -> None:
    path, data = stereo
    y, info = load_audio(path, sr=None, mono=False)
    assert y.shape == (24000, 2) and y.dtype == np.float32 and np.array_equal(y, data)
    assert (info.sr, info.channels, info.frames) == (48000, 2, 24000)
    assert info.duration_s == pytest.approx(0.5)
    mono, _ = load_audio(path, sr=None)
    assert mono.shape == (24000,) and np.allclose(mono, data.mean(axis=1), atol=1e-7)
    right, _ = load_audio(path, sr=None, channels=[1])
    assert np.array_equal(right, data[:, 1])
    low, _ = load_audio(path, sr=16000, channels=[1])
    assert low.shape == (8000,) and low.dtype == np.float32
    # The 3000 Hz channel survives resampling to 16 kHz with its amplitude (HQ soxr).
    assert np.abs(low[2000:6000]).max() == pytest.approx(0.25, abs=0.01)
    spectrum = np.abs(np.fft.rfft(low[2000:6000] * np.hanning(4000)))
    assert np.argmax(spectrum) * 16000 / 4000 == pytest.approx(3000, abs=8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is not audio at all" * 10), "cannot read audio"),
        (lambda p: sf.write(p, np.zeros(0), 44100), "empty"),
        (lambda p: sf.write(p, np.zeros(1), 44100), "only one sample"),
        (lambda p: sf.write(p, np.array([0.0, np.nan, 0.5]), 44100, subtype="FLOAT"), "NaN/Inf"),
        (lambda p: sf.write(p, np.array([0.0, np.inf, 0.5]), 44100, subtype="FLOAT"), "NaN/Inf"),
        (lambda p: p.write_bytes(wav_bytes(0, np.zeros(100))), "sample rate is 0"),
    ],
)
def test_bad_files_are_refused_in_one_line(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "bad.wav"
    make(path)  # type: ignore[operator]
    for opener in (
        lambda: load_audio(path, sr=44100),
        lambda: FileSource(path, sr=44100, pace="fast"),
    ):
        with pytest.raises(EmberdError, match=message) as info:
            opener()
        text = str(info.value)
        assert "\n" not in text and str(path) in text


def test_bad_parameters(stereo: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = stereo
    with pytest.raises(EmberdError, match="sample rate 0"):
        load_audio(path, sr=0)
    with pytest.raises(EmberdError, match="block size 0"):
        FileSource(path, sr=44100, block_size=0)
    with pytest.raises(EmberdError, match="channel 2"):
        FileSource(path, sr=None, channels=[2])
    with pytest.raises(EmberdError, match="pace"):
        FileSource(path, sr=None, pace="slow")
    with pytest.raises(EmberdError, match="folder"):
        load_audio(tmp_path, sr=None)


@pytest.mark.parametrize("block", [1, 256, 1000])
def test_file_source_equals_load_audio(stereo: tuple[Path, np.ndarray], block: int) -> None:
    path, _ = stereo
    ref, _ = load_audio(path, sr=44100, mono=False)
    src = FileSource(path, sr=44100, block_size=block, pace="fast")
    assert isinstance(src, AudioSource) and (src.sr, src.channels) == (44100, 2)
    with src:
        blocks = list(src)
    assert all(isinstance(b, Block) and b.data.dtype == np.float32 for b in blocks)
    assert all(b.data.shape == (block, 2) for b in blocks[:-1])
    starts = [b.start_sample for b in blocks]
    assert starts == list(range(0, ref.shape[0], block))
    got = np.concatenate([b.data for b in blocks])
    # Streaming soxr equals one-shot soxr on the whole file.
    assert got.shape == ref.shape and np.max(np.abs(got - ref)) < 1e-5
    # Capture times advance by exactly the block duration.
    times = np.array([b.capture_time for b in blocks])
    assert np.allclose(np.diff(times), block / 44100, rtol=0, atol=1e-6)  # float64 Unix time


def test_file_source_mono_channels_and_loop(stereo: tuple[Path, np.ndarray]) -> None:
    path, data = stereo
    with FileSource(path, sr=None, channels=[1], block_size=4096, pace="fast") as src:
        right = np.concatenate([b.data for b in src])
    assert right.shape == (24000, 1) and np.array_equal(right[:, 0], data[:, 1])
    with FileSource(path, sr=None, mono=True, block_size=5000, pace="fast", loop=True) as src:
        it = iter(src)
        looped = np.concatenate([next(it).data for _ in range(12)])  # 60000 > 2 x 24000
    assert src.channels == 1
    expect = np.tile(data.mean(axis=1), 3)[:60000]
    assert np.allclose(looped[:, 0], expect, atol=1e-6)


def test_file_source_realtime_pacing_schedule(stereo: tuple[Path, np.ndarray]) -> None:
    """Realtime blocks carry wall-clock capture times spaced by their duration."""
    path, _ = stereo
    with FileSource(path, sr=None, block_size=4800, pace="realtime") as src:
        blocks = list(src)
    times = np.array([b.capture_time for b in blocks])
    assert len(blocks) == 5 and np.allclose(np.diff(times), 0.1)


@pytest.mark.parametrize("kind", ["sine", "clicks", "noise", "silence", "mix"])
def test_synth_is_deterministic_across_block_sizes(kind: str) -> None:
    whole = synth_signal(kind, 0, 3 * 8000, sr=8000, seed=7)
    for block in (1, 333, 8000):
        src = SynthSource(kind, sr=8000, duration_s=3.0, block_size=block, seed=7, channels=2)
        data = np.concatenate([b.data for b in src])
        assert data.shape == (24000, 2)
        assert np.array_equal(data[:, 0], whole) and np.array_equal(data[:, 1], whole)
    if kind == "silence":
        assert not whole.any()
    else:
        assert np.abs(whole).max() > 0.1


def test_synth_signals_have_their_shape() -> None:
    sr = 8000
    sine = synth_signal("sine", 0, sr, sr=sr, freq_hz=1000.0)
    assert np.argmax(np.abs(np.fft.rfft(sine))) == 1000
    clicks = synth_signal("clicks", 0, sr, sr=sr)
    assert np.flatnonzero(clicks > 0.499).tolist() == [0, sr // 2]  # onsets
    assert clicks[sr // 4] == 0.0  # silent between clicks
    noise = synth_signal("noise", 0, 2 * sr, sr=sr, seed=1)
    assert np.count_nonzero(noise) == 2 * round(0.1 * sr)
    assert not np.array_equal(noise, synth_signal("noise", 0, 2 * sr, sr=sr, seed=2))
    with pytest.raises(EmberdError, match="synthetic signal"):
        synth_signal("square", 0, 10, sr=sr)


def test_endless_synth_stops_on_close() -> None:
    src = SynthSource("sine", duration_s=None, block_size=64)
    count = 0
    for _ in src:
        count += 1
        if count == 10:
            src.close()
    assert count == 10
