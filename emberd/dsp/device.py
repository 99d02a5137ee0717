"""Audio device source: a PortAudio input stream feeding a preallocated :class:`SampleRing`.

The live counterpart of :class:`~emberd.dsp.sources.FileSource` and
:class:`~emberd.dsp.sources.SynthSource` (same :class:`~emberd.dsp.sources.Block`
iteration), plus what ``emberd devices`` shows: :func:`list_devices`,
:func:`resolve_input_device`, :func:`device_channels`.

Timing: one mechanism. Each delivered block is marked in a
:class:`~emberd.dsp.clock.BlockClock` with its arrival time (``clock``, also named
``arrivals``); a sample's capture time is extrapolated back from the latest mark by
sample count. PortAudio's ADC timestamps are not used: on JACK's dummy backend they
drift from the wall clock at every input overflow (measured: -92 ms after 13 overflows
in 20 s on a loaded machine), which would show as a growing false latency; a block
delivered by a capture child (see :mod:`emberd.daemon.reconnect`) has no ADC time at all.

Thread map
----------
* **PortAudio callback thread** runs :meth:`DeviceSource._callback` only, which calls
  :meth:`DeviceSource.deliver`: copy the block into the ring (NaN/Inf samples zeroed
  and counted by ``SampleRing.write``), mark its arrival, bump counters. No
  allocation, logging, lock or blocking call.
* **Another producer** may replace the callback: the daemon's capture-child reader
  thread (:mod:`emberd.daemon.reconnect`), which calls :meth:`deliver` with the child's
  callback times, either from the start (capture in a child process, the daemon's
  ``--capture-in process``: this source then never opens a stream) or once the stream is
  :meth:`detached <DeviceSource.detach>` (the detached callback delivers nothing). The
  ring always has a single producer.
* **Consumer thread** (the daemon worker, or whoever iterates the source) reads the
  ring and asks :meth:`capture_time`.
* **Any thread** may call :meth:`stats`, ``start``/``stop``/``close``.

Shared attributes (written by -> read by)
-----------------------------------------
* ``ring._written`` / ``ring.overflow_frames`` / ``ring.nonfinite_samples``:
  producer -> consumer, stats
* ``ring._read``: consumer -> producer
* ``clock`` marks: producer -> consumer, status (see :mod:`emberd.dsp.clock`)
* ``callbacks`` (blocks delivered), ``input_overflows`` (blocks PortAudio flagged
  ``input_overflow``; on JACK that is any xrun of the server, whoever was late: PortAudio
  flags every client): producer -> stats, stall watchdog
* ``detached``: the thread calling :meth:`detach` -> callback

sounddevice is imported lazily (:func:`sounddevice_module`) so that file-only use of
emberd works on machines without PortAudio. PortAudio lists host APIs when it is
initialised (at import): start a JACK server before emberd to see the JACK devices.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from emberd.dsp.clock import BlockClock
from emberd.dsp.ring import SampleRing
from emberd.dsp.sources import Block, check_block_size, check_sample_rate
from emberd.errors import ComponentMissing, EmberdError

RING_SECONDS = 2.0  # seconds of audio the ring holds before it overflows
POLL_FRACTION = 0.25  # consumer sleeps this fraction of a block while waiting
MIX_MAX_CHANNELS = 2  # `--channels mix` opens up to this many device channels


def sounddevice_module() -> ModuleType:
    """Import sounddevice, or raise ComponentMissing with the one-line fix."""
    try:
        import sounddevice
    except OSError as exc:  # the wheel is there but libportaudio is not
        raise ComponentMissing(
            f"PortAudio: not found ({exc}); install it (Debian/Ubuntu: apt install "
            "libportaudio2, macOS: brew install portaudio)"
        ) from None
    except ImportError as exc:
        raise ComponentMissing(f"sounddevice: not installed ({exc})") from None
    return sounddevice


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device as ``emberd devices`` shows it."""

    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    default_input: bool
    default_output: bool


def list_devices() -> list[DeviceInfo]:
    """Every PortAudio device with its host API, channels and default rate."""
    sd = sounddevice_module()
    hostapis = sd.query_hostapis()
    default_in, default_out = _defaults(sd)
    out = []
    for dev in sd.query_devices():
        out.append(
            DeviceInfo(
                index=int(dev["index"]),
                name=str(dev["name"]),
                hostapi=str(hostapis[dev["hostapi"]]["name"]),
                max_input_channels=int(dev["max_input_channels"]),
                max_output_channels=int(dev["max_output_channels"]),
                default_samplerate=float(dev["default_samplerate"]),
                default_input=int(dev["index"]) == default_in,
                default_output=int(dev["index"]) == default_out,
            )
        )
    return out


