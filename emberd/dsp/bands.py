"""Band energies from a spectrum: 1/3-octave (spectral balance) and critical bands (masking).

:func:`band_matrix` maps the power of ``rfft`` bins onto bands by the fraction
of each bin's width that falls inside the band, so a band narrower than a bin
(20 Hz at 44.1 kHz with a 4096-point FFT is 1.9 bins wide) still gets its
share and the bands' total equals the spectrum's total inside their range.

* :func:`third_octave_edges`: ISO 266 base-10 1/3-octave bands, 20 Hz - 20 kHz
  (31 bands), cut at Nyquist.
* :func:`critical_band_edges`: Zwicker's 24 critical bands (Bark scale,
  Zwicker 1961 table), cut at Nyquist.

:class:`SpectralBalance` is the live 1/3-octave balance of ``C`` stems: each
call measures the newest window, and the balance is an exponential average of
band powers (time constant :data:`BALANCE_TAU_S`), reported in dB relative to
the stem's own total so stems at different levels compare by *shape* (what
Tonal Balance Control displays).  :func:`reference_curve` turns a file or a
list of ``(Hz, dB)`` points into a curve on the same bands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

THIRD_OCTAVE_LOW_HZ = 20.0
THIRD_OCTAVE_HIGH_HZ = 20000.0
BALANCE_TAU_S = 3.0  # averaging time of the live spectral balance
POWER_FLOOR = 1e-20  # power that reads as silence (-200 dB)

#: Zwicker's critical-band edges in Hz (24 bands).
ZWICKER_EDGES_HZ = (
    0, 100, 200, 300, 400, 510, 630, 770, 920, 1080, 1270, 1480, 1720, 2000, 2320,
    2700, 3150, 3700, 4400, 5300, 6400, 7700, 9500, 12000, 15500,
)  # fmt: skip


def third_octave_centres(*, sr: int) -> np.ndarray:
    """ISO 1/3-octave centre frequencies (Hz) from 20 Hz to 20 kHz whose band fits below Nyquist."""
    k = np.arange(-17, 14)  # 1000 * 10^(k/10): 19.95 Hz ... 19.95 kHz
    centres = 1000.0 * 10.0 ** (k / 10.0)
    return centres[centres * 10.0 ** (1.0 / 20.0) <= sr / 2.0]


def third_octave_edges(*, sr: int) -> np.ndarray:
    """Band edges (Hz), ``len(centres) + 1`` values, of :func:`third_octave_centres`."""
    centres = third_octave_centres(sr=sr)
    half = 10.0 ** (1.0 / 20.0)
    return np.concatenate([centres / half, centres[-1:] * half])


def critical_band_edges(*, sr: int) -> np.ndarray:
    """Zwicker critical-band edges (Hz) up to Nyquist (15.5 kHz to Nyquist is a last band)."""
    edges = np.array(ZWICKER_EDGES_HZ, dtype=np.float64)
    nyq = sr / 2.0
    inside = edges[edges < nyq]
    return np.concatenate([inside, [nyq]]) if inside[-1] < nyq else inside


def hz_to_bark(f: np.ndarray | float) -> np.ndarray:
    """Zwicker & Terhardt (1980) critical-band rate of frequency ``f`` (Hz)."""
    f = np.asarray(f, dtype=np.float64)
    return 13.0 * np.arctan(0.00076 * f) + 3.5 * np.arctan((f / 7500.0) ** 2)


def _band_matrix(sr: int, n_fft: int, edges: tuple[float, ...]) -> np.ndarray:
    n_bins = n_fft // 2 + 1
    df = sr / n_fft
    lo_bin = np.arange(n_bins) * df - df / 2.0
    hi_bin = lo_bin + df
    e = np.asarray(edges)
    lo = np.maximum(lo_bin[None, :], e[:-1, None])
    hi = np.minimum(hi_bin[None, :], e[1:, None])
    return (np.clip(hi - lo, 0.0, None) / df).astype(np.float32)


@lru_cache(maxsize=32)
def _cached(sr: int, n_fft: int, edges: tuple[float, ...]) -> np.ndarray:
    return _band_matrix(sr, n_fft, edges)


def band_matrix(*, sr: int, n_fft: int, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Weights ``[n_bands, n_fft // 2 + 1]`` summing ``rfft`` bin powers into bands.

    Parameters
    ----------
    sr : int
        Sample rate in Hz.
    n_fft : int
        FFT length.
    edges : sequence of float
        Band edges in Hz, increasing.

    Returns
    -------
    numpy.ndarray
        Fraction of each bin's width inside each band (float32, cached).
    """
    return _cached(int(sr), int(n_fft), tuple(float(x) for x in edges))


