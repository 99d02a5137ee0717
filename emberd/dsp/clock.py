"""Arrival clock of audio blocks: when each block reached the daemon, without locks.

The producer (PortAudio callback or the file/synth feeder) calls :meth:`BlockClock.mark`
after writing a block into the :class:`~emberd.dsp.ring.SampleRing`: two stores into
preallocated arrays and one int rebinding, so it is safe in the audio callback. The
worker turns a sample position into the Unix time it was captured, and the status
thread reads the block intervals to measure callback jitter.

Shared attributes (written by -> read by):

* ``_count`` marks so far (producer -> worker, status)
* ``_end_pos[i]``, ``_time[i]`` slot ``i % capacity`` (producer -> worker, status);
  a slot is written before ``_count`` moves past it, so a reader that only looks at
  slots below ``_count`` sees complete entries (the ring is large enough that the
  producer cannot lap a reader within one status period).
"""

from __future__ import annotations

import time

import numpy as np

CLOCK_CAPACITY_BLOCKS = 4096  # marks kept: 24 s of 256-frame blocks at 44.1 kHz


class BlockClock:
    """Ring of ``(end sample position, arrival time)`` marks, one per audio block.

    Parameters
    ----------
    sr : int
        Sample rate in Hz, to extrapolate between marks.
    capacity : int
        Marks kept (preallocated).
    """

    def __init__(self, sr: int, capacity: int = CLOCK_CAPACITY_BLOCKS) -> None:
        self.sr = int(sr)
        self.capacity = int(capacity)
        self._end_pos = np.zeros(self.capacity, dtype=np.int64)
        self._time = np.zeros(self.capacity, dtype=np.float64)  # time.time() seconds
        self._mono = np.zeros(self.capacity, dtype=np.float64)  # perf_counter seconds
        self._count = 0
        self._stats_seen = 0  # consumer-side cursor for interval statistics (status thread)

    def mark(self, end_pos: int, unix_s: float | None = None, mono_s: float | None = None) -> None:
        """Record that samples up to ``end_pos`` (exclusive) arrived now. Callback-safe.

        Parameters
        ----------
        end_pos : int
            Ring position just past the block.
        unix_s, mono_s : float, optional
            When the block arrived elsewhere, as ``time.time()`` and ``time.perf_counter()``
            read there (a capture child's callback: ``perf_counter`` is CLOCK_MONOTONIC on
            Linux, one clock for every process). Default: now.
        """
        i = self._count % self.capacity
        self._end_pos[i] = end_pos
        self._time[i] = time.time() if unix_s is None else unix_s
        self._mono[i] = time.perf_counter() if mono_s is None else mono_s
        self._count += 1  # publish after the slot is complete

    @property
    def count(self) -> int:
        """Blocks marked so far."""
        return self._count

    def time_of(self, pos: int) -> float:
        """Unix time at which sample ``pos`` was captured (extrapolated from the latest mark).

        Returns ``time.time()`` when nothing has been marked yet.
        """
        n = self._count
        if n == 0:
            return time.time()
        i = (n - 1) % self.capacity
        return float(self._time[i]) - (int(self._end_pos[i]) - pos) / self.sr

    def last_arrival(self) -> tuple[int, float]:
        """``(end position, perf_counter time)`` of the latest mark; ``(0, now)`` before any."""
        n = self._count
        if n == 0:
            return 0, time.perf_counter()
        i = (n - 1) % self.capacity
        return int(self._end_pos[i]), float(self._mono[i])

    def new_intervals(self) -> np.ndarray:
        """Block-to-block arrival intervals (seconds) since the previous call; consumer only."""
        n = self._count
        start = max(self._stats_seen, n - self.capacity + 1, 1)
        self._stats_seen = n
        if n - start <= 0:
            return np.zeros(0, dtype=np.float64)
        idx = np.arange(start - 1, n) % self.capacity
        return np.diff(self._mono[idx])
