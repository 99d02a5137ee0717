"""Device input for the worker: a :class:`~emberd.dsp.device.DeviceSource` with a stall watchdog.

The worker reads the source's ring directly (not its block iterator, which copies) and
takes capture times from its arrival clock (the one timing mechanism, see
:mod:`emberd.dsp.device`). This subclass adds what only the daemon needs: capture in a
child process (``capture="process"``, ``--capture-in process``: the PortAudio callback runs in
:mod:`emberd.daemon.capture_child`, where no daemon thread holds its GIL, and a reader thread
delivers into the ring), the :class:`~emberd.daemon.reconnect.InputWatchdog` that
notices a stalled stream or child and reconnects through the source's public operations
(``detach``, ``deliver``), a description for status, and stopping that never blocks on
a wedged PortAudio stream.

Shared attributes (written by -> read by): ``description`` (app/start -> status);
the rest as in :mod:`emberd.dsp.device` and :mod:`emberd.daemon.reconnect`.
"""

from __future__ import annotations

from emberd.daemon.reconnect import InputWatchdog, stop_stream_bounded
from emberd.dsp.device import DeviceSource, release_portaudio, resolve_input_device
from emberd.errors import EmberdError

CAPTURE_MODES = ("process", "thread")  # --capture-in: a capture child, or the daemon's own


class DeviceInput(DeviceSource):
    """A DeviceSource the worker can drive (``ring``, ``clock``, ``finished``, ``watch``).

    Parameters
    ----------
    device, sr, channels, block_size
        As for :class:`~emberd.dsp.device.DeviceSource`.
    capture : "thread" or "process"
        Where the PortAudio callback runs: this process (default), or a capture child.
    """

    def __init__(self, device: int | str | None, *, sr: int, channels: int, block_size: int,
                 capture: str = "thread") -> None:  # fmt: skip
        if capture not in CAPTURE_MODES:
            raise EmberdError(f"--capture-in {capture!r}: choose from {', '.join(CAPTURE_MODES)}")
        super().__init__(device, sr=sr, channels=channels, block_size=block_size)
        self.capture = capture
        self.finished = False  # a device never ends by itself
        self.nominal_block_s = block_size / self.sr
        self.description = f"device {device if device is not None else 'default'}"
        self.error: BaseException | None = None
        self.watchdog = InputWatchdog(self)

    @property
    def overflows(self) -> int:
        """Blocks lost before the ring: PortAudio-flagged input overflows, plus blocks a
        capture child dropped because this side read its pipe too late (the ring's own
        overflow is counted separately)."""
        return self.input_overflows + self.watchdog.dropped_blocks

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
        """Open the device: in this process (default) or in a capture child."""
        if self.capture == "thread":
            super().start()
        elif self.watchdog.mode != "process":  # not started yet
            self.device = resolve_input_device(self.requested_device)
            if self.channels > self.device.max_input_channels:
                raise EmberdError(
                    f"input device {self.device.name!r}: has {self.device.max_input_channels} "
                    f"input channels, {self.channels} requested"
                )
            release_portaudio()  # this process's JACK client leaves the graph
            self.watchdog.start_capture()
        if self.device is not None:
            d = self.device
            self.description = f"device {d.index}: {d.name} [{d.hostapi}]"