def _defaults(sd: ModuleType) -> tuple[int, int]:
    dev = sd.default.device
    try:
        return int(dev[0]), int(dev[1])
    except (TypeError, ValueError):  # a name was set as default
        return -1, -1


def resolve_input_device(device: int | str | None) -> DeviceInfo:
    """Find an input device by index, exact name, or unique case-insensitive substring.

    ``None`` means PortAudio's default input. A string of digits is an index.

    Raises
    ------
    EmberdError
        No such device, ambiguous name, or a device without input channels.
    """
    devices = list_devices()
    inputs = [d for d in devices if d.max_input_channels > 0]
    if device is None:
        for d in inputs:
            if d.default_input:
                return d
        if inputs:
            return inputs[0]
        raise EmberdError("input device: none found (see `emberd devices`)")
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device.strip())
    if isinstance(device, int):
        match = [d for d in devices if d.index == device]
        if not match:
            raise EmberdError(f"input device {device}: no device with that index")
        if match[0].max_input_channels <= 0:
            raise EmberdError(f"input device {device} ({match[0].name}): has no input channels")
        return match[0]
    exact = [d for d in inputs if d.name == device]
    if len(exact) == 1:
        return exact[0]
    found = [d for d in inputs if device.lower() in d.name.lower()]
    if not found:
        raise EmberdError(
            f"input device {device!r}: no input device with that name (see `emberd devices`)"
        )
    if len(found) > 1:
        names = "; ".join(f"{d.index}: {d.name} [{d.hostapi}]" for d in found)
        raise EmberdError(f"input device {device!r}: ambiguous, matches {names}")
    return found[0]


_left_running: list[bool] = []  # one entry once a stream was left running (any thread)


def forget_portaudio_at_exit() -> None:
    """Stop sounddevice from calling ``Pa_Terminate`` at exit (it blocks on a wedged stream).

    Called when a stream is left running (detached, or too slow to stop): see
    :func:`streams_left_running`.
    """
    import atexit

    _left_running.append(True)
    sd = sys.modules.get("sounddevice")
    handler = getattr(sd, "_exit_handler", None)
    if handler is not None:
        atexit.unregister(handler)


def streams_left_running() -> bool:
    """True when this process left a PortAudio stream running (:func:`forget_portaudio_at_exit`).

    Its callback thread keeps calling into Python; during interpreter finalisation that
    crashes the process (SIGSEGV after a stall-and-reconnect, seen in the session soak), so
    a process for which this is True must end with ``os._exit`` once its work is flushed.
    """
    return bool(_left_running)


def release_portaudio() -> None:
    """Terminate PortAudio in this process (devices resolved, capture runs in a child).

    On JACK, initialising PortAudio opens and activates a client that stays in the
    server's graph for the life of the process: one more thread that the server waits
    for every period, idle or not. A process whose capture runs in a capture child
    (:mod:`emberd.daemon.capture_child`) gives it back; listing devices in this process fails
    afterwards. Nothing happens when a stream was left running here, or PortAudio is
    not loaded or already terminated.
    """
    sd = sys.modules.get("sounddevice")
    terminate = getattr(sd, "_terminate", None)
    if terminate is None or streams_left_running():
        return
    try:
        terminate()
    except Exception:  # not initialised (any more): nothing to give back
        return


def device_channels(device: int | str | None, spec: str) -> int:
    """How many device channels to open for ``--channels SPEC`` (``mix``: up to 2)."""
    info = resolve_input_device(device)
    spec = spec.strip().lower()
    if spec == "mix":
        return min(MIX_MAX_CHANNELS, info.max_input_channels)
    if spec == "all":
        return info.max_input_channels
    highest = max(int(p) for p in spec.replace("-", ",").split(",") if p.strip().isdigit())
    return highest + 1


