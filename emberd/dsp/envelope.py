"""Envelope descriptors of a one-shot: attack, decay and spectral shape relative to its own peaks.

Times and shapes measured from each sound's own peaks survive a kit's recording chain
(gain, EQ, room) better than absolute levels; the library's class model
(:mod:`emberd.library.classifier`) reads them beside the embedding.  Chosen on the tuning
kits by ``bench/class_heads.py --envelopes`` (issue 19).
"""

from __future__ import annotations

import itertools

import numpy as np

ENV_SR = 22050  # Hz (the hit index's rate)
ENV_NFFT = 512  # frame of the envelope STFT (23 ms) ...
ENV_HOP = 128  # ... hopped by 5.8 ms
ENV_S = 2.0  # seconds after the onset described (zeros past the sound's end)
ENV_EDGES_HZ = tuple(float(f) for f in np.geomspace(40.0, 10000.0, 11))  # 10 log bands
ENV_BAND_DROPS_DB = (10.0, 20.0, 30.0)  # per band: time from its peak until it stays below
ENV_DROPS_DB = (6.0, 12.0, 20.0, 30.0, 40.0)  # ... and the same for the broadband envelope
ENV_SPANS_MS = ((0, 12), (12, 50), (50, 150), (150, 500), (500, 2000))  # spectral-shape spans
ENV_FLOOR_DB = -80.0  # a span's level under the peak frame is clipped here (silence)
ENV_F0_HZ = (40.0, 600.0)  # autocorrelation search range of the pitch ...
ENV_F0_SPANS_MS = ((5, 60), (60, 250))  # ... in an early and a later window (the glide)
ENV_GLIDE_MS = 300.0  # the centroid trajectory's slope is fitted over this
N_FEATURES = 139  # values per sound (see envelope_features)


def _drop_times(env_db: np.ndarray, drops: tuple[float, ...], hop_s: float) -> list[float]:
    """log10 seconds from the envelope's peak until it stays ``drop`` dB under it, per drop."""
    peak = int(np.argmax(env_db))
    out = []
    for drop in drops:
        above = np.nonzero(env_db[peak:] >= env_db[peak] - drop)[0]
        out.append(float(np.log10(max((above[-1] + 1) * hop_s if len(above) else hop_s, hop_s))))
    return out


def envelope_features(x: np.ndarray) -> np.ndarray:
    """Recording-chain-invariant attack / decay / shape descriptors of one sound.

    Parameters
    ----------
    x : float array
        Mono samples at :data:`ENV_SR` from the onset (any gain: peak-normalised here).

    Returns
    -------
    float array
        139 values: the broadband attack time and :data:`ENV_DROPS_DB` decay times; per
        band of :data:`ENV_EDGES_HZ` the :data:`ENV_BAND_DROPS_DB` decay times from the
        band's own peak and the time of that peak; per span of :data:`ENV_SPANS_MS` the
        level under the peak frame, log-frequency centroid, spread, flatness, 15 % / 85 %
        roll-off, tonality (peak bin over the mean) and each band's share; the centroid's
        slope over :data:`ENV_GLIDE_MS`; the autocorrelation pitch and its strength in two
        windows (a tom's glide); zero-crossing rates early and late; the crest factor of
        the first 100 ms.  Times are log10 seconds.
    """
    n = int(ENV_S * ENV_SR)
    y = np.zeros(n + ENV_NFFT)
    seg = np.asarray(x, np.float64)[:n]
    y[: len(seg)] = seg / (float(np.max(np.abs(seg))) + 1e-12) if len(seg) else 0.0
    freqs = np.fft.rfftfreq(ENV_NFFT, 1.0 / ENV_SR)
    edges = np.asarray(ENV_EDGES_HZ)
    bands = np.array([(freqs >= lo) & (freqs < hi) for lo, hi in itertools.pairwise(edges)], float)
    frames = np.lib.stride_tricks.sliding_window_view(y, ENV_NFFT)[::ENV_HOP]
    spec = np.abs(np.fft.rfft(frames * np.hanning(ENV_NFFT), axis=1)) ** 2 + 1e-12
    hop_s = ENV_HOP / ENV_SR
    total = spec.sum(axis=1)
    total_db = 10.0 * np.log10(total)
    feats = [float(np.log10((int(np.argmax(total_db)) + 1) * hop_s))]
    feats += _drop_times(total_db, ENV_DROPS_DB, hop_s)
    band_db = 10.0 * np.log10(spec @ bands.T + 1e-12)
    for b in range(band_db.shape[1]):
        feats += _drop_times(band_db[:, b], ENV_BAND_DROPS_DB, hop_s)
        feats.append(float(np.log10((int(np.argmax(band_db[:, b])) + 1) * hop_s)))
    logf = np.log2(np.maximum(freqs, 20.0))
    for lo_ms, hi_ms in ENV_SPANS_MS:
        a = int(lo_ms / 1000.0 * ENV_SR / ENV_HOP)
        s = spec[a : max(int(hi_ms / 1000.0 * ENV_SR / ENV_HOP), a + 1)]
        energy = float(s.sum())
        p = s.sum(axis=0) / energy
        centroid = float(p @ logf)
        cum = np.cumsum(p)
        feats += [
            max(10.0 * np.log10(energy / len(s)) - float(total_db.max()), ENV_FLOOR_DB),
            centroid,
            float(np.sqrt(max(float(p @ (logf - centroid) ** 2), 0.0))),
            float(np.log10(np.mean(np.exp(np.log(s).mean(axis=1)) / s.mean(axis=1)) + 1e-9)),
            float(logf[min(int(np.searchsorted(cum, 0.85)), len(logf) - 1)]),
            float(logf[min(int(np.searchsorted(cum, 0.15)), len(logf) - 1)]),
            float(np.log10(float(p.max()) * len(p))),
            *np.log10(s.sum(axis=0) @ bands.T / energy + 1e-6),
        ]
    m = int(ENV_GLIDE_MS / 1000.0 * ENV_SR / ENV_HOP)
    cen = (spec[:m] / spec[:m].sum(axis=1, keepdims=True)) @ logf
    w = total[:m] / total[:m].sum()
    t = np.arange(m) * hop_s
    tc = t - w @ t
    feats.append(float(w @ (tc * (cen - w @ cen)) / (w @ tc**2 + 1e-9)))
    lag_lo, lag_hi = int(ENV_SR / ENV_F0_HZ[1]), int(ENV_SR / ENV_F0_HZ[0])
    for a_ms, b_ms in ENV_F0_SPANS_MS:
        win = y[int(a_ms / 1000.0 * ENV_SR) : int(b_ms / 1000.0 * ENV_SR)]
        win = win - win.mean()
        ac = np.correlate(win, win, "full")[len(win) - 1 :]
        ac = ac / (ac[0] + 1e-12)
        lag = lag_lo + int(np.argmax(ac[lag_lo:lag_hi]))
        feats += [float(ac[lag]), float(np.log2(ENV_SR / lag))]
    for a_ms, b_ms in ((0, 50), (50, 300)):
        win = y[int(a_ms / 1000.0 * ENV_SR) : int(b_ms / 1000.0 * ENV_SR)]
        feats.append(float(np.mean(np.abs(np.diff(np.sign(win))) > 0)))
    first = y[: int(0.1 * ENV_SR)]
    feats.append(float(np.log10(np.max(np.abs(first)) / (np.sqrt(np.mean(first**2)) + 1e-12)
                                + 1e-9)))  # fmt: skip
    return np.nan_to_num(np.array(feats, np.float64))
