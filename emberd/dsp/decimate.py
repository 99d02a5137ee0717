"""Streaming rate conversion to the hit ladder's rate, block by block, with a known delay.

The daemon runs at its model's rate (44.1 kHz for aiSFX); library snippets and the hit
ladder work at WAVE_SR (22.05 kHz). :class:`ToRate` converts each block as it arrives:
for an exact factor of two, a linear-phase half-band FIR (HALF_BAND_TAPS taps, delay
compensated: output sample ``k`` is the filtered input around sample ``2 k``, available
once ``HALF_BAND_TAPS // 2`` more input samples have arrived, 0.34 ms at 44.1 kHz);
for the same rate, a copy; otherwise soxr's streaming resampler (its delay is what
soxr says it is: ``delay_in``).
"""

from __future__ import annotations

import functools

import numpy as np

HALF_BAND_TAPS = 31  # odd: a symmetric (linear-phase) filter with an integer delay
HALF_BAND_CUTOFF = 0.45  # of the output rate's Nyquist... as a fraction of the input rate / 2


@functools.lru_cache(maxsize=2)
def _half_band() -> np.ndarray:
    from scipy.signal import firwin

    return np.asarray(firwin(HALF_BAND_TAPS, HALF_BAND_CUTOFF), np.float32)


class ToRate:
    """Convert a stream from ``sr_in`` to ``sr_out`` block by block.

    Parameters
    ----------
    sr_in, sr_out : int
        Input and output rates in Hz.

    Attributes
    ----------
    delay_in : float
        Input samples by which output lags: output sample ``k`` describes input
        position ``k * sr_in / sr_out`` and is produced once input up to about
        ``k * sr_in / sr_out + delay_in`` has arrived.
    """

    def __init__(self, sr_in: int, sr_out: int) -> None:
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        self._soxr = None
        if self.sr_in == self.sr_out:
            self.delay_in = 0.0
        elif self.sr_in == 2 * self.sr_out:
            self._h = _half_band()
            self._half = HALF_BAND_TAPS // 2
            self._buf = np.zeros(self._half, np.float32)  # zeros before the stream began
            self._buf_start = -self._half  # input index of _buf[0]
            self._next = 0  # next output sample
            self.delay_in = float(self._half)
        else:
            import soxr

            self._soxr = soxr.ResampleStream(self.sr_in, self.sr_out, 1, dtype="float32")
            self.delay_in = 0.0

    def push(self, x: np.ndarray) -> np.ndarray:
        """The output samples that the input block ``x`` completes."""
        x = np.asarray(x, np.float32).reshape(-1)
        if self.sr_in == self.sr_out:
            return x.copy()
        if self._soxr is not None:
            return np.asarray(self._soxr.resample_chunk(x), np.float32)
        buf = np.concatenate([self._buf, x])
        end = self._buf_start + len(buf)  # input index after the newest sample
        last = (end - 1 - self._half) // 2  # newest output whose window is complete
        if last < self._next:
            self._buf = buf
            return np.zeros(0, np.float32)
        centres = 2 * np.arange(self._next, last + 1) - self._buf_start
        windows = np.lib.stride_tricks.sliding_window_view(buf, HALF_BAND_TAPS)
        out = windows[centres - self._half] @ self._h
        self._next = last + 1
        keep_from = 2 * self._next - self._half - self._buf_start  # next window's start
        self._buf = buf[keep_from:]
        self._buf_start += keep_from
        return np.asarray(out, np.float32)
