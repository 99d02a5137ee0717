"""Device input for the worker: :class:`~emberd.daemon.capture.DeviceSource` plus arrival marks.

The worker reads the DeviceSource's ring directly (not its block iterator, which
copies). This subclass adds one :meth:`BlockClock.mark` after the DSP callback's copy,
so the daemon measures callback interval jitter, and capture times come from these
arrival marks: the wall-clock time each block reached the process, extrapolated back
by sample count. PortAudio's ADC timestamps (:meth:`DeviceSource.capture_time`) are
not used: on JACK's dummy backend they drift from the wall clock at every input
overflow (measured: -92 ms after 13 overflows in 20 s on a loaded machine), which
would show as a growing false latency.

Shared attributes (written by -> read by): ``arrivals`` marks (callback -> worker), see
:mod:`emberd.daemon.clock`; the rest as in :mod:`emberd.daemon.capture`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emberd.daemon.capture import DeviceSource, resolve_input_device
from emberd.daemon.clock import BlockClock


class DeviceInput(DeviceSource):
    """A DeviceSource the worker can drive (``ring``, ``clock``, ``finished``)."""

    def __init__(self, device: int | str | None, *, sr: int, channels: int, block_size: int):
        super().__init__(device, sr=sr, channels=channels, block_size=block_size)
        self.arrivals = BlockClock(self.sr)  # ring positions, like the worker's
        self.clock = self.arrivals  # capture times from arrival marks (module docstring)
        self.finished = False  # a device never ends by itself
        self.nominal_block_s = block_size / self.sr
        self.description = f"device {device if device is not None else 'default'}"
        self.error: BaseException | None = None
        from emberd.daemon.reconnect import InputWatchdog

        self.detached = False  # set when a stalled stream is abandoned (see reconnect.py)
        self.watchdog = InputWatchdog(self)

    @property
    def overflows(self) -> int:
        """PortAudio input overflows (the ring's own overflow is counted separately)."""
        return self.input_overflows

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if self.detached:  # an abandoned stream that came back: the capture child owns the ring
            return
        super()._callback(indata, frames, time_info, status)
        self.arrivals.mark(self.ring.total_written)

    def watch(self, now: float) -> bool:
        """Stall detection and reconnection (worker thread); True when the input state changed."""
        return self.watchdog.watch(now)

    def stop(self) -> None:
        """Stop capturing without ever blocking on a wedged PortAudio stream."""
        from emberd.daemon.reconnect import stop_stream_bounded

        self.watchdog.close()
        stream, self._stream = self._stream, None
        if stream is not None:
            stop_stream_bounded(stream)

    def start(self) -> None:
        super().start()
        if self.device is not None:
            d = self.device
            self.description = f"device {d.index}: {d.name} [{d.hostapi}]"


def device_channels(device: int | str | None, spec: str) -> int:
    """How many device channels to open for ``--channels SPEC`` (``mix``: up to 2)."""
    info = resolve_input_device(device)
    spec = spec.strip().lower()
    if spec == "mix":
        return min(2, info.max_input_channels)
    if spec == "all":
        return info.max_input_channels
    highest = max(int(p) for p in spec.replace("-", ",").split(",") if p.strip().isdigit())
    return highest + 1
