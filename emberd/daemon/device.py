"""Device input for the worker: a :class:`~emberd.dsp.device.DeviceSource` with a stall watchdog.

The worker reads the source's ring directly (not its block iterator, which copies) and
takes capture times from its arrival clock (the one timing mechanism, see
:mod:`emberd.dsp.device`). This subclass adds what only the daemon needs: the
:class:`~emberd.daemon.reconnect.InputWatchdog` that notices a stalled stream and
reconnects through the source's public operations (``detach``, ``deliver``), a
description for status, and stopping that never blocks on a wedged PortAudio stream.

Shared attributes (written by -> read by): ``description`` (app/start -> status);
the rest as in :mod:`emberd.dsp.device` and :mod:`emberd.daemon.reconnect`.
"""

from __future__ import annotations

from emberd.daemon.reconnect import InputWatchdog, stop_stream_bounded
from emberd.dsp.device import DeviceSource


class DeviceInput(DeviceSource):
    """A DeviceSource the worker can drive (``ring``, ``clock``, ``finished``, ``watch``)."""

    def __init__(self, device: int | str | None, *, sr: int, channels: int, block_size: int):
        super().__init__(device, sr=sr, channels=channels, block_size=block_size)
        self.finished = False  # a device never ends by itself
        self.nominal_block_s = block_size / self.sr
        self.description = f"device {device if device is not None else 'default'}"
        self.error: BaseException | None = None
        self.watchdog = InputWatchdog(self)

    @property
    def overflows(self) -> int:
        """PortAudio input overflows (the ring's own overflow is counted separately)."""
        return self.input_overflows

    def watch(self, now: float) -> bool:
        """Stall detection and reconnection (worker thread); True when the input state changed."""
        return self.watchdog.watch(now)

    def stop(self) -> None:
        """Stop capturing without ever blocking on a wedged PortAudio stream."""
        self.watchdog.close()
        stream, self._stream = self._stream, None
        if stream is not None:
            stop_stream_bounded(stream)

    def start(self) -> None:
        super().start()
        if self.device is not None:
            d = self.device
            self.description = f"device {d.index}: {d.name} [{d.hostapi}]"
