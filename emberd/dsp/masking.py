"""Masking between stems: a simple critical-band model, smoothed over time, in plain words.

The model (documented here because the panel and the OSC messages report its numbers)
--------------------------------------------------------------------------------------
Every tick (:data:`TICK_S`, one FFT window per stem), for each stem ``s`` and
each of Zwicker's critical bands ``z`` (:func:`emberd.dsp.bands.critical_band_edges`):

1. ``L[s, z]``: the stem's band level in dB (mean-square power).
2. ``E[s, z]``: the stem's *excitation*: band powers spread across bands with
   Schroeder's spreading function (Schroeder, Atal & Hall 1979),
   ``SF(dz) = 15.81 + 7.5 (dz + 0.474) - 17.5 sqrt(1 + (dz + 0.474)^2)`` dB for a
   distance of ``dz`` Bark from masker band to masked band, with its slopes
   steepened by :data:`SPREAD_STEEPNESS` (1.5): about -37 dB per Bark downwards
   and -15 dB per Bark upwards, 0 dB in the masker's own band.  Schroeder's
   -10 dB/Bark upper slope is the ear's at high levels; Terhardt's (1979)
   level-dependent slope, ``-24 - 230/f + 0.2 L`` dB/Bark, is about -15 dB/Bark for
   a masker near 60 dB SPL, a mix's working level.  A loud bass therefore still
   covers the band above it, as the ear does, but not a hat's body an octave up
   that its own energy never reaches (bench/mixdown.py checks findings against
   plain energetic masking; the 1.5 was chosen there on the tuning kits' scenes:
   1.0 claimed 3 hat bodies the bass does not cover, 2.0 and 3.0 missed 2 planted
   pad-over-snare overlaps).
3. Stem ``a`` **masks** stem ``b`` in band ``z`` when ``b`` is *playing* there
   and ``E[a, z] - L[b, z] >= MASKING_MARGIN_DB``: the masker's excitation is at
   least as loud as the maskee's own energy in that critical band.  ``b`` is
   playing in ``z`` when its band level is within :data:`BAND_RANGE_DB` of its
   loudest band right now, above :data:`BAND_FLOOR_DB`, and the stem's total
   level is within :data:`ACTIVE_RANGE_DB` of its loudest over the window (so a
   kick's decay tail between hits does not count as the kick playing).

Over the last :data:`WINDOW_S` seconds the model keeps, per ordered pair and
band, the **score** ``fraction`` = ticks masked / ticks the maskee played, and
the mean margin (dB) when masked.  :meth:`MaskingTracker.suggestions` turns
runs of adjacent bands whose score is at least :data:`SUGGEST_FRACTION`, and
which hold at least :data:`MIN_ENERGY_SHARE` of the maskee's energy over the
window (a hat's faint low-frequency bleed under a bass is not worth a word),
into sentences such as "bass masks kick at 50-150 Hz by ~6 dB for 70 % of the time
kick played in the last 10 s".

It is a mixing aid, not a psychoacoustic predictor: no tonality correction,
no temporal (forward) masking, no absolute threshold beyond the floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emberd.dsp.bands import band_powers, critical_band_edges, hz_to_bark, power_db

TICK_S = 0.1  # one analysis per 100 ms (the loudness sub-block)
N_FFT_S = 0.09  # FFT window ~ one tick (4096 samples at 44.1 kHz)
WINDOW_S = 10.0  # how far back the scores look
MASKING_MARGIN_DB = 0.0  # masker excitation at least as loud as the maskee's band
BAND_RANGE_DB = 15.0  # a band counts for the maskee when within this of its loudest band
BAND_FLOOR_DB = -80.0  # ... and above this (dBFS mean square in the band)
ACTIVE_RANGE_DB = 12.0  # the maskee plays when within this of its loudest tick in the window
SUGGEST_FRACTION = 0.5  # a band is reported when masked at least this share of the time
MIN_ENERGY_SHARE = 0.1  # ... and the run of bands holds at least this share of the maskee's energy
LOWEST_SHOWN_HZ = 20.0  # the first critical band starts at 0 Hz; say "20 Hz"
MIN_ACTIVE_TICKS = 3  # a pair-band needs this many ticks of the maskee playing to get a score
SPREAD_STEEPNESS = 1.5  # Schroeder's slopes (dB/Bark) times this: see the module docstring


def spreading_db(dz: np.ndarray) -> np.ndarray:
    """Schroeder's spreading function (dB) for a masker-to-maskee distance of ``dz`` Bark."""
    d = np.asarray(dz, dtype=np.float64) + 0.474
    return 15.81 + 7.5 * d - 17.5 * np.sqrt(1.0 + d * d)


def excitation_spread_db(dz: np.ndarray) -> np.ndarray:
    """The model's spreading (dB): :func:`spreading_db`, slopes times :data:`SPREAD_STEEPNESS`."""
    return SPREAD_STEEPNESS * spreading_db(dz)


def fft_size(*, sr: int) -> int:
    """Power-of-two FFT length closest to :data:`N_FFT_S` at ``sr``."""
    return int(2 ** round(np.log2(N_FFT_S * sr)))


@dataclass(frozen=True)
class Suggestion:
    """One plain-language masking finding (masker and maskee are channel indexes)."""

    masker: int
    maskee: int
    lo_hz: float
    hi_hz: float
    margin_db: float
    fraction: float
    text: str


def _fmt_hz(f: float) -> str:
    return f"{f / 1000:.1f} kHz".replace(".0 kHz", " kHz") if f >= 1000 else f"{f:.0f} Hz"


