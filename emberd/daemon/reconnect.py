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
ring the callback used, through the source's public operations only
(:meth:`~emberd.dsp.device.DeviceSource.detach` gives up the wedged stream,
:meth:`~emberd.dsp.device.DeviceSource.deliver` is the one producer path: ring copy,
arrival mark, counter). A child that stalls in turn is killed (SIGKILL never blocks)
and replaced, with exponential backoff.

States (``input_state`` in status): ``running``; ``stalled`` (no audio for
:data:`STALL_S` while the stream should run: detected within one second);
``reconnecting`` (a capture child is starting). ``input_stalls`` counts stalls,
``input_reconnects`` successful reconnections.

Threads, all owned by the :class:`InputWatchdog` and joined by :meth:`InputWatchdog.close`:
the reconnect thread (backoff, starts and watches children) and one reader thread per
capture child (ends when the child's stdout closes, i.e. when the child dies or is killed).

Shared attributes (written by -> read by): ``state``, ``stalls``, ``reconnects``
(worker via :meth:`InputWatchdog.watch`, reconnect thread -> status);
``_blocks`` (reader thread -> reconnect thread); ring writes via ``deliver`` (reader
thread, the only producer once the stream is detached -> worker).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from emberd.dsp.device import forget_portaudio_at_exit

log = logging.getLogger(__name__)

STALL_S = 0.5  # s without a block while capturing: stalled (86 blocks of 256 at 44.1 kHz)
FIRST_BLOCK_S = 2.0  # s allowed for the very first block after the stream starts
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # waits before successive reconnection attempts
STOP_TIMEOUT_S = 1.0  # longest wait for PortAudio to stop a stream at shutdown
CHILD_START_S = 10.0  # a capture child gets this long to deliver its first block
JOIN_TIMEOUT_S = 2.0  # per owned thread at close (a killed child's reader ends at once)

RUNNING, STALLED, RECONNECTING = "running", "stalled", "reconnecting"


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
    """Watches a :class:`~emberd.dsp.device.DeviceSource` and reconnects it (see module doc).

    Parameters
    ----------
    source : DeviceSource
        Used through its public surface only: ``callbacks``, ``capturing``, ``detach()``,
        ``deliver(block)``, ``device``, ``sr``, ``channels``, ``block_size``.
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
        self._thread: threading.Thread | None = None  # the reconnect loop
        self._readers: list[threading.Thread] = []  # one per capture child started

    # -------------------------------------------------------------- worker side

    def watch(self, now: float) -> bool:
        """Called by the worker while it waits for audio; True when the state changed
        since the last call (the worker then publishes status at once)."""
        n = self.source.callbacks
        idle = not self.source.capturing and self._child is None  # not capturing yet
        limit = STALL_S if n > 0 else FIRST_BLOCK_S
        if n != self._seen or idle:
            self._seen, self._progress = n, now
        elif self.state == RUNNING and self._child is None and now - self._progress > limit:
            self.state = STALLED
            self.stalls += 1
            log.warning("input stalled: no audio for %.1f s; reconnecting", now - self._progress)
            self.source.detach()  # never touched again: PortAudio may be wedged in it
            self._thread = threading.Thread(target=self._reconnect_loop,
                                            name="emberd-reconnect", daemon=True)
            self._thread.start()
        changed = self.state != self._reported
        self._reported = self.state
        return changed

    def describe(self) -> dict[str, Any]:
        return {"input_state": self.state, "input_stalls": self.stalls,
                "input_reconnects": self.reconnects}

    def close(self) -> None:
        """Stop reconnecting, kill the capture child and join every thread this watchdog owns."""
        self._stop.set()
        self._kill_child()
        threads = ([self._thread] if self._thread is not None else []) + self._readers
        for t in threads:
            if t is not threading.current_thread():
                t.join(JOIN_TIMEOUT_S)
        self._readers = [t for t in self._readers if t.is_alive()]

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
        self._readers = [t for t in self._readers if t.is_alive()]  # earlier children's, ended
        reader = threading.Thread(target=self._reader, args=(child, first),
                                  name="emberd-reconnect-read", daemon=True)  # fmt: skip
        self._readers.append(reader)
        reader.start()
        deadline = time.monotonic() + CHILD_START_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if first.wait(0.05):
                return True
            if child.poll() is not None:
                break
        self._kill_child()
        return False

    def _reader(self, child: subprocess.Popen[bytes], first: threading.Event) -> None:
        """Copy the child's blocks into the source, exactly as its callback did."""
        src = self.source
        nbytes = src.block_size * src.channels * 4
        assert child.stdout is not None
        while True:
            data = child.stdout.read(nbytes)
            if not data or len(data) < nbytes:
                return  # the child ended: the reconnect loop notices
            src.deliver(np.frombuffer(data, dtype=np.float32).reshape(src.block_size,
                                                                      src.channels))
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
