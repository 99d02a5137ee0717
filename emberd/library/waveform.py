"""Waveform matching: the last word in "which of my samples is this?".

Templates and embeddings compare band energies; they cannot tell apart two
round-robin hits of the same snare, and a mix of two library sounds
correlates with both. The waveform itself can: a sample played back with
noise, reverb or another sound on top still correlates sample-for-sample
with its source, and a different hit of the same drum does not.

Each library file keeps a *snippet*: its first SNIPPET_SAMPLES samples from
just before the onset, at WAVE_SR, as int16 plus one scale (11 KB a file).
For a query, :func:`explain`

1. correlates the query's onset region with every candidate's snippet over
   +-LAG_SAMPLES (normalised cross-correlation ``rho``, one FFT per
   candidate), and for the best few also with the query re-stretched by
   STRETCH_CENTS (a sample pitched slightly by resampling), refined between
   grid points for the best REFINE_TOP;
2. takes the best-correlated file; if it explains nearly all of the onset
   (``rho >= alone_rho``) that is the answer;
3. otherwise subtracts it (least-squares gain at its lag) and looks for a
   second library sound in the residual (its own attack-vector neighbours
   too; aligned at the residual's own onset when that is later than the
   query's): a mix of two library sounds is explained as A + B, both gains fitted
   jointly, and the answer is the one with the louder peak in the mix;
4. abstains (returns None) when nothing correlates above ``wave_min_rho``, e.g.
   a sound pitched by more than STRETCH_CENTS: the template ranker answers.

Files that are the same recording at another level (velocity layers made by
scaling one hit) correlate equally; among those the one whose fitted gain is
nearest 0 dB (the file as it is) wins.

The decision thresholds (:class:`Thresholds`: ``wave_min_rho``, ``alone_rho``,
``pair_min_rho``) are fitted by ``bench/fit_identify.py`` on kits A
(:data:`THRESHOLDS`); the search constants below are design choices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft

from emberd.dsp.resample import mono_at

WAVE_SR = 22050  # Hz (the fingerprint rate): content above 11 kHz is not needed to tell hits apart
SNIPPET_SAMPLES = 5512  # 250 ms at WAVE_SR: the attack and early decay that identify a hit
PRE_ROLL_SAMPLES = 110  # 5 ms kept before the detected onset
LAG_SAMPLES = 1024  # +-46 ms of onset misalignment searched by the correlation
ENVELOPE_SAMPLES = 32  # 1.5 ms moving average for onset detection
ONSET_DB = 20.0  # the onset is the first sample whose envelope is within this of its maximum
STRETCH_CENTS = (-50.0, -37.5, -25.0, -12.5, 12.5, 25.0, 37.5, 50.0)  # resampling searched
STRETCH_BY_RANK = 16  # candidates re-correlated at every stretch: the ranker's best ...
STRETCH_BY_RHO = 8  # ... and the best-correlated at the original speed
STRETCH_MIN_GAIN = 0.01  # rho a stretch must add over none to be believed
REFINE_TOP = 8  # the best few after the grid are refined between grid points ...
REFINE_STEPS = 3  # ... halving the step each time (12.5 -> 6.25, 3.1, 1.6 cents)
TRIM_SAMPLES = 661  # 30 ms: a query that starts loud is searched this much earlier ...
MAX_TRIM_SAMPLES = 1500  # ... for a cut attack: up to 68 ms of a snippet's start may be missing
MIN_OVERLAP_ENERGY = 0.002  # the compared rest of a snippet must hold this share of its energy
SAME_RECORDING_RHO = 0.002  # candidates within this of the best rho may be level copies of it
TIE_RHO = 0.05  # candidates within this of the best rho are reported as ties (Explanation.ties)
SOUND_S = 1.0  # :func:`sound_rho` compares this much of the sound from the snippet's start
SOUND_BLOCK = 1024  # samples (46 ms) per block of sound_rho ...
SOUND_FLOOR_DB = 50.0  # sound_rho's blocks more than this under the loudest are not compared
SOUND_BLOCK_LAG = 16  # ... each aligned within +-0.7 ms (the speed search's residual drift:
# 0.8 cent is 10 samples over 1 s)
INT16_FULL_SCALE = 32767.0

_SEGMENT = SNIPPET_SAMPLES + 2 * LAG_SAMPLES  # query samples around the onset
# Circular correlation of length >= _SEGMENT equals the linear one at the lags used (0 ..
# 2 * LAG_SAMPLES): a snippet shifted by at most that never wraps onto the segment's start.
_NFFT = next_fast_len(_SEGMENT, real=True)
_EXTENDED = _SEGMENT + SNIPPET_SAMPLES  # the query span a mix's second sound is sought in


@dataclass(frozen=True)
class Snippet:
    """A library file's stored onset waveform (see :func:`snippet`)."""

    scale: float  # multiply the int16 samples by this to get the file's own units
    data: bytes  # SNIPPET_SAMPLES little-endian int16

    def samples(self) -> np.ndarray:
        """The waveform as float32 [SNIPPET_SAMPLES] in the file's units."""
        raw = np.frombuffer(self.data, "<i2")
        out = np.zeros(SNIPPET_SAMPLES, np.float32)
        out[: len(raw)] = raw[:SNIPPET_SAMPLES].astype(np.float32) * np.float32(self.scale)
        return out