class MaskingTracker:
    """The model above for ``channels`` stems, fed one tick of band powers at a time.

    Parameters
    ----------
    sr : int
        Sample rate in Hz.
    channels : int
        Number of stems.
    window_s, tick_s : float
        Score window and tick period in seconds.
    """

    def __init__(
        self, *, sr: int, channels: int, window_s: float = WINDOW_S, tick_s: float = TICK_S
    ) -> None:
        self.sr = int(sr)
        self.channels = int(channels)
        self.window_s = float(window_s)
        self.n_fft = fft_size(sr=self.sr)
        self.edges = critical_band_edges(sr=self.sr)
        lo, hi = self.edges[:-1], self.edges[1:]
        self.centres_hz = np.where(lo > 0, np.sqrt(lo * np.maximum(hi, 1.0)), hi / 2.0)
        z = hz_to_bark(self.centres_hz)
        # spread[i, j]: power share masker band i puts into band j.
        self._spread = 10.0 ** (excitation_spread_db(z[None, :] - z[:, None]) / 10.0)
        n_ticks = max(1, round(window_s / tick_s))
        c, b = self.channels, len(z)
        self._masked = np.zeros((n_ticks, c, c, b), bool)
        self._margin = np.zeros((n_ticks, c, c, b), np.float32)
        self._playing = np.zeros((n_ticks, c, b), bool)
        self._power = np.zeros((n_ticks, c, b), np.float32)
        self._total_db = np.full((n_ticks, c), -np.inf)
        self._ticks = 0
        self._off_diag = ~np.eye(c, dtype=bool)[:, :, None]

    @property
    def bands(self) -> int:
        """Number of critical bands."""
        return len(self.centres_hz)

    def update_frames(self, frames: np.ndarray) -> None:
        """One tick from the newest ``[C, n_fft]`` samples of every stem."""
        self.update(band_powers(frames, sr=self.sr, n_fft=self.n_fft, edges=self.edges))

    def update(self, power: np.ndarray) -> None:
        """One tick from band powers ``[C, bands]`` (mean square per critical band)."""
        level = power_db(power)
        excitation = power_db(power @ self._spread)
        total = power_db(power.sum(axis=1))
        i = self._ticks % self._masked.shape[0]
        self._total_db[i] = total
        loudest = np.max(self._total_db, axis=0)  # over the window, this tick included
        playing = (
            (level >= level.max(axis=1, keepdims=True) - BAND_RANGE_DB)
            & (level >= BAND_FLOOR_DB)
            & (total >= loudest - ACTIVE_RANGE_DB)[:, None]
        )
        margin = excitation[:, None, :] - level[None, :, :]  # [masker, maskee, band]
        masked = (margin >= MASKING_MARGIN_DB) & playing[None, :, :] & self._off_diag
        self._masked[i] = masked
        self._margin[i] = margin
        self._playing[i] = playing
        self._power[i] = power
        self._ticks += 1

    def _filled(self) -> int:
        return min(self._ticks, self._masked.shape[0])

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """``(fraction, margin_db)``, each ``[C, C, bands]`` (masker, maskee, band).

        ``fraction`` is NaN where the maskee played fewer than
        :data:`MIN_ACTIVE_TICKS` ticks in the window (no evidence either way),
        and 0 on the diagonal.
        """
        n = self._filled()
        masked = self._masked[:n]
        played = self._playing[:n].sum(axis=0)  # [maskee, band]
        hits = masked.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = hits / played[None, :, :]
            margin = np.where(masked, self._margin[:n], 0.0).sum(axis=0) / np.maximum(hits, 1)
        enough = np.broadcast_to(played[None] >= MIN_ACTIVE_TICKS, fraction.shape)
        fraction = np.where(enough, fraction, np.nan)
        fraction[~np.broadcast_to(self._off_diag, fraction.shape)] = 0.0
        return fraction, margin.astype(np.float64)

    def suggestions(self, names: Sequence[str], *, limit: int = 8) -> list[Suggestion]:
        """Plain-language findings, strongest (fraction x margin) first.

        Parameters
        ----------
        names : sequence of str
            A display name per channel (``"bass"``, ``"ch 2"``).
        limit : int
            Most findings returned.
        """
        fraction, margin = self.scores()
        n = self._filled()
        energy = self._power[:n].sum(axis=0)  # [C, bands] over the window
        share = energy / np.maximum(energy.sum(axis=1, keepdims=True), 1e-30)
        found: list[Suggestion] = []
        hot = np.nan_to_num(fraction) >= SUGGEST_FRACTION
        for a, b in zip(*np.nonzero(hot.any(axis=2)), strict=True):  # pairs with a hot band
            z = 0
            while z < self.bands:
                if not hot[a, b, z]:
                    z += 1
                    continue
                start = z
                while z < self.bands and hot[a, b, z]:
                    z += 1
                run = slice(start, z)
                if float(share[b, run].sum()) < MIN_ENERGY_SHARE:
                    continue  # a part of the maskee too faint to matter (a hat's low bleed)
                frac = float(np.mean(fraction[a, b, run]))
                db = float(np.mean(margin[a, b, run]))
                lo = max(float(self.edges[start]), LOWEST_SHOWN_HZ)
                hi = float(self.edges[z])
                text = (
                    f"{names[a]} masks {names[b]} at {_fmt_hz(lo)}\u2013{_fmt_hz(hi)} "
                    f"by ~{max(db, 0.0):.0f} dB for {frac * 100:.0f} % of the time "
                    f"{names[b]} played in the last {self.window_s:.0f} s"
                )
                found.append(Suggestion(int(a), int(b), lo, hi, db, frac, text))
        found.sort(key=lambda s: -(s.fraction * (1.0 + max(s.margin_db, 0.0))))
        return found[:limit]
