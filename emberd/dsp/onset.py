"""Block-rate onset detection for live hits: one detector per channel, fed as blocks arrive.

The live daemon's hit ladder (:mod:`emberd.daemon.hits`) must know that a sound
started within a few milliseconds, whatever the gain of the hit, with a previous
sound still ringing and over a steady noise floor. :class:`OnsetDetector` takes the
audio in whatever blocks the worker drains from the ring (256-sample callbacks in
practice), cuts it into FRAME_SAMPLES frames (1.45 ms at 22.05 kHz) and computes two
detection functions per frame, both in dB:

* the frame energy (broadband), and
* the energy of the second difference (a +12 dB/octave tilt: a hi-hat or a snare's
  crack rises clearly here even over a tom's loud ring 20 dB above it), and
* the energy of the input under 300 Hz and in 300-1500 Hz (BAND_EDGES_HZ, over
  BAND_WINDOW_S): a tom's or a kick's body under a cymbal's bright tail that was not
  identified; and in SPLIT_BANDS narrower bands
  (150-300, 300-700, 1500-3000 Hz): a new hit whose energy lies where the ringing sounds
  are quiet, while the wide band around it is full of their tails (4 channels x 16
  hits/s: half the hits start under the sum of the earlier ones, and many of those stand
  10 dB over it in a narrow band; ``bench/stress_misses.py``, chosen on the tuning split by
  ``bench/fit_onset_bands.py``). The 150-300 Hz band's 5.8-ms level has under one degree
  of freedom, so its floor margin is BAND_FLOOR_MARGIN_DB higher.

The band functions decide everywhere (BANDS_COVERED), also where identified sounds are
subtracted (below): at 16 hits/s about 7 sounds ring, and the one or two identified do not
explain the others' tails.

A frame is an onset when, in either function, the level rises at least RISE_DB above
its mean energy over LOOKBACK_S before the last RISE_SPAN_S (a rise, not a level: gain
invariant; a previous sound's decay never rises far above its own recent mean, even a
low ring whose 1.5-ms frames swing with its zero crossings, or a noisy cymbal tail) and
stands FLOOR_MARGIN_DB above that function's noise floor (tracked: falls at once, rises
at FLOOR_RISE_DB_PER_S, so a steady noise floor is learnt and a long sound does not
become "floor"), its broadband level is above ABSOLUTE_FLOOR_DB, and REFRACTORY_S has
passed since the last onset (one hit, one onset: the bursts of a clap or a flam's grace
note stay one hit). Where the caller knows what earlier sounds will still play (their
identified samples), the rise is looked for in what is left after subtracting them: a
quiet hat 20 dB under a known kick's tail is a clear rise there.
Optionally (``decay_credit_db`` > 0; off by default, DECAY_CREDIT_DB = 0), where a
function's recent past decays steadily (a previous sound's tail that nobody identified,
so nothing is subtracted), the reference follows that tail's level as its own last
frames extrapolate it (:meth:`OnsetDetector._decay_pred_db`), at most the credit under
the mean and never closer than DECAY_FLOOR_MARGIN_DB to the noise floor: a quiet hit
60 ms into a loud tom's decay rises against the tail, not against its louder past.
``bench/fit_onset_decay.py`` chose 4 dB on the tuning split; on the held-out
performances that tripled the extra onsets inside sounds (README, "Live hits"), so it
stays off.
The onset sample is refined inside the frame: the first sample whose magnitude
reaches ONSET_FRACTION of the frame's peak.

The work is a few numpy operations per block (the floor recursion is unrolled into a
running minimum); Python only loops over frames that pass every test, to apply the
refractory time. It runs in the worker
thread, never in the audio callback.
"""

from __future__ import annotations

import functools
import math

import numpy as np