class DeviceSource:
    """Live audio from a PortAudio input device, as an :class:`AudioSource`.

    Parameters
    ----------
    device : int, str or None
        Index, name (exact or unique substring) or ``None`` for the default input.
    sr : int
        Sample rate in Hz.
    channels : int
        Input channels to capture.
    block_size : int
        Frames per PortAudio callback and per yielded block.
    latency : "low", "high" or float seconds
        PortAudio suggested latency.
    ring_seconds : float
        Ring buffer size; if the consumer falls further behind, frames are dropped and
        counted (``ring.overflow_frames``).
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sr: int = 44100,
        channels: int = 1,
        block_size: int = 256,
        latency: str | float = "low",
        ring_seconds: float = RING_SECONDS,
    ) -> None:
        self.sr = check_sample_rate(sr)
        self.block_size = check_block_size(block_size)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise EmberdError(f"channels {channels!r}: must be a positive integer")
        self.channels = channels
        self.latency = latency
        self.ring = SampleRing(max(int(ring_seconds * self.sr), 2 * self.block_size), channels)
        self.clock = BlockClock(self.sr)  # arrival marks at ring positions: the one timing path
        self.arrivals = self.clock  # the daemon worker predicts block arrivals from these
        self.device: DeviceInfo | None = None
        self.requested_device = device
        self.callbacks = 0
        self.input_overflows = 0
        self.detached = False
        self._stream: Any = None
        self._abandoned: list[Any] = []  # detached streams: referenced, never closed or freed
        self._closed = False

    # -- producers (PortAudio callback thread; a reconnect reader once detached) --------
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """Copy into the ring, mark and count; nothing else (real-time thread)."""
        if self.detached:  # a detached stream that came back: another producer owns the ring
            return
        if status.input_overflow:
            self.input_overflows += 1
        self.deliver(indata)

    def deliver(
        self, block: np.ndarray, unix_s: float | None = None, mono_s: float | None = None
    ) -> None:
        """Hand one captured ``[frames, channels]`` float32 block to the consumer.

        Callback-safe (ring copy, one arrival mark, one counter). Called by the PortAudio
        callback, or by the one producer that replaces it (a capture child's reader
        thread, which passes the child's callback times ``unix_s``/``mono_s`` so that
        arrival marks and jitter are the callback's, not the reader's).
        """
        self.ring.write(block)
        self.clock.mark(self.ring.total_written, unix_s, mono_s)  # ring positions
        self.callbacks += 1

    # -- control ------------------------------------------------------------------------
    def start(self) -> None:
        """Open the device and start the stream."""
        if self._stream is not None:
            return
        sd = sounddevice_module()
        self.device = resolve_input_device(self.requested_device)
        if self.channels > self.device.max_input_channels:
            raise EmberdError(
                f"input device {self.device.name!r}: has {self.device.max_input_channels} "
                f"input channels, {self.channels} requested"
            )
        try:
            stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.sr,
                blocksize=self.block_size,
                channels=self.channels,
                dtype="float32",
                latency=self.latency,
                callback=self._callback,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise EmberdError(f"input device {self.device.name!r}: cannot open ({exc})") from None
        self._stream = stream

    @property
    def capturing(self) -> bool:
        """True while this source's own PortAudio stream is open (not detached)."""
        return self._stream is not None

    def detach(self) -> None:
        """Give up the stream without touching it (it may be wedged in PortAudio).

        The stream object is kept referenced (freeing it would call into PortAudio) and
        its callback delivers nothing from now on; sounddevice's exit handler is dropped
        so the process can still exit. Another producer may then :meth:`deliver`.
        """
        self.detached = True
        stream, self._stream = self._stream, None
        if stream is not None:
            self._abandoned.append(stream)
            forget_portaudio_at_exit()

    def stop(self) -> None:
        """Stop and close the stream (the ring keeps what was captured)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()

    def close(self) -> None:
        """Stop capturing and end iteration."""
        self._closed = True
        self.stop()

    @property
    def active(self) -> bool:
        """True while the stream runs."""
        return self._stream is not None and bool(self._stream.active)

    def stats(self) -> dict[str, int]:
        """Counters: callbacks, PortAudio input overflows, ring overflow, NaN/Inf zeroed."""
        return {
            "callbacks": self.callbacks,
            "input_overflows": self.input_overflows,
            "ring_overflow_frames": self.ring.overflow_frames,
            "nonfinite_samples": self.ring.nonfinite_samples,
        }

    # -- consumer thread ----------------------------------------------------------------
    def capture_time(self, sample: int) -> float:
        """Unix time of device sample ``sample`` (counting dropped frames)."""
        return self.clock.time_of(sample)

    def __iter__(self) -> Iterator[Block]:
        if self._stream is None and not self._closed:
            self.start()
        buf = np.zeros((self.block_size, self.channels), dtype=np.float32)
        wait_s = POLL_FRACTION * self.block_size / self.sr
        while True:
            if self.ring.available >= self.block_size:
                # Ring position = device sample index until the ring overflows; after
                # that, timestamps shift by the dropped frames (which are counted).
                start = self.ring.total_read
                self.ring.read(buf)
                yield Block(buf.copy(), self.capture_time(start), start)
            elif self._closed or not self.active:
                n = self.ring.read(buf)
                if n:
                    start = self.ring.total_read - n
                    yield Block(buf[:n].copy(), self.capture_time(start), start)
                return
            else:
                time.sleep(wait_s)  # polling: the callback must not signal (no locks)
