"""Encoder strategies for the live worker: how a hop's embedding is computed.

``streaming`` (default) feeds only the new frames to
:class:`~emberd.models.streaming.StreamingEncoder` (aiSFX only; other models run
windowed), which keeps the windowed network's activations across hops and recomputes
only the rows the hop changes: each embedding equals the windowed one on the 100 frames
ending at the newest complete 8-frame step, with no look-ahead (exact edges).
A new embedding comes every 8 frames (186 ms); hops in between publish the newest
one. A stream far behind (the worker skipped hops: overload) jumps to the newest
window with one full window's work instead of stepping through every frame.
``windowed`` runs the ONNX :class:`~emberd.models.runtime.Encoder` on the latest
``window_frames`` mel frames of every channel, all channels as one batch, every hop;
``aisfx-int8`` (``--precision int8``) under the default ``streaming`` strategy runs
windowed at the streaming cadence instead: a window every 8 frames on the same grid.
Both implement :class:`HopEncoder`, and the worker does not care which one it holds.

An :class:`Engine` bundles the strategy with one :class:`StreamingFrontEnd` per channel;
``set_model`` builds a new Engine on the control thread and hands it to the worker.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from emberd.errors import EmberdError

log = logging.getLogger(__name__)

ENCODER_STRATEGIES = ("windowed", "streaming")
STREAMING_MODELS = ("aisfx",)  # models with a streaming implementation; others run windowed
FRAME_CAPACITY_MIN = 512  # mel frames kept per channel (12 s at 23 ms), more than any window
STREAMING_STEP_FRAMES = 8  # frames per streaming aiSFX step (three 2x pools)
RESTART_STEPS = 3  # a streaming encoder this many steps behind jumps (a full window costs ~2)
STEP_TIMES_KEPT = 256  # background step times kept until the worker drains them
SETTLE_POLL_S = 0.05  # s between checks while waiting for the encoder thread
SILENCE_PRIME_S = 0.2  # s of zeros pushed through a scratch front end to learn the silence frame


class HopEncoder(Protocol):
    """What the worker needs from an encoder strategy."""

    kind: str
    model: str
    provider: str
    dim: int
    window_frames: int
    # True when a hop costs no encoder work beyond the frames it brings (the worker then
    # catches up late hops instead of skipping them, see emberd.daemon.worker)
    incremental: bool

    def embed_hop(self, fronts: list[Any], end_frame: int) -> np.ndarray | None:
        """Embedding ``[C, dim]`` of the audio up to frame ``end_frame`` (exclusive), or None."""
        ...


def silence_frame(config: Any) -> np.ndarray:
    """The mel frame a front end produces for digital silence (pads the first windows)."""
    from emberd.dsp.frontend import StreamingFrontEnd

    fe = StreamingFrontEnd(config)
    fe.push(np.zeros(int(SILENCE_PRIME_S * config.sr) + config.n_fft, dtype=np.float32))
    out = np.zeros((1, config.n_mels), dtype=np.float32)
    if fe.frames.latest(1, out) != 1:  # pragma: no cover - 0.2 s always gives frames
        raise EmberdError("front end: no frame from silence")
    return out[0]


def fill_window(fronts: list[Any], end_frame: int, window: np.ndarray,
                silence: np.ndarray) -> None:  # fmt: skip
    """``window[c]`` := channel ``c``'s mel frames ending at ``end_frame`` (exclusive), the
    silence frame where they come before the stream or are no longer held."""
    w = window.shape[1]
    for c, fe in enumerate(fronts):
        oldest = fe.frames.total - fe.frames.available  # oldest frame still held
        n = max(0, min(w, end_frame - oldest, end_frame))
        if n < w:
            window[c, : w - n] = silence
        if n:
            fe.frames.copy_range(end_frame - n, window[c, w - n :])


class WindowedEncoder:
    """ONNX encoder on the latest window of every channel, one batch per hop.

    With ``step_frames`` > 1 a window is computed only every ``step_frames`` frames, on
    the streaming encoder's grid (windows end where ``end + align`` is a multiple of
    ``step_frames``); the hops in between get the newest computed embedding, the same
    object (the worker then reuses its search). ``aisfx-int8`` runs so by default: the
    streaming aiSFX cadence (a new embedding every 8 frames, 186 ms), at int8's cost.
    """

    kind = "windowed"

    def __init__(self, encoder: Any, channels: int, silence: np.ndarray,
                 step_frames: int = 1) -> None:  # fmt: skip
        manifest = encoder.manifest
        self.encoder = encoder
        self.model: str = manifest.name
        self.provider: str = encoder.provider
        self.dim: int = int(manifest.dim)
        self.window_frames: int = int(manifest.window_frames)
        self.step_frames = int(step_frames)
        # Every hop a whole window, unless windows come on a grid (late hops then cost
        # one window per grid step they cross, as on time).
        self.incremental = self.step_frames > 1
        self._align = (-self.window_frames) % self.step_frames
        self._window = np.empty((channels, self.window_frames, manifest.n_mels), np.float32)
        self._silence = silence
        self._last: np.ndarray | None = None
        self._last_end = 0

    def embed_hop(self, fronts: list[Any], end_frame: int) -> np.ndarray | None:
        if self.step_frames > 1:
            step = self.step_frames
            end_frame = (end_frame + self._align) // step * step - self._align
            if end_frame <= 0:
                return None  # the first window ends on the grid's first point
            if end_frame == self._last_end:
                return self._last
            self._last_end = end_frame
            self._last = self._embed(fronts, end_frame)
            return self._last
        return self._embed(fronts, end_frame)

    @property
    def embedding_end(self) -> int | None:
        """Frame (exclusive) where the latest grid window ends (None: every hop's own)."""
        return self._last_end if self.step_frames > 1 and self._last is not None else None

    def _embed(self, fronts: list[Any], end_frame: int) -> np.ndarray:
        fill_window(fronts, end_frame, self._window, self._silence)
        return np.asarray(self.encoder.embed(self._window), dtype=np.float32)


@dataclass
class StepJob:
    """Mel frames handed to a streaming encoder (built by the worker, read by the stepper).

    ``window`` (a restart) is the full window ending at input frame ``start``; ``frames``
    are the input frames ``start .. start + n`` to push after it (or after the frames
    handed before, when ``window`` is None).
    """

    window: np.ndarray | None
    start: int
    frames: np.ndarray  # [C, n, n_mels], a copy


class StreamingHopEncoder:
    """:class:`StreamingEncoder` fed with each hop's new frames (aiSFX only).

    By default the steps run in the caller's thread inside :meth:`embed_hop`. After
    :meth:`start_background` they run on their own thread (``emberd-encoder``): the
    caller (the worker) only copies the new mel frames into a :class:`StepJob` and gets
    the newest *finished* embedding back at once, so a hop is never held up by a step.

    Shared attributes in background mode (written by -> read by):

    * ``_jobs`` deque of StepJob, under ``_cond`` (worker appends, restarts clear it ->
      stepper pops)
    * ``_newest`` ``(end_frame, embedding)`` tuple, replaced whole, never mutated (stepper
      -> worker); ``end_frame`` is the input frame (exclusive) the embedding's window ends at
    * ``restarts`` (worker -> status), ``step_ms`` deque (stepper appends -> worker drains)
    """

    kind = "streaming"
    incremental = True  # every frame is pushed once, whichever hops are analysed

    def __init__(self, streaming: Any, model: str, channels: int, n_mels: int,
                 silence: np.ndarray) -> None:  # fmt: skip
        self.streaming = streaming
        self.model = model
        self.provider = str(streaming.provider)  # numpy (exact edges, default) or ONNX step graph
        self.dim = int(streaming.dim)
        self.window_frames = int(streaming.window_frames)
        self._channels = channels
        self._n_mels = n_mels
        self._taken = 0  # input frames handed to the steps (worker)
        self._fed = 0  # input frames pushed through the encoder (stepper)
        self._buf = np.empty((channels, streaming.chunk_frames * 4, n_mels), np.float32)
        self._window = np.empty((channels, self.window_frames, n_mels), np.float32)
        self._silence = silence
        self._newest: tuple[int, np.ndarray] | None = None  # (end, embedding): stepper writes
        self._served: tuple[int, np.ndarray] | None = None  # the pair embed_hop returned (worker)
        self.restarts = 0  # jumps over frames never stepped through (see embed_hop)
        self.step_frames = STREAMING_STEP_FRAMES  # a new embedding every this many frames
        self.step_ms: deque[float] = deque(maxlen=STEP_TIMES_KEPT)  # background step times
        self._jobs: deque[StepJob] = deque()
        self._cond = threading.Condition()
        self._busy = False  # the stepper holds a job (under _cond)
        self._closing = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # the stepper's failure, raised by embed_hop
        # Embeddings come every chunk_frames frames, ending on multiples of it. Leading
        # silence frames (what the window holds before the stream anyway) shift that
        # grid so one window starts exactly on the input's first frame: a one-shot file
        # played from its onset is analysed in the very window the library indexed.
        align = (-self.window_frames) % int(streaming.chunk_frames)
        self._align = align  # encoder frame = input frame + align
        if align:
            lead = np.broadcast_to(silence, (channels, align, n_mels))
            list(streaming.push(np.ascontiguousarray(lead, dtype=np.float32)))

    @property
    def background(self) -> bool:
        """Whether steps run on the encoder's own thread."""
        return self._thread is not None

    @property
    def embedding_end(self) -> int | None:
        """Input frame (exclusive) where the window of the embedding :meth:`embed_hop` last
        returned ends (taken with it: the encoder thread may have finished a newer one)."""
        served = self._served
        return None if served is None else served[0]

    def embed_hop(self, fronts: list[Any], end_frame: int) -> np.ndarray | None:
        if self.error is not None:  # a failed stepper's state is not stepped again, inline either
            raise EmberdError(f"streaming encoder failed: {self.error}") from self.error
        job = self._take(fronts, end_frame)
        if self._thread is None:
            if job is not None:
                self._run(job)
        elif job is not None:
            with self._cond:
                if job.window is not None:
                    self._jobs.clear()  # a restart replaces every frame not yet stepped
                self._jobs.append(job)
                self._cond.notify()
        newest = self._newest  # read once: the embedding and its end stay a pair
        self._served = newest
        return None if newest is None else newest[1]

    def _take(self, fronts: list[Any], end_frame: int) -> StepJob | None:
        """Copy the input frames up to ``end_frame`` not handed yet (worker thread).

        Far behind, a restart: the worker skipped hops (overload), or in background mode
        the steps have that many frames queued and not started. Then the job is the
        newest window, one full window's work instead of a step for every 8 frames.
        """
        step = self.step_frames
        with self._cond:
            queued = sum(j.frames.shape[1] for j in self._jobs)
        if end_frame - self._taken + queued > RESTART_STEPS * step:
            start = (end_frame + self._align) // step * step - self._align  # newest step end
            window = np.empty_like(self._window)
            fill_window(fronts, start, window, self._silence)
            self.restarts += 1
        elif end_frame > self._taken:
            window, start = None, self._taken
        else:
            return None
        frames = np.empty((self._channels, end_frame - start, self._n_mels), np.float32)
        for c, fe in enumerate(fronts):
            fe.frames.copy_range(start, frames[c])
        self._taken = end_frame
        return StepJob(window, start, frames)

    def _run(self, job: StepJob) -> None:
        """Push one job through the encoder (its only caller thread at a time)."""
        if job.window is not None:
            emb = self.streaming.restart(job.window, job.start + self._align)
            self._newest = (job.start, emb.copy())
            self._fed = job.start
        done = 0
        total = job.frames.shape[1]
        while done < total:
            n = min(total - done, self._buf.shape[1])
            self._buf[:, :n] = job.frames[:, done : done + n]
            for end, emb in self.streaming.push(self._buf[:, :n]):
                self._newest = (int(end) - self._align, emb.copy())
            done += n
        self._fed = job.start + total

    # ---------------------------------------------------------------- background steps

    def start_background(self) -> None:
        """Run the steps on their own thread from now on (idempotent)."""
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._steps, name="emberd-encoder",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def stop_background(self) -> None:
        """Finish every frame handed so far, then run steps in the caller's thread again."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread.join()
        self._thread = None
        if self.error is not None:
            raise EmberdError(f"streaming encoder failed: {self.error}") from self.error

    def settle(self) -> None:
        """Wait until every frame handed so far has been stepped (background mode)."""
        with self._cond:
            while (self._jobs or self._busy) and self._thread is not None and not self.error:
                self._cond.wait(SETTLE_POLL_S)

    def _steps(self) -> None:
        """The encoder thread: run queued jobs in order until closed and drained."""
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return  # closing and drained
                job = self._jobs.popleft()
                self._busy = True
            try:
                t0 = time.perf_counter()
                self._run(job)
                self.step_ms.append((time.perf_counter() - t0) * 1000.0)
            except BaseException as exc:  # reported by the worker's next embed_hop
                log.exception("streaming encoder failed")
                self.error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if self.error is not None:
                return


@dataclass
class Engine:
    """A hop encoder plus one front end per channel, built together for one model."""

    manifest: Any
    fronts: list[Any]
    encoder: HopEncoder
    hop_frames: int  # mel frames between two hops

    @property
    def config(self) -> Any:
        return self.manifest.frontend()


def build_engine(
    model: Any,
    *,
    channels: int,
    device: str,
    hop_ms: float | None,
    strategy: str = "streaming",
    threads: int = 2,
) -> Engine:
    """Build an Engine for ``model``: a manifest, a name, or None (aiSFX, falling back
    loudly to dsp-baseline). ``strategy="streaming"`` runs windowed for models without
    a streaming implementation (everything but aiSFX).

    Raises
    ------
    EmberdError
        Unknown model or strategy, or a strategy the model does not support.
    """
    from emberd.dsp.frontend import StreamingFrontEnd
    from emberd.models.registry import resolve_default

    if strategy not in ENCODER_STRATEGIES:
        raise EmberdError(f"encoder {strategy!r}: choose from {', '.join(ENCODER_STRATEGIES)}")
    manifest = model if hasattr(model, "window_frames") else resolve_default(model)
    config = manifest.frontend()
    frame_s = config.hop_length / config.sr
    hop_frames = 1 if hop_ms is None else hop_frames_for(hop_ms, frame_s, manifest)
    capacity = max(FRAME_CAPACITY_MIN, 4 * manifest.window_frames)
    fronts = [StreamingFrontEnd(config, frame_capacity=capacity) for _ in range(channels)]
    encoder: HopEncoder
    step_frames = 1  # windowed: a window every hop
    if strategy == "streaming" and manifest.name not in STREAMING_MODELS:
        from emberd.models.precision import int8_of

        if int8_of(manifest) in STREAMING_MODELS and hop_frames < STREAMING_STEP_FRAMES:
            # An int8 variant of a streaming model: its windows at the streaming cadence.
            step_frames = STREAMING_STEP_FRAMES
            log.info("encoder streaming: %s runs windowed every %d frames, the streaming "
                     "cadence", manifest.name, step_frames)  # fmt: skip
        else:
            log.info("encoder streaming: not available for %s, running windowed", manifest.name)
        strategy = "windowed"
    if strategy == "streaming":
        encoder = _streaming(manifest, channels=channels, hop_frames=hop_frames, threads=threads,
                             device=device, silence=silence_frame(config))  # fmt: skip
    else:
        from emberd.models.plugin import load_encoder

        onnx = load_encoder(manifest, device=device, threads=threads)
        encoder = WindowedEncoder(onnx, channels, silence_frame(config), step_frames)
    log.info(
        "encoder %s (%s) on %s, hop %d frame(s) = %.1f ms",
        manifest.name, encoder.kind, encoder.provider, hop_frames, hop_frames * frame_s * 1000,
    )  # fmt: skip
    return Engine(manifest=manifest, fronts=fronts, encoder=encoder, hop_frames=hop_frames)


def hop_frames_for(hop_ms: float, frame_s: float, manifest: Any) -> int:
    """``--hop-ms`` in whole mel frames, or EmberdError when it cannot be honoured.

    A hop is a whole number of mel frames (rounded to the nearest), from one frame up to
    one encoder window: shorter cannot be computed, longer would leave audio unanalysed.
    """
    frame_ms = frame_s * 1000.0
    window = int(manifest.window_frames)
    if not math.isfinite(hop_ms) or hop_ms <= 0:
        raise EmberdError(f"--hop-ms {hop_ms:g}: must be a number above 0")
    frames = round(hop_ms / frame_ms)
    if frames < 1:
        raise EmberdError(f"--hop-ms {hop_ms:g}: shorter than one mel frame of {manifest.name} "
                          f"({frame_ms:.2f} ms), the shortest hop")
    if frames > window:
        raise EmberdError(f"--hop-ms {hop_ms:g}: longer than one {manifest.name} window "
                          f"({window * frame_ms:.0f} ms); audio between windows would never be "
                          "analysed")
    return int(frames)


def _streaming(
    manifest: Any, *, channels: int, hop_frames: int, threads: int, device: str,
    silence: np.ndarray,
) -> HopEncoder:
    """Build the streaming aiSFX encoder from the fetched checkpoint."""
    if manifest.name != "aisfx":
        raise EmberdError(f"encoder streaming: only for aisfx, not {manifest.name}")
    from emberd.models import aisfx
    from emberd.models.streaming import StreamingEncoder
    from emberd.paths import cache_dir

    state, _ = aisfx.load_checkpoint(aisfx.fetch_wheel(cache_dir()))
    enc = StreamingEncoder(
        aisfx.folded_weights(state),
        hop_frames=hop_frames,
        window_frames=manifest.window_frames,
        channels=channels,
        threads=threads,
        pad_frame=silence,  # before the stream: silence, as the windowed path pads
        device=device,
    )
    return StreamingHopEncoder(enc, manifest.name, channels, manifest.n_mels, silence)