FRAME_S = 0.00145  # detection frame (32 samples at 22.05 kHz): ~1.5 ms time resolution
RISE_DB = 10.0  # a frame this far above the recent mean energy (either function) is a rise
LOOKBACK_S = 0.025  # the recent mean looks back this far: > one period of a 40 Hz ring
RISE_SPAN_S = 0.003  # ... but skips the newest frames: an attack may rise over ~3 ms
FLOOR_MARGIN_DB = 12.0  # a rise must also clear the tracked noise floor by this much
FLOOR_RISE_DB_PER_S = 6.0  # the noise floor follows a rising background this slowly
ABSOLUTE_FLOOR_DB = -70.0  # dBFS: nothing quieter is a hit, whatever the floor
REFRACTORY_S = 0.04  # after an onset no other for this long (hits come >= 62 ms apart)
WARMUP_S = 0.05  # no onset before the floor has been seen this long
ONSET_FRACTION = 0.3  # the onset sample: first in the frame reaching this share of its peak
SILENCE_DB = -120.0  # dB given to digital silence
BAND_EDGES_HZ = (
    (0.0, 300.0), (300.0, 1500.0),  # a low body under a bright tail
    (150.0, 300.0), (300.0, 700.0), (1500.0, 3000.0),  # split bands (SPLIT_BANDS)
)  # fmt: skip
SPLIT_BANDS = 3  # the last bands of BAND_EDGES_HZ, narrower: where a new hit's energy lies in
# a part of the spectrum the ringing sounds leave quieter than the two wide bands show (4 ch x
# 16 hits/s, tuning kits: 850 -> 1008 of 1728 hits by the detector alone, 951 -> 1031 by the
# hit ladder; chosen by bench/fit_onset_bands.py, adding 700-1500 Hz doubled extra onsets)
BAND_FLOOR_MARGIN_DB = (0.0, 0.0, 12.0, 0.0, 0.0)  # dB added to FLOOR_MARGIN_DB per band: a
# 150-Hz-wide band over 5.8 ms has under one degree of freedom, and its noise swings far above
# the tracked floor (a running minimum). Chosen by bench/fit_onset_bands.py on the tuning split:
# in 4 + 4 minutes of -50 dBFS white noise at 22.05 / 44.1 kHz, +0 / +6 / +12 dB gave 51 / 16 /
# 3 detections (the wide bands alone: 3)
WIDE_BANDS = 2  # the first bands of BAND_EDGES_HZ, always on
BAND_ORDER = 2  # Butterworth order of the band filters (a few samples of delay)
DECAY_CREDIT_DB = 0.0  # dB a decaying reference may be lowered below the recent mean (off:
# the tuning split's 4 dB tripled extra onsets in sound on held-out performances)
DECAY_FLOOR_MARGIN_DB = (12.0, 12.0, 24.0, 12.0, 24.0, 12.0, 12.0)  # ... nor under the noise
# floor plus this, per function (broadband, second difference, then one per BAND_EDGES_HZ: a
# detector checks the lengths): under 300 Hz a 5.8-ms level has a few degrees of freedom, and
# the thirds of steady noise there "decay" by chance
BANDS_COVERED = True  # the band functions decide also where a prediction is subtracted: at
# 16 hits/s about 7 sounds ring and one or two are identified, and with the bands off there the
# residual's broadband functions alone had to find a hit under the unidentified tails
# (bench/stress_oracle.py, tuning kits, detector alone, the true tail of the previous hit
# subtracted from 6 ms after its onset: 1091 of 1728 hits found with the guard below, 1161
# without it, 908 with the bands off there, 1008 with nothing subtracted)
COVERED_RESIDUAL_RISE_DB = 3.0  # ... where the residual's broadband functions rise this much
# too: a known sound's own click (a file ending abruptly) rises in the input's bands, not in
# the residual (the ladder test's kick). Hit ladder, stress, tuning kits: 1088 of 1728 with the
# bands off there, 1190 (6 extra) with them and no guard, 1169 (4 extra) with the guard
BAND_WINDOW_S = 0.0058  # band energy over this much (noise under 300 Hz in one 1.45-ms
# frame has about one degree of freedom: its frames swing by 10 dB in steady noise)


