"""Stalled device input: detect it, report it, and reconnect with backoff.

Why a child process. When the sound server dies under an open PortAudio JACK
stream (PortAudio V19.6), ``Pa_StopStream``/``Pa_AbortStream``/``Pa_CloseStream``
block in ``pthread_cond_timedwait`` for ten minutes, and so does ``Pa_Terminate``
(sounddevice calls it at exit); the JACK client of the dead server cannot open a
stream on a restarted one either. So the stalled stream is abandoned, never
touched again, and sounddevice's exit handler is unregistered so the process can
still exit at once. Capture then continues in a child process
(``python -m emberd.daemon.reconnect``) with a fresh PortAudio that reads blocks
and writes them to its stdout; a reader thread here copies them into the same
ring the callback used. A child that stalls in turn is killed (SIGKILL never
blocks) and replaced, with exponential backoff.

States (``input_state`` in status): ``running``; ``stalled`` (no audio for
:data:`STALL_S` while the stream should run: detected within one second);
``reconnecting`` (a capture child is starting). ``input_stalls`` counts stalls,
``input_reconnects`` successful reconnections.

Shared attributes (written by -> read by): ``state``, ``stalls``, ``reconnects``
(worker via :meth:`InputWatchdog.watch`, reconnect thread -> status);
ring writes (reader thread, the only producer once the stream is abandoned -> worker).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STALL_S = 0.5  # s without a block while capturing: stalled (86 blocks of 256 at 44.1 kHz)
FIRST_BLOCK_S = 2.0  # s allowed for the very first block after the stream starts
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # waits before successive reconnection attempts
STOP_TIMEOUT_S = 1.0  # longest wait for PortAudio to stop a stream at shutdown
CHILD_START_S = 10.0  # a capture child gets this long to deliver its first block

RUNNING, STALLED, RECONNECTING = "running", "stalled", "reconnecting"


def forget_portaudio_at_exit() -> None:
    """Stop sounddevice from calling ``Pa_Terminate`` at exit (it blocks on a wedged stream)."""
    sd = sys.modules.get("sounddevice")
    handler = getattr(sd, "_exit_handler", None)
    if handler is not None:
        atexit.unregister(handler)


def stop_stream_bounded(stream: Any, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop and close ``stream`` in a helper thread; False (and exit handler dropped) if wedged."""
    def stop() -> None:
        try:
            stream.stop()
            stream.close()
        except Exception:  # a dead server: nothing more to do, but counted
            from emberd.daemon.status import swallowed

            swallowed("stopping the audio stream")

    t = threading.Thread(target=stop, name="emberd-stream-stop", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        forget_portaudio_at_exit()
        return False
    return True


class InputWatchdog:
    """Watches a :class:`~emberd.daemon.device.DeviceInput` and reconnects it (see module doc).

    Parameters
    ----------
    source : DeviceInput
        Has ``callbacks``, ``ring``, ``sr``, ``channels``, ``block_size``, ``device``,
        ``_stream``, ``arrivals`` and the timestamp slots of :class:`DeviceSource`.
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self.state = RUNNING
        self.stalls = 0
        self.reconnects = 0
        self._seen = -1
        self._progress = time.monotonic()
        self._reported = RUNNING
        self._child: subprocess.Popen[bytes] | None = None
        self._blocks = 0  # blocks delivered by the current child
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- worker side

    def watch(self, now: float) -> bool:
        """Called by the worker while it waits for audio; True when the state changed
        since the last call (the worker then publishes status at once)."""
        n = self.source.callbacks
        idle = self.source._stream is None and self._child is None  # not capturing yet
        limit = STALL_S if n > 0 else FIRST_BLOCK_S
        if n != self._seen or idle:
            self._seen, self._progress = n, now
        elif self.state == RUNNING and self._child is None and now - self._progress > limit:
            self.state = STALLED
            self.stalls += 1
            log.warning("input stalled: no audio for %.1f s; reconnecting", now - self._progress)
            self._abandon_stream()
            self._thread = threading.Thread(target=self._reconnect_loop,
                                            name="emberd-reconnect", daemon=True)
            self._thread.start()
        changed = self.state != self._reported
        self._reported = self.state
        return changed

    def _abandon_stream(self) -> None:
        src = self.source
        src.detached = True
        if src._stream is not None:
            src._abandoned = getattr(src, "_abandoned", [])
            src._abandoned.append(src._stream)  # keep a reference: never closed, never freed
            src._stream = None
            forget_portaudio_at_exit()

    def describe(self) -> dict[str, Any]:
        return {"input_state": self.state, "input_stalls": self.stalls,
                "input_reconnects": self.reconnects}

    def close(self) -> None:
        self._stop.set()
        self._kill_child()

    # -------------------------------------------------------------- reconnection

    def _kill_child(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()

    def _reconnect_loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            if self.state == RUNNING:  # on a capture child: watch it in turn
                seen = self._blocks
                self._stop.wait(STALL_S)
                alive = self._child is not None and self._child.poll() is None
                if self._blocks != seen and alive:
                    continue
                self.state = STALLED
                self.stalls += 1
                log.warning("input stalled again; reconnecting")
                self._kill_child()
            wait = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            attempt += 1
            if self._stop.wait(wait):
                return
            self.state = RECONNECTING
            if self._start_child():
                self.state = RUNNING
                self.reconnects += 1
                log.warning("input reconnected after %d attempt(s)", attempt)
                attempt = 0
            else:
                self.state = STALLED

    def _start_child(self) -> bool:
        src = self.source
        dev = src.device.name if src.device is not None else "default"
        cmd = [sys.executable, "-m", "emberd.daemon.reconnect", "--device", dev,
               "--sr", str(src.sr), "--channels", str(src.channels),
               "--block", str(src.block_size)]
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL)
        self._child = child
        first = threading.Event()
        threading.Thread(target=self._reader, args=(child, first), name="emberd-reconnect-read",
                         daemon=True).start()
        deadline = time.monotonic() + CHILD_START_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if first.wait(0.05):
                return True
            if child.poll() is not None:
                break
        self._kill_child()
        return False

    def _reader(self, child: subprocess.Popen[bytes], first: threading.Event) -> None:
        src = self.source
        nbytes = src.block_size * src.channels * 4
        assert child.stdout is not None
        offset = time.time() - time.monotonic()
        while True:
            data = child.stdout.read(nbytes)
            if not data or len(data) < nbytes:
                return  # the child ended: the reconnect loop notices
            block = np.frombuffer(data, dtype=np.float32).reshape(src.block_size, src.channels)
            # Timestamps: arrival time minus the block duration (no ADC clock from the child).
            slot = src.callbacks % len(src._ts_adc)
            src._ts_sample[slot] = src.ring.total_written + src.ring.overflow_frames
            src._ts_adc[slot] = time.monotonic() + offset - src._unix_minus_stream \
                - src.block_size / src.sr
            src.ring.write(block)
            src.callbacks += 1
            if hasattr(src, "arrivals"):
                src.arrivals.mark(src.ring.total_written)
            self._blocks += 1
            first.set()


def _child_main(argv: list[str] | None = None) -> int:
    """Capture child: blocks of float32 audio to stdout until killed."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", required=True)
    ap.add_argument("--sr", type=int, required=True)
    ap.add_argument("--channels", type=int, required=True)
    ap.add_argument("--block", type=int, required=True)
    args = ap.parse_args(argv)
    import sounddevice as sd

    forget_portaudio_at_exit()  # this process is killed, never stopped
    device: int | str = int(args.device) if args.device.isdigit() else args.device
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)
    with sd.InputStream(device=device, samplerate=args.sr, channels=args.channels,
                        blocksize=args.block, dtype="float32") as stream:
        while True:
            data, _overflowed = stream.read(args.block)
            out.write(np.ascontiguousarray(data, dtype=np.float32).tobytes())


if __name__ == "__main__":
    sys.exit(_child_main())