@dataclass(frozen=True)
class Explanation:
    """What the waveform stage says a query is."""

    file_id: int
    rho: float  # its normalised correlation with the query's onset region
    gain_db: float  # its level in the query relative to the file (least squares)
    mixed_with: int | None  # the other library sound, when the query is explained as a mix
    # The best correlation of any other recording among the candidates (level copies of the
    # answer left out): a source stands out, a sound in no library correlates alike with many.
    runner_up_rho: float = 0.0
    # The candidates that correlate within TIE_RHO of the answer (the answer first), with
    # where each aligns: sibling recordings (round robins, velocity layers) are told apart
    # over the whole sound by :func:`sound_rho` (``Library`` does, it has their files).
    ties: tuple[Tie, ...] = ()


@dataclass(frozen=True)
class Tie:
    """A candidate correlating nearly as well as the answer, and its alignment."""

    file_id: int
    rho: float  # its correlation with the query's onset region (as Explanation.rho)
    gain_db: float  # its level in the query
    cents: float  # the query was compared resampled as played this many cents lower
    align: int  # the sample of that (resampled) query where the snippet's first sample lies


def onset_sample(y: np.ndarray) -> int:
    """First sample whose smoothed magnitude is within ONSET_DB of the loudest."""
    if len(y) == 0:
        return 0
    # Moving average (as np.convolve(..., mode="same") centres it), by cumulative sums: O(n).
    # c[min(i + ENVELOPE_SAMPLES - half, n)] - c[max(i - half, 0)] for every i, by slices.
    n, half = len(y), ENVELOPE_SAMPLES // 2
    c = np.concatenate([[0.0], np.cumsum(np.abs(y), dtype=np.float64)])
    hi = c[min(ENVELOPE_SAMPLES - half, n) :]
    hi = np.concatenate([hi, np.full(n - len(hi), c[n])])
    lo = np.concatenate([np.full(min(half, n), c[0]), c[: max(n - half, 0)]])
    env = (hi - lo) / ENVELOPE_SAMPLES
    return int(np.argmax(env > env.max() * 10 ** (-ONSET_DB / 20)))


def padded(y: np.ndarray, start: int, n: int) -> np.ndarray:
    """``y[start:start + n]`` with zeros outside ``y``."""
    out = np.zeros(n, np.float32)
    a, b = max(start, 0), min(start + n, len(y))
    if b > a:
        out[a - start : b - start] = y[a:b]
    return out


