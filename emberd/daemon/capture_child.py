"""Capture child: the PortAudio callback in a process of its own, blocks framed on a pipe.

Why. In the daemon the PortAudio callback runs Python and must take the GIL, which the
worker, hit, encoder, publisher and control threads hold in turns; on JACK a callback
that waits for it past one period makes the whole graph late (an xrun, which PortAudio
reports to every client as ``input_overflow``). Here the callback is the only busy
thread of its process, so nothing in the daemon can delay it; the daemon's reader
thread (:class:`~emberd.daemon.reconnect.InputWatchdog`) is not real-time: while it is
late the pipe holds the blocks (:data:`PIPE_BYTES`, about 6 s of one channel), and when
the pipe is full the callback drops the block and counts it (``dropped``) instead of
waiting.

Run as ``python -m emberd.daemon.capture_child --device NAME --sr SR --channels N --block B``
(stdout must be a pipe). It imports numpy and sounddevice only. Every block is one
message of :func:`message_bytes` bytes: a :data:`HEADER` (the callback's ``time.time()``
and ``time.perf_counter()`` when the block arrived, and this child's cumulative counts
of PortAudio-flagged input overflows and of blocks dropped on a full pipe) followed by
the ``[block, channels]`` float32 samples. Exit status 2 with one line on stderr when
the device cannot be opened; the child ends by itself when its parent dies (the pipe
breaks, or the parent pid changes) and is otherwise killed (SIGKILL never blocks, and a
stream of a dead JACK server cannot even be closed).

Thread map (this process): the **PortAudio callback thread** runs
:meth:`_Capture.callback` only (header and sample copies into one preallocated message,
one non-blocking ``write``; a partial write's rest goes first next time); the **main
thread** sleeps, waking every :data:`PARENT_POLL_S` to see whether the parent is gone.

Shared attributes (written by -> read by): ``_Capture.dead`` (callback -> main thread).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
import threading
import time
from typing import Any

import numpy as np

HEADER = np.dtype([("unix_s", "<f8"), ("mono_s", "<f8"), ("overflows", "<i8"),
                   ("dropped", "<i8")])  # fmt: skip
HEADER_BYTES = HEADER.itemsize  # 32 bytes before each block's samples
SAMPLE_BYTES = 4  # float32
PIPE_BYTES = 1 << 20  # pipe capacity asked for (Linux default limit /proc/sys/fs/pipe-max-size)
F_SETPIPE_SZ = 1031  # fcntl command (Linux) that resizes a pipe
PARENT_POLL_S = 0.5  # the main thread checks this often whether the parent is gone
EXIT_CANNOT_OPEN = 2  # exit status when the device cannot be opened


def message_bytes(block: int, channels: int) -> int:
    """Bytes of one message: header plus ``block`` frames of ``channels`` float32 samples."""
    return HEADER_BYTES + block * channels * SAMPLE_BYTES


def parse_message(buf: bytes, block: int, channels: int) -> tuple[np.void, np.ndarray]:
    """``(header record, [block, channels] float32 samples)`` of one message (views of ``buf``)."""
    head = np.frombuffer(buf, dtype=HEADER, count=1)[0]
    samples = np.frombuffer(buf, dtype=np.float32, offset=HEADER_BYTES)
    return head, samples.reshape(block, channels)


class _Capture:
    """The callback's state: one preallocated message and a spill buffer for partial writes."""

    def __init__(self, fd: int, block: int, channels: int) -> None:
        self.fd = fd
        self.size = message_bytes(block, channels)
        self.msg = np.zeros(self.size, dtype=np.uint8)
        self.head = self.msg[:HEADER_BYTES].view(HEADER)
        self.samples = self.msg[HEADER_BYTES:].view(np.float32).reshape(block, channels)
        self.view = self.msg.data  # a memoryview of the message
        self.spill = bytearray(self.size)  # the unwritten rest of a partially written message
        self.spill_view = memoryview(self.spill)
        self.spill_off = 0
        self.spill_len = 0
        self.overflows = 0  # blocks PortAudio flagged input_overflow
        self.dropped = 0  # blocks not written: the pipe was full (the reader was late)
        self.dead = threading.Event()  # the pipe broke: the parent is gone

    def callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """Frame the block and write it without ever blocking (PortAudio callback thread)."""
        unix_s, mono_s = time.time(), time.perf_counter()
        if status.input_overflow:
            self.overflows += 1
        try:
            self._flush_spill()  # BlockingIOError while the pipe is still full
            h = self.head
            h["unix_s"], h["mono_s"] = unix_s, mono_s
            h["overflows"], h["dropped"] = self.overflows, self.dropped
            self.samples[:] = indata
            n = os.write(self.fd, self.view)
            if n < self.size:  # a message is longer than PIPE_BUF: the rest goes first next time
                rest = self.size - n
                self.spill_view[:rest] = self.view[n:]
                self.spill_off, self.spill_len = 0, rest
        except BlockingIOError:
            self.dropped += 1
        except OSError:  # EPIPE: the daemon is gone
            self.dead.set()

    def _flush_spill(self) -> None:
        """Write what is left of the previous message (raises BlockingIOError if it can't)."""
        while self.spill_off < self.spill_len:
            self.spill_off += os.write(self.fd, self.spill_view[self.spill_off : self.spill_len])


def child_main(argv: list[str] | None = None) -> int:
    """Capture until the parent is gone (see the module doc); never returns normally."""
    ap = argparse.ArgumentParser(prog="python -m emberd.daemon.capture_child")
    ap.add_argument("--device", required=True, help="device index or name")
    ap.add_argument("--sr", type=int, required=True)
    ap.add_argument("--channels", type=int, required=True)
    ap.add_argument("--block", type=int, required=True)
    args = ap.parse_args(argv)
    fd = sys.stdout.fileno()
    os.set_blocking(fd, False)
    with contextlib.suppress(OSError):  # not a pipe, or over the limit: keep the default
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    parent = os.getppid()
    cap = _Capture(fd, args.block, args.channels)
    device: int | str = int(args.device) if args.device.isdigit() else args.device
    try:
        import sounddevice as sd

        stream = sd.InputStream(device=device, samplerate=args.sr, channels=args.channels,
                                blocksize=args.block, dtype="float32",
                                latency="low", callback=cap.callback)  # fmt: skip
        stream.start()
    except Exception as exc:  # PortAudioError, ValueError, OSError (no PortAudio)
        print(f"capture: input device {args.device!r}: cannot open ({exc})", file=sys.stderr,
              flush=True)  # fmt: skip
        os._exit(EXIT_CANNOT_OPEN)
    while not cap.dead.wait(PARENT_POLL_S):
        if os.getppid() != parent:
            break
    # Never stop or close the stream, never let PortAudio's exit handler run: on a dead
    # JACK server both block for minutes (see emberd.daemon.reconnect).
    os._exit(0)


if __name__ == "__main__":
    sys.exit(child_main())
