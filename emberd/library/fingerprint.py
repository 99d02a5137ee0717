"""Landmark fingerprints: "which of my samples is this?" (Wang 2003, audfprint-like).

Embeddings answer "what sounds like this?"; they blur the details that tell
two kick drums apart and suffer under added noise or a second sound.  This
stage finds spectral peaks, pairs each anchor peak with a few later (or
simultaneous, higher) peaks, and hashes each pair as

    (anchor pitch band, pitch difference, time difference)

with pitch on a log-frequency (semitone) axis, so a slight detune shifts
only the anchor band (looked up with its neighbours) and leaves the
difference unchanged.  A library file matches when many query hashes agree on
one time offset; noise and a second sound add hashes that agree on nothing.

The library keeps all ``(hash, file_id, t)`` triples sorted by hash in memory
(:class:`FingerprintIndex`); a query is a few binary searches and one
histogram, cheap enough for every hop of the live daemon.
"""

from __future__ import annotations

import numpy as np

from emberd.dsp.resample import mono_at
from emberd.library import waveform

FP_SR = 22050  # Hz: fingerprints ignore content above 11 kHz (low-passed copies still match)
FP_N_FFT = 1024  # 46 ms window at 22.05 kHz
FP_HOP = 256  # 11.6 ms: drum transients are a few hops long
FP_FMIN_HZ = 40.0  # below: rumble, too few FFT bins per semitone
FP_FMAX_HZ = 10000.0
PEAK_FREQ_RADIUS_BINS = 4  # a peak is the maximum over +-4 bins (+-86 Hz) ...
PEAK_TIME_RADIUS_HOPS = 3  # ... and +-3 hops (+-35 ms)
MAX_PEAKS_PER_FRAME = 5
DYNAMIC_RANGE_DB = 50.0  # peaks quieter than the loudest by more than this are ignored
FAN_OUT = 8  # pairs per anchor peak
MAX_SUCCESSORS = 32  # later peaks examined per anchor (5 peaks/frame: >= 6 frames ahead)
MAX_DT_HOPS = 40  # 464 ms target zone
MAX_DPITCH_SEMITONES = 36.0
PITCH_QUANT_SEMITONES = 1.0  # anchor band width
DPITCH_QUANT_SEMITONES = 0.5
MIN_MATCHES = 10  # time-consistent hash matches needed to call a file identified
MIN_MARGIN = 3.0  # best score must beat the runner-up file by this factor
MAX_HASH_FILES_FRACTION = 0.2  # hashes in more files than this are too common to tell anything

TEMPLATE_FRAMES = 64  # 0.74 s from the onset: the part of a one-shot that identifies it
TEMPLATE_BANDS = 48  # log-spaced bands FP_FMIN_HZ..FP_FMAX_HZ (~1/6 octave: detune-tolerant)
TEMPLATE_RANGE_DB = 60.0  # template cells below max - this are clipped
TEMPLATE_DB_STEP = 0.25  # uint8 storage step (60 dB in 240 steps)
ONSET_DB = 20.0  # the onset is the first frame within this of the loudest frame
NOISE_FLOOR_PERCENTILE = 10.0  # per band, of the query: cells below are noise, not evidence

#: Changes whenever the hash definition changes (stored with each fingerprinted file).
PARAMS = (
    f"v3 sr{FP_SR} n{FP_N_FFT} h{FP_HOP} f{FP_FMIN_HZ:g}-{FP_FMAX_HZ:g} r{PEAK_FREQ_RADIUS_BINS}x"
    f"{PEAK_TIME_RADIUS_HOPS} p{MAX_PEAKS_PER_FRAME} d{DYNAMIC_RANGE_DB:g} "
    f"fo{FAN_OUT}/{MAX_SUCCESSORS} "
    f"dt{MAX_DT_HOPS} dp{MAX_DPITCH_SEMITONES:g} "
    f"q{PITCH_QUANT_SEMITONES:g}/{DPITCH_QUANT_SEMITONES:g} "
    f"tpl{TEMPLATE_FRAMES}x{TEMPLATE_BANDS}/{TEMPLATE_RANGE_DB:g}/{ONSET_DB:g} "
    f"wave{waveform.WAVE_SR}/{waveform.SNIPPET_SAMPLES}/{waveform.PRE_ROLL_SAMPLES}/"
    f"{waveform.ONSET_DB:g}"
)

_DT_BITS = 6
_DP_BITS = 8
_DP_OFFSET = 128