def snippet(y: np.ndarray, sr: int) -> Snippet:
    """The onset waveform a library file keeps for :func:`explain`.

    Parameters
    ----------
    y : float array [n] or [n, channels]
        The file's audio.
    sr : int
        Its sample rate in Hz.
    """
    y = mono_at(y, sr, WAVE_SR)
    w = padded(y, onset_sample(y) - PRE_ROLL_SAMPLES, SNIPPET_SAMPLES)
    peak = float(np.max(np.abs(w))) if len(w) else 0.0
    scale = peak / INT16_FULL_SCALE if peak > 0 else 1.0
    data = np.round(w / scale).clip(-INT16_FULL_SCALE, INT16_FULL_SCALE).astype("<i2")
    return Snippet(scale, data.tobytes())


def spectra(snippets: np.ndarray) -> np.ndarray:
    """Conjugate spectra of snippets [n, SNIPPET_SAMPLES], as :func:`correlate` uses them
    (single precision: correlations agree with double precision to ~1e-6, at a third of the
    cost)."""
    return np.conj(rfft(np.asarray(snippets, np.float32), _NFFT, axis=1))


def correlate(
    segment: np.ndarray, snippets: np.ndarray, conj_spectra: np.ndarray | None = None,
    start: int = 0,
) -> tuple[np.ndarray, ...]:
    """Best normalised cross-correlation of a query segment with each snippet.

    Parameters
    ----------
    segment : float array [SNIPPET_SAMPLES + 2 * LAG_SAMPLES]
        The query around its onset (:func:`onset_segment`).
    snippets : float array [n, SNIPPET_SAMPLES]
        Candidate waveforms.
    conj_spectra : complex array [n, bins], optional
        ``spectra(snippets)``, when the same candidates are correlated again.
    start : int
        Where the query's first sample lies in ``segment`` (0: before it). At
        lags where a snippet starts before the query does (an attack cut off),
        the snippet counts only from the query's start on, when at most
        MAX_TRIM_SAMPLES are missing and the rest holds MIN_OVERLAP_ENERGY.

    Returns
    -------
    rho, gain, lag : arrays [n]
        Correlation in [-1, 1] (the share of the query's energy over the
        snippet's span that the snippet explains is ``rho ** 2``),
        least-squares gain of the snippet in the query, and the lag in samples
        (0 .. 2 * LAG_SAMPLES) where both are taken.
    """
    if conj_spectra is None:
        conj_spectra = spectra(snippets)
    return _correlate(_Segment.of(segment, start), _Candidates(snippets, conj_spectra))


class _Segment:
    """A query segment as :func:`correlate` uses it, computed once however many candidate
    sets it is correlated with: its spectrum and, from its energy under a snippet at each
    lag, ``scale`` (one over that energy's root, which normalises a correlation)."""

    def __init__(self, segment: np.ndarray, start: int, spec: np.ndarray,
                 energy: np.ndarray) -> None:
        self.segment, self.start, self.spec = segment, start, spec
        self.scale = (1.0 / np.sqrt(energy)).astype(np.float32)

    @classmethod
    def of(cls, segment: np.ndarray, start: int = 0) -> _Segment:
        spec = rfft(np.asarray(segment, np.float32), _NFFT)
        cum = np.concatenate([[0.0], np.cumsum(segment.astype(np.float64) ** 2)])
        energy = cum[SNIPPET_SAMPLES:] - cum[: 2 * LAG_SAMPLES + 1]
        # Lags where the query is (nearly) silent would divide by ~0: floor their energy.
        energy = np.maximum(energy, 1e-3 * energy.max() + 1e-12)
        return cls(segment, start, spec, energy)


class _Candidates:
    """Candidate snippets [n, SNIPPET_SAMPLES] with their conjugate spectra and energies
    (computed once; rows taken with :meth:`rows` keep them)."""

    def __init__(self, mat: np.ndarray, spec: np.ndarray, power: np.ndarray | None = None,
                 full: np.ndarray | None = None) -> None:
        self.mat, self.spec = mat, spec
        self.power = mat.astype(np.float64) ** 2 if power is None else power
        self.full = self.power.sum(axis=1) + 1e-20 if full is None else full

    def rows(self, take: np.ndarray | slice) -> _Candidates:
        return _Candidates(self.mat[take], self.spec[take], self.power[take], self.full[take])


