"""Mel filterbanks and analysis windows, built once per parameter set and cached.

Two filterbank families:

* ``librosa``: a re-implementation of ``librosa.filters.mel`` (HTK or Slaney mel scale,
  Slaney area normalisation or none), so librosa stays a test-only dependency;
* ``aisfx``: Essentia ``MelBands(warpingFormula='htkMel', weighting='warping',
  normalize='unit_sum')``: triangles linear in the HTK mel domain between ``n_mels + 2``
  equally spaced mel edges, evaluated at the FFT bin frequencies, each row scaled to sum 1.

Every function returns a read-only array cached with :func:`functools.cache`, so the
streaming front end and every batch call share one copy.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

from emberd.dsp.config import FrontEndConfig

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# Slaney mel scale constants (Auditory Toolbox, as in librosa).
_SLANEY_F_SP_HZ = 200.0 / 3.0  # Hz per mel below the break
_SLANEY_BREAK_HZ = 1000.0  # linear below, logarithmic above
_SLANEY_LOGSTEP = np.log(6.4) / 27.0  # natural-log step per mel above the break


def hz_to_mel(freqs: npt.ArrayLike, *, htk: bool = False) -> F64:
    """Convert Hz to mels (HTK: ``2595 log10(1 + f/700)``; else Slaney), like librosa."""
    f = np.asarray(freqs, dtype=np.float64)
    if htk:
        return np.asarray(2595.0 * np.log10(1.0 + f / 700.0))
    mels = f / _SLANEY_F_SP_HZ
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_F_SP_HZ
    above = f >= _SLANEY_BREAK_HZ
    safe = np.where(above, f, _SLANEY_BREAK_HZ)  # avoid log(0) in the unused branch
    return np.asarray(
        np.where(above, break_mel + np.log(safe / _SLANEY_BREAK_HZ) / _SLANEY_LOGSTEP, mels)
    )


def mel_to_hz(mels: npt.ArrayLike, *, htk: bool = False) -> F64:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mels, dtype=np.float64)
    if htk:
        return np.asarray(700.0 * (10.0 ** (m / 2595.0) - 1.0))
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_F_SP_HZ
    return np.asarray(
        np.where(
            m >= break_mel,
            _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOGSTEP * (m - break_mel)),
            _SLANEY_F_SP_HZ * m,
        )
    )


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _triangles(edges_hz: F64, bin_hz: F64) -> F64:
    """Triangles rising from edge i to i+1 and falling to i+2, as in librosa."""
    fdiff = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, bin_hz)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    return np.asarray(np.maximum(0.0, np.minimum(lower, upper)))


@functools.cache
def librosa_mel(
    *, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str | None
) -> F32:
    """Mel filterbank equal to ``librosa.filters.mel`` (float32, ``[n_mels, n_fft//2+1]``).

    Parameters
    ----------
    sr, n_fft, n_mels : int
        Sample rate (Hz), FFT size (samples), number of bands.
    fmin, fmax : float
        Frequency range in Hz.
    htk : bool
        HTK mel formula instead of Slaney's.
    norm : {"slaney", None}
        Slaney area normalisation (``2 / bandwidth``) or none.

    Returns
    -------
    ndarray, read-only
    """
    bin_hz = np.asarray(np.fft.rfftfreq(n_fft, d=1.0 / sr), dtype=np.float64)
    mel_edges = np.linspace(hz_to_mel(fmin, htk=htk), hz_to_mel(fmax, htk=htk), n_mels + 2)
    edges_hz = mel_to_hz(mel_edges, htk=htk)
    weights = _triangles(edges_hz, bin_hz).astype(np.float32)
    if norm == "slaney":
        enorm = 2.0 / (edges_hz[2 : n_mels + 2] - edges_hz[:n_mels])
        weights *= enorm[:, None].astype(np.float32)
    return _readonly(weights)


@functools.cache
def aisfx_mel(*, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> F32:
    """Essentia ``MelBands`` 'warping'/'unit_sum'/htkMel filterbank (float32).

    Triangles are linear in the HTK mel domain between ``n_mels + 2`` equally spaced mel
    edges over ``[fmin, fmax]``, evaluated at the FFT bin frequencies (in mels), and each
    row is scaled to sum 1 (rows with no bin inside stay zero).

    Returns
    -------
    ndarray, read-only, ``[n_mels, n_fft//2+1]``
    """
    bin_mel = hz_to_mel(np.fft.rfftfreq(n_fft, d=1.0 / sr), htk=True)
    edges_mel = np.linspace(hz_to_mel(fmin, htk=True), hz_to_mel(fmax, htk=True), n_mels + 2)
    weights = _triangles(edges_mel, bin_mel)
    sums = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, sums, out=np.zeros_like(weights), where=sums > 0)
    return _readonly(weights.astype(np.float32))


def mel_filterbank(config: FrontEndConfig) -> F32:
    """The cached filterbank ``[n_mels, n_fft//2+1]`` for ``config``."""
    if config.filterbank == "aisfx":
        return aisfx_mel(
            sr=config.sr,
            n_fft=config.n_fft,
            n_mels=config.n_mels,
            fmin=float(config.fmin),
            fmax=config.fmax_hz,
        )
    return librosa_mel(
        sr=config.sr,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=float(config.fmin),
        fmax=config.fmax_hz,
        htk=config.htk,
        norm=config.norm,
    )


@functools.cache
def analysis_window(*, kind: str, win_length: int, n_fft: int) -> F32:
    """Analysis window zero-padded (centred) to ``n_fft`` samples, float32, read-only.

    ``"hann"`` is the periodic Hann (``scipy.signal.get_window('hann', N)``, librosa);
    ``"hann_symmetric"`` divides by ``N - 1`` (Essentia ``Windowing(type='hann')``),
    not normalised.
    """
    n = np.arange(win_length, dtype=np.float64)
    denom = win_length if kind == "hann" else max(win_length - 1, 1)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / denom)
    if win_length == 1:
        w = np.ones(1)
    out = np.zeros(n_fft, dtype=np.float64)
    left = (n_fft - win_length) // 2  # librosa.util.pad_center
    out[left : left + win_length] = w
    return _readonly(out.astype(np.float32))


def config_window(config: FrontEndConfig) -> F32:
    """The cached analysis window for ``config``."""
    return analysis_window(kind=config.window, win_length=config.win_length, n_fft=config.n_fft)
