"""Device input in a capture child: start it, watch it, report stalls, restart with backoff.

Two paths, one mechanism. With ``--capture-in process`` the
PortAudio callback runs in a capture child process (:mod:`emberd.daemon.capture_child`) from
the start: :meth:`InputWatchdog.start_capture` starts it, a reader thread here copies
its framed blocks into the source's ring, and the reconnect thread watches it. So no
thread of the daemon can delay the callback (on JACK a callback late by one period is
an xrun for the whole graph). **In-process capture** (``--capture-in thread``, the
default: the capture child removed no overflow on the loaded test box, see README) keeps
the stream in the daemon; when it stalls, the worker's :meth:`InputWatchdog.watch`
notices and capture continues in a child the same way.

Why children, and why the wedged stream is abandoned. When the sound server dies under
an open PortAudio JACK stream (PortAudio V19.6), ``Pa_StopStream``/``Pa_AbortStream``/
``Pa_CloseStream`` block in ``pthread_cond_timedwait`` for ten minutes, and so does
``Pa_Terminate`` (sounddevice calls it at exit); the JACK client of the dead server
cannot open a stream on a restarted one either. So an in-process stream that stalled is
abandoned, never touched again, and sounddevice's exit handler is unregistered so the
process can still exit at once; a child that stalls (or dies) is killed (SIGKILL never
blocks) and replaced by a fresh one, with a fresh PortAudio, after exponential backoff.
The reader thread uses the source's public operations only
(:meth:`~emberd.dsp.device.DeviceSource.detach` gives up a wedged in-process stream,
:meth:`~emberd.dsp.device.DeviceSource.deliver` is the one producer path: ring copy,
arrival mark at the child's callback time, counter) and adds the child's counters:
PortAudio-flagged input overflows to ``source.input_overflows``, blocks the child
dropped on a full pipe (this side was late) to ``dropped_blocks``.

States (``input_state`` in status): ``running``; ``stalled`` (no audio for
:data:`STALL_S` while capture should run, or the child died: detected within one
second); ``reconnecting`` (a capture child is starting). ``input_stalls`` counts stalls,
``input_reconnects`` successful restarts after a stall; ``capture`` is ``process`` or
``thread``, ``capture_pid`` the current child's pid (None without one),
``capture_dropped_blocks`` the blocks dropped on a full pipe.

Threads, all owned by the :class:`InputWatchdog` and joined by :meth:`InputWatchdog.close`:
the reconnect thread (watches the child, backoff, starts children) and one reader
thread per capture child (ends when the child's stdout closes, i.e. when the child dies
or is killed).

Shared attributes (written by -> read by): ``state``, ``stalls``, ``reconnects``
(worker via :meth:`InputWatchdog.watch`, reconnect thread -> status);
``_blocks``, ``dropped_blocks`` (reader thread -> reconnect thread, status);
``_child`` (reconnect thread, or the thread calling ``start_capture``/``close`` ->
worker via ``watch``, status); ring writes and ``input_overflows`` via ``deliver``
(reader thread, the only producer once capture runs in a child -> worker).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from emberd.daemon.capture_child import message_bytes, parse_message
from emberd.dsp.device import forget_portaudio_at_exit
from emberd.errors import EmberdError

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
        ``deliver(block, unix_s, mono_s)``, ``input_overflows``, ``device``, ``sr``,
        ``channels``, ``block_size``.
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
        self.dropped_blocks = 0  # blocks the children dropped on a full pipe (all children)
        self.mode = "thread"  # "process" once start_capture ran
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
        child = self._child
        return {"input_state": self.state, "input_stalls": self.stalls,
                "input_reconnects": self.reconnects, "capture": self.mode,
                "capture_pid": child.pid if child is not None else None,
                "capture_dropped_blocks": self.dropped_blocks}  # fmt: skip

    def start_capture(self) -> None:
        """Capture in a child process from the start (``--capture-in process``).

        Starts the first capture child, waits for its first block (at most
        :data:`CHILD_START_S`), then the reconnect thread watches it as it watches any
        child: a child that stalls or dies is reported and replaced.

        Raises
        ------
        EmberdError
            The child could not open the device (its one line) or sent nothing in time.
        """
        self.mode = "process"
        err = self._start_child()
        if err is not None:
            raise EmberdError(err)
        self.state = RUNNING
        self._thread = threading.Thread(target=self._reconnect_loop,
                                        name="emberd-reconnect", daemon=True)  # fmt: skip
        self._thread.start()

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
                if self._stop.wait(STALL_S):
                    return
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
            if self._start_child() is None:
                self.state = RUNNING
                self.reconnects += 1
                log.warning("input reconnected after %d attempt(s)", attempt)
                attempt = 0
            else:
                self.state = STALLED

    def _start_child(self) -> str | None:
        """Start a capture child and wait for its first block: None, or why it failed."""
        src = self.source
        dev = src.device.name if src.device is not None else "default"
        cmd = [sys.executable, "-m", "emberd.daemon.capture_child", "--device", dev,
               "--sr", str(src.sr), "--channels", str(src.channels),
               "--block", str(src.block_size)]
        with tempfile.TemporaryFile() as errors:  # the child's stderr: its one line on failure
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors,
                                     stdin=subprocess.DEVNULL)  # fmt: skip
            self._child = child
            first = threading.Event()
            self._readers = [t for t in self._readers if t.is_alive()]  # earlier children's
            reader = threading.Thread(target=self._reader, args=(child, first),
                                      name="emberd-capture-read", daemon=True)  # fmt: skip
            self._readers.append(reader)
            reader.start()
            deadline = time.monotonic() + CHILD_START_S
            while time.monotonic() < deadline and not self._stop.is_set():
                if first.wait(0.05):
                    return None
                if child.poll() is not None:
                    break
            self._kill_child()
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"capture child: no audio within {CHILD_START_S:g} s"

    def _reader(self, child: subprocess.Popen[bytes], first: threading.Event) -> None:
        """Copy the child's blocks into the source at the child's callback times; add its counts."""
        src = self.source
        block, channels = src.block_size, src.channels
        nbytes = message_bytes(block, channels)
        seen_overflows = seen_dropped = 0  # this child's cumulative counts, as last reported
        assert child.stdout is not None
        while True:
            data = child.stdout.read(nbytes)
            if not data or len(data) < nbytes:
                child.stdout.close()  # the child ended: the reconnect loop notices
                return
            head, samples = parse_message(data, block, channels)
            src.deliver(samples, float(head["unix_s"]), float(head["mono_s"]))
            overflows, dropped = int(head["overflows"]), int(head["dropped"])
            src.input_overflows += overflows - seen_overflows
            self.dropped_blocks += dropped - seen_dropped
            seen_overflows, seen_dropped = overflows, dropped
            self._blocks += 1
            first.set()