@lru_cache(maxsize=8)
def _window(n_fft: int) -> tuple[np.ndarray, float]:
    w = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    return w, float(np.sum(w * w))


def spectrum_power(frames: np.ndarray, *, n_fft: int) -> np.ndarray:
    """One-sided power spectrum ``[C, n_fft // 2 + 1]`` of Hann-windowed ``frames [C, n_fft]``,
    scaled so that summing it over a band gives the mean square inside the band."""
    w, norm = _window(n_fft)
    spec = np.fft.rfft(np.asarray(frames, np.float32) * w, axis=1)
    power = spec.real**2 + spec.imag**2
    power[:, 1:-1] *= 2.0  # one-sided
    power /= n_fft * norm
    return power


def band_powers(
    frames: np.ndarray, *, sr: int, n_fft: int, edges: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Mean-square power per band of each row of ``frames`` ``[C, n_fft]``.

    Hann-windowed and scaled so a band's value is the signal's mean square
    inside it (a full-scale sine reads 0.5 in its band).

    Returns
    -------
    numpy.ndarray
        ``[C, n_bands]`` float64.
    """
    power = spectrum_power(frames, n_fft=n_fft)
    return (power @ band_matrix(sr=sr, n_fft=n_fft, edges=edges).T).astype(np.float64)


def power_db(power: np.ndarray) -> np.ndarray:
    """Power -> dB (floor at ``POWER_FLOOR``)."""
    return 10.0 * np.log10(np.maximum(power, POWER_FLOOR))


class SpectralBalance:
    """Live 1/3-octave balance of ``channels`` stems (see module docstring).

    Parameters
    ----------
    sr : int
        Sample rate in Hz.
    channels : int
        Number of stems.
    n_fft : int
        Analysis window (8192 at 44.1 kHz: 186 ms, 5.4 Hz bins).
    """

    def __init__(self, *, sr: int, channels: int, n_fft: int = 8192) -> None:
        self.sr = int(sr)
        self.n_fft = int(n_fft)
        self.edges = third_octave_edges(sr=self.sr)
        self.centres = third_octave_centres(sr=self.sr)
        self.power = np.zeros((channels, len(self.centres)), np.float64)
        self._started = False

    def update(self, frames: np.ndarray, dt_s: float) -> np.ndarray:
        """Average in the newest window ``[C, n_fft]``, ``dt_s`` after the last; return it."""
        return self.update_power(
            band_powers(frames, sr=self.sr, n_fft=self.n_fft, edges=self.edges), dt_s
        )

    def update_power(self, now: np.ndarray, dt_s: float) -> np.ndarray:
        """Average in the newest band powers ``[C, bands]`` (mean square per 1/3 octave)."""
        alpha = 1.0 if not self._started else 1.0 - math.exp(-dt_s / BALANCE_TAU_S)
        self.power += alpha * (now - self.power)
        self._started = True
        return now

    def relative_db(self) -> np.ndarray:
        """Balance ``[C, bands]`` in dB relative to each stem's total power."""
        total = self.power.sum(axis=1, keepdims=True)
        return power_db(self.power) - power_db(total)


def reference_curve(
    points: Sequence[tuple[float, float]], *, centres: np.ndarray
) -> np.ndarray:
    """A target curve on the bands' centres, interpolated in log-frequency from ``(Hz, dB)`` points.

    The result is shifted so its power sum is 0 dB, the same normalisation as
    :meth:`SpectralBalance.relative_db`, so ``balance - curve`` is the
    deviation from the target per band.
    """
    pts = sorted((float(f), float(d)) for f, d in points if f > 0)
    if len(pts) < 2:
        raise ValueError("reference curve: need at least two (Hz, dB) points")
    f, d = np.log10([p[0] for p in pts]), np.array([p[1] for p in pts])
    curve = np.interp(np.log10(centres), f, d)
    return curve - power_db(np.sum(10.0 ** (curve / 10.0)))


def reference_from_audio(x: np.ndarray, *, sr: int, n_fft: int = 8192) -> np.ndarray:
    """The long-term 1/3-octave balance (dB re total) of a mono reference signal.

    Averages the band powers of half-overlapping windows over the whole signal.
    """
    x = np.asarray(x, np.float32)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    starts = range(0, x.size - n_fft + 1, n_fft // 2)
    frames = np.stack([x[s : s + n_fft] for s in starts])
    edges = third_octave_edges(sr=sr)
    power = band_powers(frames, sr=sr, n_fft=n_fft, edges=edges).mean(axis=0)
    return power_db(power) - power_db(power.sum())
