"""File and synth input: a feeder thread that plays blocks into the ring like a callback would.

With ``pace="realtime"`` each 256-frame block is written when its last sample would
have been captured live (so latency figures mean the same as with a device); with
``pace="fast"`` blocks are written as fast as the worker drains the ring, waiting for
free space instead of overflowing, so every hop is analysed (deterministic tests). At
the end of the source the feeder restarts it (``loop``) or sets ``finished``, and the
worker flushes and ends the daemon.

Shared attributes (written by -> read by):

* ``ring`` samples (this thread -> worker; see :class:`~emberd.dsp.ring.SampleRing`)
* ``clock`` block arrival marks (this thread -> worker, status)
* ``finished`` (this thread, once, after its last write -> worker)
* ``error`` (this thread -> app)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from emberd.dsp.clock import BlockClock
from emberd.dsp.ring import SampleRing

log = logging.getLogger(__name__)

BLOCK_FRAMES = 256  # frames per block, like a 256-frame audio callback
RING_SECONDS = 4.0  # ring capacity in seconds of audio
FAST_WAIT_S = 0.0005  # back-off while the ring is full in fast mode
PACES = ("realtime", "fast")

BlockFactory = Callable[[], Iterator[np.ndarray]]  # each call starts the source again


class FeederInput:
    """A source of ``[n, channels]`` float32 blocks played into a SampleRing by a thread.

    Parameters
    ----------
    blocks : callable
        Returns a fresh iterator of blocks (called again on each loop).
    sr : int
        Sample rate of the blocks.
    channels : int
        Channels per block.
    pace : {"realtime", "fast"}
    loop : bool
        Start again at the end instead of finishing.
    description : str
        For status (``input``).
    """

    def __init__(
        self,
        blocks: BlockFactory,
        *,
        sr: int,
        channels: int,
        pace: str,
        loop: bool,
        description: str,
    ) -> None:
        self.blocks = blocks
        self.sr = sr
        self.channels = channels
        self.pace = pace
        self.loop = loop
        self.description = description
        self.nominal_block_s = BLOCK_FRAMES / sr
        self.ring = SampleRing(int(RING_SECONDS * sr), channels)
        self.clock = BlockClock(sr)
        self.arrivals = self.clock  # the worker predicts block arrivals from these marks
        self.finished = False
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emberd-feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            t0 = time.perf_counter()
            pos = 0  # frames written, the "capture clock" of realtime pace
            while not self._stop_event.is_set():
                for block in self.blocks():
                    if self._stop_event.is_set():
                        return
                    pos = self._write(block, t0, pos)
                if not self.loop:
                    break
        except BaseException as exc:  # an unreadable file mid-way: end the daemon with it
            log.error("input %s: %s", self.description, exc)
            self.error = exc
        finally:
            self.finished = True

    def _write(self, block: np.ndarray, t0: float, pos: int) -> int:
        n = block.shape[0]
        if self.pace == "realtime":
            delay = t0 + (pos + n) / self.sr - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        else:
            while self.ring.free < n and not self._stop_event.is_set():
                time.sleep(FAST_WAIT_S)
        self.ring.write(block)
        self.clock.mark(self.ring.total_written)
        return pos + n


def array_blocks(audio: np.ndarray, block_frames: int = BLOCK_FRAMES) -> BlockFactory:
    """Block factory over an in-memory ``[n, channels]`` array."""
    data = np.ascontiguousarray(audio, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]

    def gen() -> Iterator[np.ndarray]:
        for start in range(0, data.shape[0], block_frames):
            yield data[start : start + block_frames]

    return gen