def stft(y: np.ndarray, min_samples: int = FP_N_FFT) -> np.ndarray:
    """Complex spectra [frames, FP_N_FFT // 2 + 1] of mono ``y`` at FP_SR: Hann windows of
    FP_N_FFT every FP_HOP, ``y`` zero-padded to at least ``min_samples`` first."""
    y = np.asarray(y, dtype=np.float32)
    if len(y) < min_samples:
        y = np.pad(y, (0, min_samples - len(y)))
    n_frames = 1 + (len(y) - FP_N_FFT) // FP_HOP
    frames = np.lib.stride_tricks.as_strided(
        y, shape=(n_frames, FP_N_FFT), strides=(y.strides[0] * FP_HOP, y.strides[0])
    )
    return np.fft.rfft(frames * np.hanning(FP_N_FFT).astype(np.float32), axis=1)


def _spectrogram(y: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Log magnitude [frames, bins] of ``y`` at FP_SR and the bins' frequencies in Hz."""
    mag = np.abs(stft(mono_at(y, sr, FP_SR)))
    freqs = np.fft.rfftfreq(FP_N_FFT, 1.0 / FP_SR)
    keep = (freqs >= FP_FMIN_HZ) & (freqs <= FP_FMAX_HZ)
    return 20.0 * np.log10(mag[:, keep] + 1e-9), freqs[keep]


def peaks(y: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectral peaks of a signal.

    Parameters
    ----------
    y : float array [n] or [n, channels]
        Audio.
    sr : int
        Its sample rate in Hz.

    Returns
    -------
    times : int array [p]
        Frame index of each peak (hops of FP_HOP samples at FP_SR).
    pitches : float array [p]
        Peak frequency in semitones above FP_FMIN_HZ.
    """
    from scipy.ndimage import maximum_filter

    spec, freqs = _spectrogram(y, sr)
    if spec.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    local_max = maximum_filter(
        spec, size=(2 * PEAK_TIME_RADIUS_HOPS + 1, 2 * PEAK_FREQ_RADIUS_BINS + 1), mode="nearest"
    )
    floor = spec.max() - DYNAMIC_RANGE_DB
    is_peak = (spec == local_max) & (spec > floor)
    t_idx, f_idx = np.nonzero(is_peak)
    if len(t_idx) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    # Keep the loudest few per frame so a dense noise floor cannot crowd out the sound.
    loud = spec[t_idx, f_idx]
    order = np.lexsort((-loud, t_idx))
    t_idx, f_idx = t_idx[order], f_idx[order]
    first = np.searchsorted(t_idx, t_idx, side="left")
    rank = np.arange(len(t_idx)) - first
    keep = rank < MAX_PEAKS_PER_FRAME
    t_idx, f_idx = t_idx[keep], f_idx[keep]
    pitches = 12.0 * np.log2(freqs[f_idx] / FP_FMIN_HZ)
    return t_idx.astype(np.int64), pitches


def landmarks(y: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash pairs of peaks.

    Parameters
    ----------
    y : float array [n] or [n, channels]
        Audio.
    sr : int
        Its sample rate in Hz.

    Returns
    -------
    hashes : int64 array [h]
        Pair hashes.
    times : int64 array [h]
        Anchor frame of each hash.
    bands : int64 array [h]
        Anchor pitch band (the hash's top bits; queries look up band +-1).
    """
    t, p = peaks(y, sr)
    if len(t) < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    order = np.lexsort((p, t))
    t, p = t[order], p[order]
    # Targets of anchor i are the next peaks in time order (i+1, i+2, ...): test a fixed
    # number of successors at once and keep the first FAN_OUT that fit the target zone.
    n = len(t)
    succ = np.arange(n)[:, None] + np.arange(1, MAX_SUCCESSORS + 1)[None, :]
    inside = succ < n
    succ = np.minimum(succ, n - 1)
    ok = (
        inside
        & (t[succ] - t[:, None] <= MAX_DT_HOPS)
        & (np.abs(p[succ] - p[:, None]) <= MAX_DPITCH_SEMITONES)
    )
    ok &= np.cumsum(ok, axis=1) <= FAN_OUT
    a, col = np.nonzero(ok)
    b = succ[a, col]
    if len(a) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    band = np.floor(p[a] / PITCH_QUANT_SEMITONES).astype(np.int64)
    dp = np.clip(np.round((p[b] - p[a]) / DPITCH_QUANT_SEMITONES), -_DP_OFFSET, _DP_OFFSET - 1)
    dt = (t[b] - t[a]).astype(np.int64)
    hashes = _pack(band, dp.astype(np.int64) + _DP_OFFSET, dt)
    return hashes, t[a], band


def _pack(band: np.ndarray, dp: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """Pack (band, dpitch, dt) into one int64 hash."""
    return (band << (_DP_BITS + _DT_BITS)) | (dp << _DT_BITS) | dt


_BAND_MATRIX: np.ndarray | None = None


def _band_matrix() -> np.ndarray:
    """[TEMPLATE_BANDS, bins] averaging FFT power into log-spaced bands (cached)."""
    global _BAND_MATRIX
    if _BAND_MATRIX is None:
        freqs = np.fft.rfftfreq(FP_N_FFT, 1.0 / FP_SR)
        edges = np.geomspace(FP_FMIN_HZ, FP_FMAX_HZ, TEMPLATE_BANDS + 1)
        m = np.zeros((TEMPLATE_BANDS, len(freqs)), np.float32)
        for b in range(TEMPLATE_BANDS):
            sel = (freqs >= edges[b]) & (freqs < edges[b + 1])
            if not sel.any():  # narrow low bands: nearest bin
                sel[np.argmin(np.abs(freqs - 0.5 * (edges[b] + edges[b + 1])))] = True
            m[b, sel] = 1.0 / sel.sum()
        _BAND_MATRIX = m
    return _BAND_MATRIX


def template(y: np.ndarray, sr: int) -> np.ndarray:
    """Onset-aligned log-band spectrogram of a sound, for re-ranking identification candidates.

    Parameters
    ----------
    y : float array [n] or [n, channels]
        Audio.
    sr : int
        Its sample rate in Hz.

    Returns
    -------
    uint8 array [TEMPLATE_FRAMES, TEMPLATE_BANDS]
        dB above (max - TEMPLATE_RANGE_DB) in TEMPLATE_DB_STEP steps.
    """
    power = np.abs(stft(mono_at(y, sr, FP_SR), FP_N_FFT + FP_HOP * (TEMPLATE_FRAMES - 1))) ** 2
    db = 10.0 * np.log10(power @ _band_matrix().T + 1e-12)
    loud = db.max(axis=1)
    onset = int(np.argmax(loud > loud.max() - ONSET_DB))
    t = db[onset : onset + TEMPLATE_FRAMES]
    if len(t) < TEMPLATE_FRAMES:
        t = np.concatenate([t, np.full((TEMPLATE_FRAMES - len(t), TEMPLATE_BANDS), -300.0)])
    rel = np.clip(t - t.max() + TEMPLATE_RANGE_DB, 0.0, TEMPLATE_RANGE_DB)
    return np.round(rel / TEMPLATE_DB_STEP).astype(np.uint8)


def column_nanpercentile(x: np.ndarray, percentile: float) -> np.ndarray:
    """``np.nanpercentile(x, percentile, axis=0)`` of a 2-D array, the same values (NaN for
    an all-NaN column, without the warning).

    Columns with as many numbers are taken together: numpy's nanpercentile loops over the
    columns in Python (~3x slower here).
    """
    s = np.sort(x, axis=0)  # NaN last
    count = np.count_nonzero(~np.isnan(x), axis=0)
    parts = [(cols, np.percentile(s[:k, cols], percentile, axis=0))
             for k in np.unique(count[count > 0]).tolist()
             for cols in [np.nonzero(count == k)[0]]]
    out = np.full(x.shape[1], np.nan, parts[0][1].dtype if parts else x.dtype)
    for cols, values in parts:
        out[cols] = values
    return out


def template_scores(query: np.ndarray, library: np.ndarray) -> np.ndarray:
    """Correlation of a query template with library templates, noise floor aware.

    Library cells quieter than the query's own noise floor (a low percentile per
    band) are raised to it: added noise must not count against the right file.

    Parameters
    ----------
    query : uint8 array [F, B]
        From :func:`template`.
    library : uint8 array [n, F, B]
        Candidates' templates.

    Returns
    -------
    float array [n]
        Pearson correlation in [-1, 1]; higher is more alike.
    """
    # Compare over the query's own duration only: padding past its end says nothing.
    frames = (query > 0).any(axis=1)
    if not frames.any():
        return np.zeros(len(library))
    q = query[frames].astype(np.float32) * TEMPLATE_DB_STEP
    lib = library[:, frames].astype(np.float32) * TEMPLATE_DB_STEP
    # Cells at 0 are padding past the end of a short query or digital silence: not noise.
    present = np.where(q > 0, q, np.nan)
    floor = np.nan_to_num(column_nanpercentile(present, NOISE_FLOOR_PERCENTILE))
    lib = np.maximum(lib, floor[None, None, :])
    qc = q - q.mean()
    lc = lib - lib.mean(axis=(1, 2), keepdims=True)
    num = (lc * qc[None]).sum(axis=(1, 2))
    den = np.sqrt((lc**2).sum(axis=(1, 2)) * (qc**2).sum()) + 1e-9
    return np.asarray(num / den)


class FingerprintIndex:
    """All library landmarks in memory, sorted by hash.

    Parameters
    ----------
    hashes, file_ids, times : int arrays [m]
        One row per stored landmark.
    n_files : int
        Number of fingerprinted files (for the common-hash cut-off).
    """

    def __init__(
        self, hashes: np.ndarray, file_ids: np.ndarray, times: np.ndarray, n_files: int
    ) -> None:
        order = np.argsort(hashes, kind="stable")
        self.hashes = np.asarray(hashes, np.int64)[order]
        self.file_ids = np.asarray(file_ids, np.int64)[order]
        self.times = np.asarray(times, np.int32)[order]
        self.n_files = max(int(n_files), 1)

    def __len__(self) -> int:
        return len(self.hashes)

    def match(self, y: np.ndarray, sr: int, *, top: int = 5) -> list[tuple[int, int, float]]:
        """Library files whose landmarks line up with the query's.

        Parameters
        ----------
        y : float array [n] or [n, channels]
            Query audio.
        sr : int
            Its sample rate in Hz.
        top : int
            How many files to return.

        Returns
        -------
        list of (file_id, score, offset_s)
            Best first; score is the number of time-consistent hash matches and
            offset_s where in the library file the query starts.
        """
        qh, qt, qband = landmarks(y, sr)
        if len(qh) == 0 or len(self.hashes) == 0:
            return []
        low_bits = qh & ((1 << (_DP_BITS + _DT_BITS)) - 1)
        variants = [qh] + [((qband + d) << (_DP_BITS + _DT_BITS)) | low_bits for d in (-1, 1)]
        all_q = np.concatenate(variants)
        all_t = np.tile(qt, len(variants))
        lo = np.searchsorted(self.hashes, all_q, side="left")
        hi = np.searchsorted(self.hashes, all_q, side="right")
        counts = hi - lo
        max_files = max(MAX_HASH_FILES_FRACTION * self.n_files, 20)
        ok = (counts > 0) & (counts <= max_files)
        lo, counts, all_t = lo[ok], counts[ok], all_t[ok]
        if counts.sum() == 0:
            return []
        # Gather every (query hash, library row) pair without a Python loop.
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        rows = starts + np.arange(counts.sum())
        q_t = np.repeat(all_t, counts)
        fid = self.file_ids[rows]
        offset = self.times[rows].astype(np.int64) - q_t
        best: dict[int, tuple[int, int]] = {}
        # Offsets binned by 2 hops at two phases: +-1 hop of jitter still lands in one bin.
        for phase in (0, 1):
            key = fid * 1_000_003 + (offset + phase + 500_000) // 2
            uniq, cnt = np.unique(key, return_counts=True)
            # One hit per (query anchor time, library row) would be fair; duplicates are rare.
            f_of = uniq // 1_000_003
            off_of = (uniq % 1_000_003) * 2 - 500_000 - phase
            order = np.lexsort((-cnt, f_of))
            f_sorted, c_sorted, o_sorted = f_of[order], cnt[order], off_of[order]
            first = np.ones(len(f_sorted), bool)
            first[1:] = f_sorted[1:] != f_sorted[:-1]
            for f, c, o in zip(f_sorted[first], c_sorted[first], o_sorted[first], strict=True):
                if c > best.get(int(f), (0, 0))[0]:
                    best[int(f)] = (int(c), int(o))
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:top]
        hop_s = FP_HOP / FP_SR
        return [(f, c, max(o, 0) * hop_s) for f, (c, o) in ranked]


def is_identified(matches: list[tuple[int, int, float]]) -> bool:
    """Whether the best fingerprint match is strong and clearly ahead of the next file."""
    if not matches or matches[0][1] < MIN_MATCHES:
        return False
    runner_up = matches[1][1] if len(matches) > 1 else 0
    return matches[0][1] >= MIN_MARGIN * runner_up
