"""Block-rate onset detection for live hits: one detector per channel, fed as blocks arrive.

The live daemon's hit ladder (:mod:`emberd.daemon.hits`) must know that a sound
started within a few milliseconds, whatever the gain of the hit, with a previous
sound still ringing and over a steady noise floor. :class:`OnsetDetector` takes the
audio in whatever blocks the worker drains from the ring (256-sample callbacks in
practice), cuts it into FRAME_SAMPLES frames (1.45 ms at 22.05 kHz) and computes two
detection functions per frame, both in dB:

* the frame energy (broadband), and
* the energy of the second difference (a +12 dB/octave tilt: a hi-hat or a snare's
  crack rises clearly here even over a tom's loud ring 20 dB above it).

A frame is an onset when, in either function, the level rises at least RISE_DB above
its maximum over LOOKBACK_S before the last RISE_SPAN_S (a rise, not a level: gain invariant; a previous
sound's decay never rises above its own recent peaks, even a low ring whose 1.5-ms
frames swing with its zero crossings) and stands FLOOR_MARGIN_DB above
that function's noise floor (tracked: falls at once, rises at FLOOR_RISE_DB_PER_S, so a
steady noise floor is learnt and a long sound does not become "floor"), its broadband
level is above ABSOLUTE_FLOOR_DB, and REFRACTORY_S has passed since the last onset
(one hit, one onset: the bursts of a clap or a flam's grace note stay one hit).
The onset sample is refined inside the frame: the first sample whose magnitude
reaches ONSET_FRACTION of the frame's peak.

Nothing here allocates per sample; the work is a few numpy reductions per block and
a short Python loop over its frames (8 per 256-sample block). It runs in the worker
thread, never in the audio callback.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

FRAME_S = 0.00145  # detection frame (32 samples at 22.05 kHz): ~1.5 ms time resolution
RISE_DB = 10.0  # a frame this far above the recent maximum (either function) is a rise
LOOKBACK_S = 0.025  # the recent maximum looks back this far: > one period of a 40 Hz ring
RISE_SPAN_S = 0.003  # ... but skips the newest frames: an attack may rise over ~3 ms
FLOOR_MARGIN_DB = 12.0  # a rise must also clear the tracked noise floor by this much
FLOOR_RISE_DB_PER_S = 6.0  # the noise floor follows a rising background this slowly
ABSOLUTE_FLOOR_DB = -70.0  # dBFS: nothing quieter is a hit, whatever the floor
REFRACTORY_S = 0.04  # after an onset no other for this long (hits come >= 62 ms apart)
WARMUP_S = 0.05  # no onset before the floor has been seen this long
ONSET_FRACTION = 0.3  # the onset sample: first in the frame reaching this share of its peak
SILENCE_DB = -120.0  # dB given to digital silence


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
    ) -> None:
        self.sr = int(sr)
        self.frame = max(8, round(FRAME_S * sr))
        self.rise_db = float(rise_db)
        self.floor_margin_db = float(floor_margin_db)
        self._refractory = max(1, round(refractory_s * sr / self.frame))
        self._lookback = max(2, round(LOOKBACK_S * sr / self.frame))
        self._span = max(1, round(RISE_SPAN_S * sr / self.frame))
        self._warmup = max(1, round(WARMUP_S * sr / self.frame))
        self._floor_step = FLOOR_RISE_DB_PER_S * self.frame / sr
        self._hist: tuple[deque[float], deque[float]] = (
            deque(maxlen=self._lookback + self._span), deque(maxlen=self._lookback + self._span)
        )  # fmt: skip
        self._floor = [math.inf, math.inf]
        self._pending = np.zeros(self.frame, np.float32)  # a partial frame carried over
        self._n_pending = 0
        self._last = np.zeros(2, np.float32)  # the previous frame's last samples (difference)
        self._frames = 0
        self._since = self._refractory  # frames since the last onset
        self.position = 0

    @property
    def floor_db(self) -> float:
        """Broadband noise floor in dB (energy per sample), SILENCE_DB before any audio."""
        return self._floor[0] if math.isfinite(self._floor[0]) else SILENCE_DB

    def push(self, x: np.ndarray) -> list[int]:
        """Feed the next samples of the channel; return the onsets they complete.

        Parameters
        ----------
        x : float array [n]
            The channel's next samples, in order (any block size).

        Returns
        -------
        list of int
            Absolute sample positions (see :attr:`position`) of the onsets found in
            the frames this call completed, oldest first.
        """
        x = np.asarray(x, np.float32).reshape(-1)
        start = self.position - self._n_pending  # absolute position of the first frame
        if self._n_pending:
            take = min(len(x), self.frame - self._n_pending)
            self._pending[self._n_pending : self._n_pending + take] = x[:take]
            self._n_pending += take
            self.position += take
            x = x[take:]
            if self._n_pending < self.frame:
                return []
            buf = np.concatenate([self._pending, x[: len(x) - len(x) % self.frame]])
        else:
            buf = x[: len(x) - len(x) % self.frame]
        rest = x[len(x) - len(x) % self.frame :]
        self.position += len(x)
        self._n_pending = len(rest)
        self._pending[: len(rest)] = rest
        if not len(buf):
            return []
        frames = buf.reshape(-1, self.frame)
        diff = np.diff(buf, 2, prepend=self._last).reshape(-1, self.frame)
        self._last = np.concatenate([self._last, buf[-2:]])[-2:]
        levels = (_db(np.mean(frames**2, axis=1)), _db(np.mean(diff**2, axis=1)))
        onsets = []
        for i in range(len(frames)):
            band = self._step(float(levels[0][i]), float(levels[1][i]))
            if band >= 0:  # refine on the function that rose (a hat over a ring: the tilt)
                fr = np.abs((frames, diff)[band][i])
                first = int(np.argmax(fr >= ONSET_FRACTION * float(fr.max())))
                onsets.append(start + i * self.frame + first)
        return onsets

    def _step(self, broad: float, tilt: float) -> int:
        """One frame of both detection functions: the function that rose most, or -1."""
        self._frames += 1
        self._since += 1
        fire, best = -1, 0.0
        if (
            self._frames > self._warmup
            and self._since >= self._refractory
            and broad >= ABSOLUTE_FLOOR_DB
        ):
            for band, level in enumerate((broad, tilt)):
                hist = self._hist[band]
                older = list(hist)[: len(hist) - self._span]
                rise = level - max(older) if older else -math.inf
                if (
                    rise >= self.rise_db
                    and level - self._floor[band] >= self.floor_margin_db
                    and rise > best
                ):
                    fire, best = band, rise
        for band, level in enumerate((broad, tilt)):
            self._hist[band].append(level)
            # Falls at once to a quieter frame, rises slowly: a steady background is learnt.
            self._floor[band] = min(level, self._floor[band] + self._floor_step)
        if fire >= 0:
            self._since = 0
        return fire