def _correlate(seg: _Segment | list[_Segment], cand: _Candidates) -> tuple[np.ndarray, ...]:
    """:func:`correlate` of a prepared segment with prepared candidates, or of a list of
    segments (one per candidate row) with them, all at once."""
    if isinstance(seg, list):
        seg_spec = np.stack([s.spec for s in seg])
        seg_scale = np.stack([s.scale for s in seg])
        starts = np.array([s.start for s in seg])
    else:
        seg_spec, seg_scale = seg.spec[None], seg.scale[None]
        starts = np.full(len(cand.mat), seg.start)
    x = irfft(seg_spec * cand.spec, _NFFT, axis=1)[:, : 2 * LAG_SAMPLES + 1]
    power, full = cand.power, cand.full
    # The snippets' energy at each lag: the whole snippet's (one column serves every lag)
    # unless an attack is cut off.
    energy = full[:, None]
    if starts.max(initial=0) > 0:
        energy = np.array(np.broadcast_to(energy, x.shape))
    for start in np.unique(starts[starts > 0]).tolist():
        rows = np.nonzero(starts == start)[0]
        # Only lags below ``start`` place the snippet's first j0 = start - lag samples before
        # the query's first sample; at the others the whole snippet counts.
        n_lags = min(start, 2 * LAG_SAMPLES + 1)
        j0 = np.minimum(start - np.arange(n_lags), SNIPPET_SAMPLES)  # >= 1
        before = np.cumsum(power[rows, : int(j0.max())], axis=1)[:, j0 - 1]  # energy cut off
        part = full[rows, None] - before
        use = (j0 <= MAX_TRIM_SAMPLES)[None] & (part >= MIN_OVERLAP_ENERGY * full[rows, None])
        energy[rows, :n_lags] = np.where(use, part, full[rows, None])
    rho = x * seg_scale
    rho *= (1.0 / np.sqrt(energy)).astype(np.float32)
    lag = np.argmax(rho, axis=1)
    rows = np.arange(len(x))
    return rho[rows, lag], x[rows, lag] / energy[rows, lag if energy.shape[1] > 1 else 0], lag


def probe(y: np.ndarray, snippets: np.ndarray) -> np.ndarray:
    """Correlation of a query at WAVE_SR with a few snippets [n, SNIPPET_SAMPLES], at its own
    speed only (no stretch search, no second sound): a cheap check of which version of a
    query (resampled, reversed) correlates with some file at all.

    Parameters
    ----------
    y : float array [n]
        The query (or a variant of it) at WAVE_SR.
    snippets : float array [m, SNIPPET_SAMPLES]
        Candidate waveforms.

    Returns
    -------
    float array [m]
        Each snippet's best normalised correlation over +-LAG_SAMPLES (as :func:`correlate`,
        with the cut-attack search of :func:`explain`); zeros for a silent ``y``.
    """
    if not len(snippets) or not np.any(y):
        return np.zeros(len(snippets), np.float32)
    seg, start = _segment(np.asarray(y, np.float32))
    return correlate(seg, snippets, start=start)[0]


def onset_segment(y: np.ndarray) -> np.ndarray:
    """The query around its onset: LAG_SAMPLES of slack on both sides of a snippet's span."""
    return padded(y, onset_sample(y) - PRE_ROLL_SAMPLES - LAG_SAMPLES, _SEGMENT)


def _segment_first(y: np.ndarray) -> int:
    """Where :func:`_segment` starts in ``y`` (negative: before its first sample)."""
    on = onset_sample(y)
    first = on - PRE_ROLL_SAMPLES - LAG_SAMPLES
    if on < PRE_ROLL_SAMPLES:
        first -= TRIM_SAMPLES
    return first


