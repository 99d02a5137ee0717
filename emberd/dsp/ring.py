"""Preallocated ring buffers: audio samples between threads, mel frames for the encoder.

:class:`SampleRing` is single-producer/single-consumer: the producer is the PortAudio
callback (or a file/synth pump), the consumer the analysis worker. Each side only ever
*writes* its own position counter (``_written`` by the producer, ``_read`` by the
consumer) and only *reads* the other's; CPython makes an int rebinding atomic, and the
producer publishes ``_written`` only after the samples are copied, so no lock is needed
and the producer never blocks. Positions are absolute sample counts (never wrap).

:class:`FrameRing` holds the latest mel frames for the encoder; it is owned by one
thread (the worker writes frames and reads windows), so it has no cross-thread rules.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from emberd.errors import EmberdError

F32 = npt.NDArray[np.float32]


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise EmberdError(f"{name} {value!r}: must be a positive integer")
    return int(value)


class SampleRing:
    """SPSC ring of float32 audio ``[capacity, channels]``; never allocates after init.

    Parameters
    ----------
    capacity : int
        Frames (samples per channel) the ring holds.
    channels : int
        Channels per frame.

    Notes
    -----
    Shared attributes (written by -> read by):

    * ``_written`` total frames ever written (producer -> consumer)
    * ``_writing`` ``_written`` plus the frames of the write in progress, stored before
      the copy (producer -> tap: :meth:`peek` treats those slots as overwritten)
    * ``_read`` total frames ever read (consumer -> producer)
    * ``tapped`` position of a second reader, the *tap* (tap thread -> producer, only
      while ``hold_tap``): :meth:`peek` reads without consuming; live, the producer never
      waits for it (a tap that falls a whole ring behind loses frames, see :meth:`peek`);
      with ``hold_tap`` (a file fed as fast as it is analysed) :attr:`free` counts the
      tap's unread frames too, so a paced producer waits for both readers
    * ``overflow_frames`` frames dropped because the ring was full (producer -> anyone)
    * ``nonfinite_samples`` NaN/Inf samples zeroed on write (producer -> anyone)
    """

    def __init__(self, capacity: int, channels: int = 1) -> None:
        self.capacity = _positive("ring capacity", capacity)
        self.channels = _positive("ring channels", channels)
        self._buf: F32 = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._finite = np.ones((self.capacity, self.channels), dtype=np.bool_)  # scratch
        self._written = 0
        self._writing = 0  # _written + the frames of a write in progress (producer -> tap)
        self._read = 0
        self.overflow_frames = 0
        self.nonfinite_samples = 0
        self.tapped = 0
        self.hold_tap = False

    @property
    def available(self) -> int:
        """Frames written and not yet read."""
        return self._written - self._read

    @property
    def free(self) -> int:
        """Frames that can be written without overflow."""
        oldest = min(self._read, self.tapped) if self.hold_tap else self._read
        return self.capacity - (self._written - oldest)

    @property
    def total_written(self) -> int:
        """Frames accepted since creation (absolute position of the next write)."""
        return self._written

    @property
    def total_read(self) -> int:
        """Frames consumed since creation (absolute position of the next read)."""
        return self._read

    def write(self, block: npt.ArrayLike, *, sanitize: bool = True) -> bool:
        """Copy ``block`` (``[n, channels]`` or ``[n]`` when mono) into the ring.

        Real-time safe: no allocation, no lock. Frames that do not fit are dropped and
        counted in ``overflow_frames``; NaN/Inf samples are zeroed and counted in
        ``nonfinite_samples`` (when ``sanitize``).

        Returns
        -------
        bool
            True if every frame fitted.
        """
        data = np.asarray(block)
        if data.ndim == 1:
            data = data.reshape(-1, 1)
        n = data.shape[0]
        take = min(n, self.capacity - (self._written - self._read))
        if take < n:
            self.overflow_frames += n - take
        if take > 0:
            start = self._written % self.capacity
            # Announce the slots about to change before touching them: a tap reading
            # them concurrently (peek) then knows its copy may be torn. One int store.
            self._writing = self._written + take
            first = min(take, self.capacity - start)
            self._copy_in(data[:first], start, sanitize)
            if take > first:
                self._copy_in(data[first:take], 0, sanitize)
            self._written += take  # publish only after the copy
        return take == n

    def _copy_in(self, src: np.ndarray, start: int, sanitize: bool) -> None:
        n = src.shape[0]
        dst = self._buf[start : start + n]
        np.copyto(dst, src, casting="same_kind")
        if sanitize:
            mask = self._finite[start : start + n]
            np.isfinite(dst, out=mask)
            bad = mask.size - int(np.count_nonzero(mask))
            if bad:
                np.logical_not(mask, out=mask)
                np.copyto(dst, 0.0, where=mask)
                self.nonfinite_samples += bad

    def read(self, out: np.ndarray) -> int:
        """Move up to ``len(out)`` frames into ``out`` (``[n, channels]`` or ``[n]`` mono).

        Returns
        -------
        int
            Frames copied (``out[:n]`` is valid).
        """
        dst = out.reshape(-1, 1) if out.ndim == 1 else out
        n = min(dst.shape[0], self._written - self._read)
        if n > 0:
            start = self._read % self.capacity
            first = min(n, self.capacity - start)
            dst[:first] = self._buf[start : start + first]
            if n > first:
                dst[first:n] = self._buf[: n - first]
            self._read += n  # release the slots only after the copy
        return n


    def peek(self, start: int, out: np.ndarray) -> tuple[int, int]:
        """Copy frames from absolute position ``start`` into ``out`` without consuming them.

        The tap's read: the consumer's position and the producer are untouched. Frames
        the producer has overwritten already (a tap a whole ring behind) are skipped.

        Returns
        -------
        first, n : int
            ``out[:n]`` holds frames ``first .. first + n``; ``first - start`` frames
            were lost. Set :attr:`tapped` to ``first + n`` when done with them.
        """
        dst = out.reshape(-1, 1) if out.ndim == 1 else out
        written = self._written
        # Slots of positions below writing - capacity are being (or have been) overwritten.
        first = max(start, self._writing - self.capacity)
        n = min(dst.shape[0], written - first)
        if n <= 0:
            return first, 0
        at = first % self.capacity
        head = min(n, self.capacity - at)
        dst[:head] = self._buf[at : at + head]
        if n > head:
            dst[head:n] = self._buf[: n - head]
        # The producer may have lapped the copy: drop what it overwrote meanwhile.
        gone = max(0, self._writing - self.capacity - first)
        if gone >= n:
            return first + n, 0
        if gone:
            dst[: n - gone] = dst[gone:n].copy()
        return first + gone, n - gone


class FrameRing:
    """Ring of the latest ``capacity`` mel frames ``[capacity, n_bands]`` (float32).

    Frames have absolute indices ``0, 1, 2, ...``; ``total`` is the index of the next
    frame. Owned by one thread (see module docstring).
    """

    def __init__(self, capacity: int, n_bands: int) -> None:
        self.capacity = _positive("frame ring capacity", capacity)
        self.n_bands = _positive("frame ring bands", n_bands)
        self._buf: F32 = np.zeros((self.capacity, self.n_bands), dtype=np.float32)
        self.total = 0

    @property
    def available(self) -> int:
        """Frames still held (``min(total, capacity)``)."""
        return min(self.total, self.capacity)

    def write(self, frames: np.ndarray) -> None:
        """Append ``frames`` ``[n, n_bands]``; the oldest are overwritten."""
        n = frames.shape[0]
        if n > self.capacity:  # only the last ``capacity`` frames survive anyway
            self.total += n - self.capacity
            frames = frames[n - self.capacity :]
            n = self.capacity
        start = self.total % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = frames[:first]
        if n > first:
            self._buf[: n - first] = frames[first:]
        self.total += n

    def copy_range(self, start: int, out: np.ndarray) -> None:
        """Copy frames ``start .. start + len(out) - 1`` (absolute indices) into ``out``.

        Raises
        ------
        IndexError
            If part of the range is not written yet or already overwritten.
        """
        n = out.shape[0]
        if start < self.total - self.capacity or start + n > self.total or start < 0:
            raise IndexError(
                f"frames {start}..{start + n - 1} not held (have "
                f"{self.total - self.available}..{self.total - 1})"
            )
        pos = start % self.capacity
        first = min(n, self.capacity - pos)
        out[:first] = self._buf[pos : pos + first]
        if n > first:
            out[first:] = self._buf[: n - first]

    def latest(self, n: int, out: np.ndarray) -> int:
        """Copy the latest ``min(n, available)`` frames, oldest first, into ``out[:count]``.

        Returns
        -------
        int
            Frames copied.
        """
        count = min(n, self.available, out.shape[0])
        if count > 0:
            self.copy_range(self.total - count, out[:count])
        return count

    def to_array(self) -> F32:
        """All held frames, oldest first, as a new array (for tests and offline use)."""
        out = np.empty((self.available, self.n_bands), dtype=np.float32)
        self.latest(self.available, out)
        return out