@functools.lru_cache(maxsize=4)
def _band_filters(sr: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Transfer functions (b, a) of the BAND_EDGES_HZ filters at ``sr``.

    Low orders (at most 4 for a band-pass) at frequencies far from 0 and Nyquist: the
    direct form matches the second-order sections (``sosfilt``; 4 s of white noise,
    largest difference over the output's peak) to 1e-14-4e-11 at 22.05 kHz, the narrow
    150-300 Hz band the worst (5e-10 at 48 kHz, 1.3e-9 at 44.1 kHz; 2026-12-02), and
    ``lfilter`` costs a fifth of ``sosfilt``'s per-call overhead on a 128-sample block
    (two calls a block per channel).
    """
    from scipy.signal import butter

    out = []
    for lo, hi in BAND_EDGES_HZ:
        if lo <= 0.0:
            b, a = butter(BAND_ORDER, hi, "lowpass", fs=sr)
        else:
            b, a = butter(BAND_ORDER, [lo, hi], "bandpass", fs=sr)
        out.append((np.asarray(b, np.float64), np.asarray(a, np.float64)))
    return tuple(out)


def _db(energy: np.ndarray) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(energy, 1e-30)), SILENCE_DB)


class OnsetDetector:
    """Onset detector for one channel (see the module docstring).

    Parameters
    ----------
    sr : int
        Sample rate in Hz.
    rise_db, floor_margin_db, refractory_s : float
        Override the module defaults (tests, tuning).
    decay_credit_db : float, optional
        Override DECAY_CREDIT_DB (0: the reference is the recent mean alone).
    split_bands : int, optional
        How many of the narrow band functions after the WIDE_BANDS run (default
        SPLIT_BANDS, all of them; 0: only the two wide bands, the detector before them,
        for A/B runs and tests).
    bands_covered : bool, optional
        Whether the band functions also decide where a prediction is subtracted (default
        BANDS_COVERED; False: only the residual's broadband functions there, the detector
        before 2026-12-02, for A/B runs and tests).

    Attributes
    ----------
    position : int
        Samples consumed so far; onsets are reported as absolute sample positions
        on this count.
    floor_db : float
        The current broadband noise-floor estimate (dBFS energy per sample).
    """

    def __init__(
        self,
        *,
        sr: int,
        rise_db: float = RISE_DB,
        floor_margin_db: float = FLOOR_MARGIN_DB,
        refractory_s: float = REFRACTORY_S,
        decay_credit_db: float | None = None,
        split_bands: int | None = None,
        bands_covered: bool | None = None,
    ) -> None:
        self.sr = int(sr)
        self.frame = max(8, round(FRAME_S * sr))
        self.rise_db = float(rise_db)
        self.floor_margin_db = float(floor_margin_db)
        credit = DECAY_CREDIT_DB if decay_credit_db is None else decay_credit_db
        self.decay_credit_db = float(credit)  # read at construction: tuning sets the module's
        self.bands_covered = BANDS_COVERED if bands_covered is None else bool(bands_covered)
        self._refractory = max(1, round(refractory_s * sr / self.frame))
        self._lookback = max(2, round(LOOKBACK_S * sr / self.frame))
        self._span = max(1, round(RISE_SPAN_S * sr / self.frame))
        self._warmup = max(1, round(WARMUP_S * sr / self.frame))
        self._floor_step = FLOOR_RISE_DB_PER_S * self.frame / sr
        n_all = len(BAND_EDGES_HZ)  # the per-band arrays must follow the band list
        if len(BAND_FLOOR_MARGIN_DB) != n_all or len(DECAY_FLOOR_MARGIN_DB) != 2 + n_all:
            raise ValueError(
                f"{n_all} bands need as many BAND_FLOOR_MARGIN_DB (got "
                f"{len(BAND_FLOOR_MARGIN_DB)}) and 2 more DECAY_FLOOR_MARGIN_DB (got "
                f"{len(DECAY_FLOOR_MARGIN_DB)})"
            )
        # Levels of the last frames (every function); -inf: nothing before the stream.
        split = SPLIT_BANDS if split_bands is None else split_bands  # read at construction
        n_bands = WIDE_BANDS + min(max(split, 0), len(BAND_EDGES_HZ) - WIDE_BANDS)
        n_fn = 2 + n_bands
        self._hist = np.full((n_fn, self._lookback + self._span), -np.inf)
        self._hist_raw = self._hist[:2].copy()
        self._floor = np.full(n_fn, np.inf)
        from scipy.signal import lfilter

        self._lfilter = lfilter
        self._ba = _band_filters(self.sr)[:n_bands]
        margins = np.concatenate([[0.0, 0.0], BAND_FLOOR_MARGIN_DB[:n_bands]])
        self._margin = (self.floor_margin_db + margins)[:, None]  # per function, dB
        self._zi = [np.zeros(max(len(b), len(a)) - 1) for b, a in self._ba]  # filter states
        self._band_span = max(1, round(BAND_WINDOW_S * sr / self.frame))  # frames
        self._band_tail = np.zeros((len(self._ba), self._band_span - 1))  # linear energies
        self._pending = np.zeros((3, self.frame), np.float32)  # partial frame: x, known, covered
        self._n_pending = 0
        self._last = np.zeros((2, 2), np.float32)  # last samples of x and residual (difference)
        self._frames = 0
        self._quiet_until = self._warmup  # no onset up to this frame count (warm-up)
        self._since = self._refractory  # frames since the last onset
        self.position = 0

    def _window_mean_db(self, levels: np.ndarray, n: int) -> np.ndarray:
        """Mean energy (dB) of each LOOKBACK run of ``levels`` [2, m] starting at 0..n-1.

        A running sum of linear energies: one vector operation per block, where a
        sliding-window view cost more in numpy call overhead than the whole detector.
        """
        lin = np.power(10.0, levels / 10.0)  # -inf (before the stream) -> 0
        cum = np.concatenate([np.zeros((len(lin), 1)), np.cumsum(lin, axis=1)], axis=1)
        k = self._lookback
        return _db((cum[:, k : k + n] - cum[:, :n]) / k)

    def _decay_pred_db(self, levels: np.ndarray, n: int) -> np.ndarray:
        """Each frame's level as its functions' recent past predicts it where that past
        decays steadily: the LOOKBACK run cut in three, the newest third extrapolated to
        the frame at the gentler of the two slopes between thirds (a previous sound's
        tail predicted from its own recent frames; a tail that beats, or levels out at
        the floor, has a slope >= 0 somewhere and is predicted flat).

        ``levels`` [f, m] as for :meth:`_window_mean_db`; the frame of run ``i`` is
        ``levels[:, i + lookback + span]``.
        """
        k = self._lookback
        t = k // 3
        lin = np.power(10.0, levels / 10.0)
        cum = np.concatenate([np.zeros((len(lin), 1)), np.cumsum(lin, axis=1)], axis=1)
        a = _db((cum[:, k - 2 * t : k - 2 * t + n] - cum[:, k - 3 * t : k - 3 * t + n]) / t)
        b = _db((cum[:, k - t : k - t + n] - cum[:, k - 2 * t : k - 2 * t + n]) / t)
        c = _db((cum[:, k : k + n] - cum[:, k - t : k - t + n]) / t)
        slope = np.minimum(np.maximum(b - a, c - b), 0.0) / t  # dB per frame, never a rise
        return c + slope * (self._span + t / 2.0 + 0.5)

    def skip(self, n: int) -> None:
        """``n`` samples of the channel were never seen (lost or not analysed): move the
        position past them. The audio on both sides does not join up, so the partial frame
        is dropped and no onset is reported for WARMUP_S: the detector's look-back then
        holds only audio from after the gap (a splice is no rise). The floor is kept."""
        if n <= 0:
            return
        self.position += int(n)
        self._n_pending = 0
        self._last[:] = 0.0
        for zi in self._zi:
            zi[:] = 0.0
        self._band_tail[:] = 0.0
        self._quiet_until = self._frames + self._warmup

    @property
    def floor_db(self) -> float:
        """Broadband noise floor in dB (energy per sample), SILENCE_DB before any audio."""
        return float(self._floor[0]) if math.isfinite(self._floor[0]) else SILENCE_DB

    def push(
        self, x: np.ndarray, known: np.ndarray | None = None, covered: np.ndarray | None = None
    ) -> list[int]:
        """Feed the next samples of the channel; return the onsets they complete.

        Parameters
        ----------
        x : float array [n]
            The channel's next samples, in order (any block size).
        known : float array [n], optional
            The part of ``x`` already explained: the predicted continuation of earlier
            sounds (the hit ladder's identified samples). Where ``covered``, the detector
            looks for a rise in ``x - known`` (a quiet hit over a loud known tail), compared
            with the residual before it; elsewhere in ``x`` itself, compared with ``x``
            before it, so the end of a prediction is never a rise.
        covered : bool array [n], optional
            Where ``known`` is a prediction (default: nowhere).

        Returns
        -------
        list of int
            Absolute sample positions (see :attr:`position`) of the onsets found in
            the frames this call completed, oldest first.
        """
        x = np.asarray(x, np.float32).reshape(-1)
        data = np.zeros((3, len(x)), np.float32)
        data[0] = x
        if known is not None and covered is not None:
            data[1] = known
            data[2] = covered
        start = self.position - self._n_pending  # absolute position of the first frame
        joint = self._n_pending  # where this call's samples join the earlier ones
        merged = np.concatenate([self._pending[:, : self._n_pending], data], axis=1)
        whole = merged.shape[1] - merged.shape[1] % self.frame
        self.position += len(x)
        self._n_pending = merged.shape[1] - whole
        self._pending[:, : self._n_pending] = merged[:, whole:]
        if not whole:
            return []
        buf = merged[0, :whole]
        resid = buf - merged[1, :whole]
        cov = merged[2, :whole].reshape(-1, self.frame).min(axis=1) > 0  # whole frames only
        both = np.stack([buf, resid])
        diff = np.diff(both, 2, axis=1, prepend=self._last)
        # The earlier samples' residual was taken with the prediction of that call: a sound
        # identified since then is subtracted from here on only, a step that would read as
        # a crack in the second difference (a false onset where a loud sound's prediction
        # starts on a block boundary). The two differences across the joint are not used.
        if joint + 2 < whole:
            diff[1, joint : joint + 2] = diff[1, joint + 2]
        diff = diff.reshape(2, -1, self.frame)
        self._last = both[:, -2:].copy()
        frames = both.reshape(2, -1, self.frame)
        raw = np.stack([_db(np.mean(frames[0] ** 2, axis=1)), _db(np.mean(diff[0] ** 2, axis=1))])
        res = np.stack([_db(np.mean(frames[1] ** 2, axis=1)), _db(np.mean(diff[1] ** 2, axis=1))])
        # Band functions, of the input itself (a step in the residual where a prediction
        # starts would ring through a filter): a tom's or a snare's body rises clearly in
        # its band under a cymbal's or an open hat's bright tail that was not subtracted.
        band_frames, band_energy = [], []
        for j, (b, a) in enumerate(self._ba):
            yb, self._zi[j] = self._lfilter(b, a, buf, zi=self._zi[j])
            band_frames.append(yb.reshape(-1, self.frame))
            band_energy.append(np.mean(band_frames[-1] ** 2, axis=1))
        # Each frame's band level: the mean energy of its BAND_WINDOW_S ending with it.
        lin = np.concatenate([self._band_tail, np.array(band_energy)], axis=1)
        cum = np.concatenate([np.zeros((len(lin), 1)), np.cumsum(lin, axis=1)], axis=1)
        k = self._band_span
        bands = _db((cum[:, k:] - cum[:, :-k]) / k)
        self._band_tail = lin[:, lin.shape[1] - (k - 1) :]
        levels = np.concatenate([np.where(cov[None], res, raw), bands])
        n = levels.shape[1]
        # Rise over the maximum of the LOOKBACK frames ending RISE_SPAN before each frame:
        # a covered frame against the residual (or raw) levels, an uncovered one against raw.
        past_det = np.concatenate([self._hist, levels], axis=1)
        past_raw = np.concatenate([self._hist_raw, raw], axis=1)
        mean_det = self._window_mean_db(past_det, n)
        mean_raw = self._window_mean_db(past_raw, n)
        ref = np.concatenate([np.where(cov[None], mean_det[:2], mean_raw), mean_det[2:]])
        self._hist_raw = past_raw[:, -(self._lookback + self._span) :]
        past = past_det
        frames = np.where(cov[:, None], frames[1], frames[0])
        diff = np.where(cov[:, None], diff[1], diff[0])
        # Floor before each frame: floor_i = min(level_i, floor_{i-1} + step), unrolled:
        # floor_i = step * (i + 1) + min(floor_{-1}, min_{k <= i} level_k - step * (k + 1)).
        steps = self._floor_step * np.arange(1, n + 1)
        ramp = np.minimum.accumulate(
            np.concatenate([self._floor[:, None], levels - steps], axis=1), axis=1
        )
        floor_after = ramp[:, 1:] + steps
        floor_before = np.concatenate([self._floor[:, None], floor_after[:, :-1]], axis=1)
        if self.decay_credit_db > 0.0:
            # A decaying past predicts a lower level than its mean: the reference may follow
            # the prediction down by DECAY_CREDIT_DB, never under DECAY_FLOOR_MARGIN_DB over
            # the floor (in the noise floor the thirds' slopes are chance).
            pred_det = self._decay_pred_db(past_det, n)
            pred = np.concatenate([
                np.where(cov[None], pred_det[:2], self._decay_pred_db(past_raw, n)), pred_det[2:]
            ])  # fmt: skip
            margin = np.array(DECAY_FLOOR_MARGIN_DB)[: len(levels), None]
            low = np.maximum(ref - self.decay_credit_db, floor_before + margin)
            ref = np.minimum(ref, np.maximum(pred, low))
        rise = levels - ref
        ok = (rise >= self.rise_db) & (levels - floor_before >= self._margin)
        if not self.bands_covered:  # the residual's broadband functions alone decide there
            ok[2:] &= ~cov[None]
        else:  # there a band's rise counts where the residual rises too (not a predicted click)
            ok[2:] &= ~cov[None] | (rise[:2].max(axis=0) >= COVERED_RESIDUAL_RISE_DB)[None]
        frame_no = self._frames + np.arange(1, n + 1)
        ok &= (levels[0] >= ABSOLUTE_FLOOR_DB) & (frame_no > self._quiet_until)
        self._hist = past[:, -(self._lookback + self._span) :]
        self._floor = floor_after[:, -1].copy()
        onsets = []
        since = self._since
        last = -1
        for i in np.nonzero(ok.any(axis=0))[0].tolist():  # rare: onsets and their neighbours
            if since + (i - last) < self._refractory:
                continue
            # Refine on the broadband function that rose, else on the band that did (its
            # filter delays it by a few samples; the ladder's correlations search lags).
            rows = ok[:2, i] if ok[:2, i].any() else ok[:, i]
            band = int(np.argmax(np.where(rows, rise[: len(rows), i], -np.inf)))
            fr = np.abs((frames, diff, *band_frames)[band][i])
            first = int(np.argmax(fr >= ONSET_FRACTION * float(fr.max())))
            onsets.append(start + i * self.frame + first)
            since, last = 0, i
        self._since = since + (n - 1 - last)
        self._frames += n
        return onsets