def _segment(y: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`onset_segment`, TRIM_SAMPLES earlier for a query that starts loud (its attack
    may have been cut off), and where the query's first sample lies in it."""
    first = _segment_first(y)
    return padded(y, first, _SEGMENT), max(0, -first)


def _stretched(y: np.ndarray, cents: float, onset: int | None = None) -> np.ndarray:
    """``y`` resampled as if played ``cents`` lower (undoes a pitch-up by resampling);
    ``onset``: ``onset_sample(y)`` when known."""
    import soxr

    on = onset_sample(y) if onset is None else onset
    head = y[: on + 2 * _SEGMENT]  # only the onset region is compared
    return np.asarray(soxr.resample(head, WAVE_SR, WAVE_SR * 2 ** (cents / 1200)), np.float32)


def _placed(s: np.ndarray, lag: int, n: int = _SEGMENT) -> np.ndarray:
    """Snippet ``s`` starting at sample ``lag`` of ``n`` zeros (clipped to them)."""
    out = np.zeros(n, np.float32)
    a, b = max(lag, 0), min(lag + SNIPPET_SAMPLES, n)
    if b > a:
        out[a:b] = s[a - lag : b - lag]
    return out


@dataclass(frozen=True)
class Thresholds:
    """The waveform stage's decision thresholds (fitted by ``bench/fit_identify.py``)."""

    wave_min_rho: float  # below this the waveform stage abstains
    alone_rho: float  # at or above this one file explains the onset: no second sound sought
    pair_min_rho: float  # a second sound must correlate this well with the residual


@dataclass(frozen=True)
class Analysis:
    """Everything :func:`decide` needs: the best single file and the best pair."""

    rho: float  # best single file's correlation
    single: Explanation
    pair: Explanation | None  # the mix explanation, when a second sound was sought and found
    pair_rho: float  # the second sound's correlation with the residual (0 without one)


def _fitted_thresholds() -> Thresholds:
    from emberd.library import fitted

    return Thresholds(**{k: float(v) for k, v in fitted.params()["waveform"].items()})


#: The decision thresholds in use, fitted by ``bench/fit_identify.py`` on kits A.
THRESHOLDS = _fitted_thresholds()


def decide(analysis: Analysis | None, th: Thresholds) -> Explanation | None:
    """The answer :func:`explain` gives for an :func:`analyse` result under thresholds ``th``."""
    if analysis is None or analysis.rho < th.wave_min_rho:
        return None
    if analysis.rho >= th.alone_rho or analysis.pair is None or analysis.pair_rho < th.pair_min_rho:
        return analysis.single
    return analysis.pair


def explain(
    audio: np.ndarray,
    sr: int,
    candidates: Sequence[int],
    rank: np.ndarray,
    load: Callable[[Sequence[int]], dict[int, Snippet]],
    neighbours: Callable[[np.ndarray, int], list[int]],
    thresholds: Thresholds | None = None,
) -> Explanation | None:
    """Which library file (or pair of files) a query is, by waveform.

    Parameters
    ----------
    audio : float array [n] or [n, channels]
        The query.
    sr : int
        Its sample rate in Hz.
    candidates : sequence of int
        Candidate file ids (from the cheap stages).
    rank : float array [len(candidates)]
        The template ranker's score of each candidate (higher = likelier);
        the best STRETCH_BY_RANK are searched over STRETCH_CENTS.
    load : callable
        File ids -> their stored snippets (files without one are left out).
    neighbours : callable
        ``(audio at WAVE_SR, sr) -> file ids`` likely to contain it: called on
        the residual to find the second sound of a mix.

    thresholds : Thresholds, optional
        Decision thresholds (default: the fitted :data:`THRESHOLDS`).

    Returns
    -------
    Explanation or None
        None when no snippet correlates at least ``thresholds.wave_min_rho``.
    """
    th = THRESHOLDS if thresholds is None else thresholds
    return decide(analyse(audio, sr, candidates, rank, load, neighbours, stop=th), th)


def analyse(
    audio: np.ndarray,
    sr: int,
    candidates: Sequence[int],
    rank: np.ndarray,
    load: Callable[[Sequence[int]], dict[int, Snippet]],
    neighbours: Callable[[np.ndarray, int], list[int]],
    *,
    stop: Thresholds | None = None,
) -> Analysis | None:
    """The measurements behind :func:`explain` (same parameters).

    With ``stop`` it skips work whose result ``decide(..., stop)`` would ignore
    (the live path); without, it always seeks the second sound, so a fit can
    try every threshold on one analysis per query. None without any snippet.
    """
    y = mono_at(audio, sr, WAVE_SR)
    snips = load(list(candidates))
    ids = [f for f in candidates if f in snips]
    if not ids or not np.any(y):
        return None
    mat = np.stack([snips[f].samples() for f in ids])
    spec = spectra(mat)
    cand = _Candidates(mat, spec)
    unstretched_seg = _Segment.of(*_segment(y))
    rho, gain, lag = _correlate(unstretched_seg, cand)
    unstretched = (rho.copy(), gain.copy(), lag.copy())
    cents = np.zeros(len(ids))
    pos = {f: i for i, f in enumerate(candidates)}
    by_rank = np.argsort(-np.asarray([rank[pos[f]] for f in ids]))[:STRETCH_BY_RANK]
    top = np.unique(np.concatenate([by_rank, np.argsort(-rho)[:STRETCH_BY_RHO]]))
    y_onset = onset_sample(y)
    at_cents: dict[float, tuple[np.ndarray, _Segment]] = {}  # the query per stretch

    def stretched_at(c: float) -> tuple[np.ndarray, _Segment]:
        """The query stretched by ``c`` cents and its prepared segment."""
        if c not in at_cents:  # refinements of neighbouring files often share a stretch
            ys = _stretched(y, c, y_onset)
            at_cents[c] = ys, _Segment.of(*_segment(ys))
        return at_cents[c]

    def segment_at(c: float) -> _Segment:
        return stretched_at(c)[1]

    top_cand = cand.rows(top)
    for c in STRETCH_CENTS:
        r, g, lg = _correlate(segment_at(c), top_cand)
        up = r > rho[top]
        rho[top] = np.where(up, r, rho[top])
        gain[top] = np.where(up, g, gain[top])
        lag[top] = np.where(up, lg, lag[top])
        cents[top] = np.where(up, c, cents[top])
    # Noise-like sounds decorrelate within a few cents: refine the best few between grid points.
    step = min(np.diff(sorted({0.0, *STRETCH_CENTS}))) if STRETCH_CENTS else 0.0
    refine = np.argsort(-rho)[:REFINE_TOP] if step else np.zeros(0, int)
    h = step / 2
    for _ in range(REFINE_STEPS) if len(refine) else []:
        # Each file's two tries either side of its best stretch, all files in one batch
        # (files are refined independently; each file's tries are taken in order).
        tries = [(i, c) for i in refine.tolist() for c in (cents[i] - h, cents[i] + h)]
        r, g, lg = _correlate([segment_at(c) for _i, c in tries],
                              cand.rows(np.array([i for i, _c in tries])))
        for k, (i, c) in enumerate(tries):
            if r[k] > rho[i]:
                rho[i], gain[i], lag[i], cents[i] = r[k], g[k], lg[k], c
        h /= 2
    # The best of many stretches always beats no stretch a little: keep one only when it
    # clearly does (a spurious stretch would also distort the second sound of a mix).
    keep = rho < unstretched[0] + STRETCH_MIN_GAIN
    for now, before in zip((rho, gain, lag), unstretched, strict=True):
        now[keep] = before[keep]
    cents[keep] = 0.0
    best = int(np.argmax(rho))

    def first_at(c: float) -> int:
        """Where the segment compared at ``c`` cents starts in the query resampled so."""
        return _segment_first(y if c == 0 else stretched_at(c)[0])

    one = _single(ids, rho, gain, best, (lag, cents, first_at))
    alone = Analysis(float(rho[best]), one, None, 0.0)
    if stop is not None and (rho[best] < stop.wave_min_rho or rho[best] >= stop.alone_rho):
        return alone
    # Residual after the best file: is a second library sound there? When the residual's
    # onset is later than the query's (in a mix the other sound may start later than the
    # +-LAG_SAMPLES the first was searched over), it is searched from there, up to a
    # snippet's length further into the query.
    ys, prepared = ((y, unstretched_seg) if cents[best] == 0
                    else stretched_at(float(cents[best])))
    start = prepared.start
    _r1, g1, l1 = _correlate(prepared, cand.rows(slice(best, best + 1)))
    first = _placed(mat[best], int(l1[0]), _EXTENDED)
    seg_first = _segment_first(ys)
    whole = padded(ys, seg_first, _EXTENDED)  # seg, and a snippet's length more
    rest = whole - g1[0] * first
    rest[:start] = 0.0  # the query is silent before its start: so is what is left of it
    shift = max(0, onset_sample(rest) - (onset_sample(ys) - seg_first))
    resid = padded(rest, shift, _SEGMENT)
    start = max(0, start - shift)
    same = {f for f, r in zip(ids, rho, strict=True) if r >= rho[best] - SAME_RECORDING_RHO}
    pool = [f for f in dict.fromkeys([*ids, *neighbours(resid, WAVE_SR)]) if f not in same]
    snips.update(load([f for f in pool if f not in snips]))
    pool = [f for f in pool if f in snips]
    if not pool:
        return alone
    row = {f: i for i, f in enumerate(ids)}
    new = [f for f in pool if f not in row]
    pmat = np.concatenate([mat, np.stack([snips[f].samples() for f in new])]) if new else mat
    pspec = np.concatenate([spec, spectra(pmat[len(mat) :])]) if new else spec
    row.update({f: len(mat) + i for i, f in enumerate(new)})
    take = np.array([row[f] for f in pool])
    pmat, pspec = pmat[take], pspec[take]
    r2, g2, l2 = correlate(resid, pmat, pspec, start)
    second = int(np.argmax(r2))
    if stop is not None and r2[second] < stop.pair_min_rho:
        return Analysis(alone.rho, one, None, float(r2[second]))
    basis = np.stack([first, _placed(pmat[second], shift + int(l2[second]), _EXTENDED)],
                     axis=1).astype(np.float64)
    coef = np.linalg.lstsq(basis, whole.astype(np.float64), rcond=None)[0]
    # Level copies of either sound correlate as well as it does: keep the one nearest 0 dB.
    two = _single(pool, r2, g2, second)
    # The answer is the sound with the louder peak in the mix, whichever explains more energy.
    loud = [coef[0] * np.abs(mat[best]).max(), coef[1] * np.abs(pmat[second]).max()]
    if loud[0] >= loud[1]:
        pair = Explanation(one.file_id, one.rho, one.gain_db, two.file_id, one.runner_up_rho)
    else:
        pair = Explanation(two.file_id, two.rho, two.gain_db, one.file_id, two.runner_up_rho)
    return Analysis(alone.rho, one, pair, float(r2[second]))


def _single(
    ids: list[int], rho: np.ndarray, gain: np.ndarray, best: int,
    where: tuple[np.ndarray, np.ndarray, Callable[[float], int]] | None = None,
) -> Explanation:
    """The best file, or the level copy of it whose gain is nearest 0 dB.

    ``where``: each candidate's lag and stretch (cents) and the segment's start in the query
    at a stretch; with it the answer lists its :class:`Tie` s (those within TIE_RHO).
    """
    same = rho >= rho[best] - SAME_RECORDING_RHO
    near = np.nonzero(same)[0]
    pick = int(near[np.argmin(np.abs([_db(float(gain[i])) for i in near]))])
    other = float(np.max(rho[~same])) if not same.all() else 0.0
    ties: tuple[Tie, ...] = ()
    if where is not None:
        lag, cents, first_at = where
        close = [int(i) for i in np.argsort(-rho) if rho[i] >= rho[best] - TIE_RHO]
        ties = tuple(
            Tie(ids[i], float(rho[i]), _db(float(gain[i])), float(cents[i]),
                first_at(float(cents[i])) + int(lag[i]))
            for i in [pick, *(i for i in close if i != pick)])
    return Explanation(ids[pick], float(rho[pick]), _db(float(gain[pick])), None, other, ties)


def sound_rho(y: np.ndarray, tie: Tie, file_audio: np.ndarray, sr: int) -> tuple[float, float]:
    """How well a candidate's whole sound (its first SOUND_S from the snippet's start), not
    only its snippet, matches the query where the snippet aligned: sibling recordings of one
    instrument (round robins, velocity layers) share their first 250 ms closely, their
    later fine structure and decay much less.

    The query is resampled by the tie's cents (as the speed search left it) and compared
    block by block (SOUND_BLOCK samples, each re-aligned within SOUND_BLOCK_LAG: the residual
    speed error drifts over a second), from the query's first sample to its last (a cut
    attack or a cut tail is not counted).

    Parameters
    ----------
    y : float array [n]
        The query at WAVE_SR (the one :func:`explain` was given).
    tie : Tie
        The candidate, with its stretch and alignment (:attr:`Explanation.ties`).
    file_audio : float array [m] or [m, channels]
        The candidate's audio (its file).
    sr : int
        ``file_audio``'s sample rate in Hz.

    Returns
    -------
    whole, blocks : float
        The sum of the blocks' best products over the root of both energies (the attack's
        energy dominates it), and the mean of each block's own normalised correlation over
        the blocks where the file is within SOUND_FLOOR_DB of its loudest block (the decay
        counts as much as the attack); each 0 where nothing overlaps.
    """
    import soxr

    n = int(SOUND_S * WAVE_SR)
    f = mono_at(file_audio, sr, WAVE_SR)
    w = padded(f, onset_sample(f) - PRE_ROLL_SAMPLES, n)
    ys = np.asarray(y, np.float32)
    if tie.cents:
        end = max(0, tie.align) + 2 * n  # enough of the query for n samples once resampled
        ys = np.asarray(soxr.resample(ys[: int(end * 2 ** (abs(tie.cents) / 1200)) + 1],
                                      WAVE_SR, WAVE_SR * 2 ** (tie.cents / 1200)), np.float32)
    d = SOUND_BLOCK_LAG
    q = padded(ys, tie.align - d, n + 2 * d)
    begin = max(0, -tie.align)  # the query's first sample in w's time
    stop = min(n, len(ys) - tie.align)  # ... and its last: a cut tail is not counted either
    dots, q_en, w_en = [], [], []
    for a in range(begin, stop, SOUND_BLOCK):
        wb = w[a : min(a + SOUND_BLOCK, stop)].astype(np.float64)
        qb = q[a : a + len(wb) + 2 * d].astype(np.float64)
        x = np.correlate(qb, wb, mode="valid")  # lags -d .. +d
        k = int(np.argmax(x)) if np.any(wb) and np.any(qb) else d
        qa = qb[k : k + len(wb)]
        dots.append(float(x[k]))
        q_en.append(float(qa @ qa))
        w_en.append(float(wb @ wb))
    dot, qe, we = np.array(dots), np.array(q_en), np.array(w_en)
    if not len(dot) or qe.sum() <= 0 or we.sum() <= 0:
        return 0.0, 0.0
    whole = float(dot.sum() / np.sqrt(qe.sum() * we.sum()))
    live = (we >= we.max() * 10 ** (-SOUND_FLOOR_DB / 10)) & (qe > 0)
    blocks = float(np.mean(dot[live] / np.sqrt(qe[live] * we[live]))) if live.any() else 0.0
    return whole, blocks


def _db(gain: float) -> float:
    return float(20.0 * np.log10(max(abs(gain), 1e-6)))
