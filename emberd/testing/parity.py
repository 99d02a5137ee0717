"""Front-end parity references shared by ``tests/test_dsp_frontend.py`` and ``bench/bounds.py``.

The tests assert bounds; the bench prints the figures those bounds sit above,
so each tolerance can be checked against a measurement (issue 20: within ~10x).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from emberd.dsp.config import FrontEndConfig
from emberd.dsp.frontend import StreamingFrontEnd, n_frames_for

AISFX_LOG_MAX = 9.457798957824707  # aiSFX's compression scale (its training statistics)


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    assert a.shape == ref.shape, (a.shape, ref.shape)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def stream(y: np.ndarray, config: FrontEndConfig, splits: list[int]) -> np.ndarray:
    """Push ``y`` in blocks of the given sizes (cycled), flush, return all frames."""
    fe = StreamingFrontEnd(config, frame_capacity=n_frames_for(y.size, config) + 1)
    pos, i = 0, 0
    new = 0
    while pos < y.size:
        n = splits[i % len(splits)]
        new += fe.push(y[pos : pos + n])
        pos += n
        i += 1
    new += fe.flush()
    assert new == fe.total_frames == n_frames_for(y.size, config)
    return fe.frames.to_array()


def drum_files(drumkit_dir: Path, count: int) -> list[Path]:
    """``count`` WAV/FLAC files spread over the kits."""
    files = sorted(p for p in drumkit_dir.glob("*/*") if p.suffix.lower() in (".wav", ".flac"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def essentia_aisfx(y: np.ndarray, es: Any | None = None) -> np.ndarray:
    """The aiSFX training chain in essentia.standard, plus its compression and scaling."""
    es = es if es is not None else importlib.import_module("essentia.standard")
    cutter = es.FrameCutter(frameSize=2048, hopSize=1024, startFromZero=False)
    window = es.Windowing(type="hann", normalized=False)
    spectrum = es.Spectrum(size=2048)
    mel = es.MelBands(
        numberBands=96, lowFrequencyBound=0, highFrequencyBound=22050, warpingFormula="htkMel",
        weighting="warping", normalize="unit_sum", type="power", inputSize=1025,
        sampleRate=44100,
    )
    frames = []
    signal = np.ascontiguousarray(y, dtype=np.float32)
    while True:
        frame = cutter(signal)
        if len(frame) == 0:
            break
        frames.append(mel(spectrum(window(frame))))
    bands = np.array(frames, dtype=np.float64).reshape(-1, 96)
    return np.log10(1e4 * bands + 1.0) / AISFX_LOG_MAX
