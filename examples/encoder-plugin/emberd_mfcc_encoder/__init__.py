"""emberd encoder plug-in: MFCC statistics over a mel window (numpy only).

emberd computes the mel frames with the front end named in ``manifest["frontend"]``
and calls ``embed`` with float32 ``[batch, frames, n_mels]``; it must return float32
``[batch, dim]`` with finite values (emberd checks, and refuses anything else before
it reaches a library). ``embed`` is called from one thread at a time.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

N_MFCC = 20  # cepstral coefficients kept
N_MELS = 96  # bands of the "aisfx" front-end preset
WINDOW_FRAMES = 43  # 1.0 s at the preset's 23.2 ms hop
HOP_FRAMES = 22  # windows overlap by half when indexing


def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II ``[n_in, n_out]`` (as scipy.fft.dct(norm="ortho"))."""
    k = np.arange(n_out)[None, :]
    n = np.arange(n_in)[:, None]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    m[:, 0] /= np.sqrt(2.0)
    return m.astype(np.float32)


class MfccStats:
    """Mean, standard deviation and mean |delta| of 20 MFCCs: 60 floats per window."""

    manifest: ClassVar[dict[str, Any]] = {
        "dim": 3 * N_MFCC,
        "frontend": "aisfx",  # 44.1 kHz, 96 bands, log-compressed and scaled by emberd
        "window_frames": WINDOW_FRAMES,
        "hop_frames": HOP_FRAMES,
        "min_frames": 2,
        "version": "0.1.0",
        "description": "20 MFCCs: mean, std and mean |delta| over the window",
        "licence": "MIT",
        "source": "examples/encoder-plugin in the emberd repository",
    }

    def __init__(self) -> None:
        self._dct = _dct_matrix(N_MELS, N_MFCC)

    def embed(self, mel: np.ndarray) -> np.ndarray:
        cep = mel @ self._dct  # [batch, frames, N_MFCC]
        delta = np.abs(np.diff(cep, axis=1)).mean(axis=1) if cep.shape[1] > 1 else (
            np.zeros((cep.shape[0], N_MFCC), np.float32))
        out = np.concatenate([cep.mean(axis=1), cep.std(axis=1), delta], axis=1)
        return np.ascontiguousarray(out, dtype=np.float32)


def factory(options: dict[str, str]) -> MfccStats:
    """The ``emberd.encoders`` entry point (``options``: device, threads -- unused here)."""
    return MfccStats()
