"""The analysis worker: ring -> mel frames -> encoder every hop -> search -> outputs.

One thread. It drains the :class:`~emberd.dsp.ring.SampleRing` the producer (audio
callback or file/synth feeder) fills, pushes each selected channel through its own
:class:`~emberd.dsp.frontend.StreamingFrontEnd`, and every ``hop_frames`` mel frames
runs the encoder on all channels as one batch, searches the library, measures
level/onset, and hands one :class:`HopResult` to :class:`~emberd.daemon.outputs.Outputs`
(analysers add tags and similarity; one drop-oldest handoff per sink: it never waits
for a transport). The hit ladder (:mod:`emberd.daemon.hits`) reads the same ring on
its own thread, never waiting for a hop, and hands its answers over at once; window
matches of a hop whose whole window is at the noise floor are withheld
(:class:`~emberd.daemon.hits.LevelGate`).

Commands from the control threads (``set_k``, ``set_model``, ``reload``, ``capture``)
arrive on a queue and are applied between hops, so the worker alone touches the
engine, the library (an SQLite connection must stay in the thread that opened it)
and the per-channel state.

Shared attributes (written by -> read by):

* ``paused`` (worker, on ``pause``/``resume`` -> control thread for status)
* ``k`` (worker, on ``set_k`` -> control thread for status)
* ``hits`` the hit ladder, run by the hit thread (:class:`~emberd.daemon.hits.HitThread`,
  which reads the ring itself as its second reader; it puts HitResult items into the same
  handoffs, every put serialised by one lock); the worker reads its level gate and counters
* ``engine`` (worker, on ``set_model`` -> control thread for status)
* the streaming encoder's steps: live (``realtime``), they run on the encoder's own thread
  (``emberd-encoder``, :meth:`~emberd.daemon.engine.StreamingHopEncoder.start_background`).
  The worker hands each hop's new mel frames to it (copies, in a queue that a restart
  replaces: bounded by RESTART_STEPS steps of frames) and publishes every hop at once with
  the newest *finished* embedding, whose window end each hop message carries
  (``window_end_s``); a hop never waits for a step. The worker alone reads the front ends;
  the encoder thread alone runs the network. At the end of input the worker stops that
  thread (it finishes what was handed) and steps the flush itself, so a file played once
  gives the same windows as stepping in one thread.
* a ``reload`` whose library changed: the builder thread (``emberd-hit-index``,
  :class:`_IndexBuilder`, started at the first such reload) reads only its job queue
  (:class:`~emberd.library.hitindex.IndexSource`, read by the worker) and writes only its
  result queue (built indexes); the worker drains that queue between hops
  (:class:`HitIndexReloads`), drops what a later reload replaced, and alone sets the
  current index, ``hit_index_builds`` (-> control thread for status) and the ladder it
  hands the hit thread. At shutdown queued builds are dropped and a running one's result
  is never taken, so nothing is handed over after the end-of-input flush
* ``done`` event (worker at end of input -> app)
* ``stats`` counters (see :class:`~emberd.daemon.status.DaemonStats`)
"""

from __future__ import annotations

import logging
import math
import operator
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from emberd.daemon.analysis import OnsetDetector, level_db
from emberd.daemon.engine import Engine
from emberd.daemon.hits import HitLadder, HitResult, HitThread, LevelGate, SerialPut
from emberd.daemon.mixdown import MixdownAnalyser, MixdownResult, class_data
from emberd.daemon.status import DaemonStats, swallowed
from emberd.errors import EmberdError

if TYPE_CHECKING:
    from emberd.library.hitindex import HitIndex, IndexSource

log = logging.getLogger(__name__)

READ_CHUNK_FRAMES = 2048  # samples per channel drained from the ring per front-end push
STATUS_PERIOD_S = 1.0  # status message interval
# Live, incremental encoder: a backlog up to this (and half the ring) is analysed hop by hop.
# Above it the encoder jumps (a full window, ~2 steps): the bound must exceed what a jump
# lets pile up, or a box that keeps up by stepping would be caught jumping forever.
MAX_CATCH_UP_S = 1.5
WAIT_POLL_S = 0.0005  # sleep while the audio is due but has not arrived yet
WAIT_MAX_S = 0.05  # longest sleep while waiting for audio (bounds command latency)
MAX_CAPTURE_S = 60.0  # longest capture command
JOIN_HITS_S = 5.0  # wait for the hit thread at shutdown


@dataclass
class HopResult:
    """Everything published for one hop, for every channel (built by the worker, read-only after).

    ``capture_time`` is the Unix time of the first sample of the newest hop of audio
    (the audio that made this hop happen); ``latency = publish - capture_time``.
    """

    seq: int
    capture_time: float
    stream_s: float  # where the hop's newest audio starts, in seconds since the input began
    model: str
    channels: list[int]
    embeddings: np.ndarray  # [C, dim] float32, a copy
    matches: list[list[dict[str, Any]]]
    levels: list[tuple[float, float, bool]]  # (rms_db, peak_db, onset) per channel
    centre: np.ndarray | None = None  # library mean vector (the similarity matrix's centre)
    # Where the embeddings' window ends (stream s, at or before the hop's newest audio).
    window_end_s: float | None = None


@dataclass
class StatusItem:
    """A status snapshot to publish."""

    status: dict[str, Any]
    capture_time: float


@dataclass
class EndOfStream:
    """The input ended (file without --loop); publishers flush and exit."""


Item = HopResult | StatusItem | EndOfStream | HitResult | MixdownResult


@dataclass
class Command:
    """A control request for the worker, answered through ``reply``."""

    cmd: str
    args: dict[str, Any]
    reply: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def answer(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.done.set()


@dataclass
class _Capture:
    command: Command
    channels: list[int]  # indexes into the worker's channel list
    audio: np.ndarray  # [n, len(channels)] float32, filled as audio arrives
    filled: int = 0


class _IndexBuilder(threading.Thread):
    """Builds the hit indexes of reloaded libraries away from the analysis thread.

    It reads only its job queue (:class:`~emberd.library.hitindex.IndexSource` items, or
    ``None`` to stop) and writes only :attr:`results` (``(key, index)``, ``index`` None when
    the build raised: logged and counted in ``swallowed_errors``). Of the jobs queued when
    it looks, it builds only the newest (a later reload replaced the others) and none when
    a stop is among them; what a result is for is decided by :class:`HitIndexReloads`.
    """

    def __init__(self) -> None:
        super().__init__(name="emberd-hit-index", daemon=True)
        self._jobs: queue.Queue[IndexSource | None] = queue.Queue()
        self.results: queue.Queue[tuple[bytes, HitIndex | None]] = queue.Queue()

    def submit(self, source: IndexSource) -> None:
        self._jobs.put(source)

    def stop(self) -> None:
        """Stop before any queued job (a running build still finishes)."""
        self._jobs.put(None)

    def run(self) -> None:
        from emberd.library.hitindex import HitIndex

        while True:
            jobs = [self._jobs.get()]
            while True:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            if any(job is None for job in jobs):
                return
            source = jobs[-1]
            assert source is not None
            index: HitIndex | None = None
            try:
                index = HitIndex.build(source)
            except Exception:  # a broken library must not end the daemon: old ladder stays
                swallowed("hit index build")
            self.results.put((source.key, index))


class HitIndexReloads:
    """The hit index that answers after each ``reload``: kept, or built on a builder thread.

    Used by the analysis thread alone (see the module docstring's thread map); the builder
    thread (:class:`_IndexBuilder`) only computes indexes and posts them, and :meth:`take`
    decides here whether one is still wanted, so the index, the build count and the ladder
    handed to the hit thread change on one thread, in reload order.

    Parameters
    ----------
    index : HitIndex
        The index built at start (counted as the first build).
    """

    def __init__(self, index: HitIndex) -> None:
        self.index = index  # the index of the latest ladder handed to the hit thread
        self.builds = 1  # indexes built (status hit_index_builds)
        self._pending: tuple[bytes, dict[int, Any]] | None = None  # wanted key, its files
        self._builder: _IndexBuilder | None = None

    @property
    def building(self) -> bool:
        """Whether an index is being built for the latest reload."""
        return self._pending is not None

    def reload(self, source: IndexSource, files: dict[int, Any]) -> str:
        """``kept``: ``source`` has :attr:`index`'s content key (the same files, paths and
        snippets), whose class model, decoded sounds and descriptors a new ladder reuses at
        once. ``building``: they changed, and :meth:`take` gives the new index later."""
        if source.key == self.index.content_key:
            self._pending = None  # a build still running for another key is dropped
            return "kept"
        if self._pending is None or self._pending[0] != source.key:
            if self._builder is None:
                self._builder = _IndexBuilder()
                self._builder.start()
            self._builder.submit(source)
        self._pending = (source.key, files)
        return "building"

    def take(self, wait_s: float = 0.0) -> tuple[HitIndex, dict[int, Any]] | None:
        """The index built for the latest reload and that library's files, once; else None.

        Results a later reload made stale are dropped; a failed build ends the wait (the
        next reload builds again). ``wait_s`` > 0 waits up to that long for the next result
        while one is pending (tests; the analysis thread never waits).
        """
        got = None
        block = wait_s > 0.0 and self._pending is not None
        while self._builder is not None:
            try:
                key, index = self._builder.results.get(block, wait_s if block else None)
            except queue.Empty:
                break
            block = False
            if self._pending is None or key != self._pending[0]:
                continue  # a later reload wants another library
            files = self._pending[1]
            self._pending = None
            if index is not None:
                self.index, got = index, (index, files)
                self.builds += 1
        return got

    def stop(self, join_s: float) -> None:
        """Drop what is pending and stop the builder: queued jobs are never built, and a
        running one's result is never taken."""
        self._pending = None
        if self._builder is not None:
            self._builder.stop()
            self._builder.join(join_s)


class Worker(threading.Thread):
    """The analysis thread (see module docstring).

    Parameters
    ----------
    source : LiveInput
        Has ``ring`` (SampleRing), ``clock`` (BlockClock), ``sr``, ``finished``.
    engine : Engine
        Front ends + hop encoder.
    open_library : callable
        ``open_library() -> library``; called in this thread (SQLite affinity).
    channel_index : list of int
        Ring columns to analyse; their numbers are the published channel numbers.
        ``[-1]`` analyses the mix of all columns, published as channel 0.
    handoffs : list
        What items go to (the daemon's :class:`~emberd.daemon.outputs.Outputs`).
    stats : DaemonStats
    k : int
        Matches per hop.
    realtime : bool
        Skip hops when late (live input); ``False`` (fast file input) computes every hop.
    hit_detection : bool
        Run the live hit ladder (:mod:`emberd.daemon.hits`) on every block.
    """

    def __init__(
        self,
        *,
        source: Any,
        engine: Engine,
        open_library: Callable[[], Any],
        channel_index: list[int],
        handoffs: list[Any],
        stats: DaemonStats,
        k: int,
        realtime: bool,
        hit_detection: bool = True,
    ) -> None:
        super().__init__(name="emberd-worker", daemon=True)
        self.source = source
        self.engine = engine
        self._open_library = open_library
        self.library: Any = None
        self.channel_index = list(channel_index)
        self.channels = list(channel_index)
        # The hit thread puts into the same outputs: one lock serialises every put.
        lock = threading.Lock()
        self.handoffs = [SerialPut(h, lock) for h in handoffs]
        self.stats = stats
        self.k = k
        self.realtime = realtime
        self.paused = False
        self.commands: queue.Queue[Command] = queue.Queue()
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        n = len(channel_index)
        self._scratch = np.zeros((READ_CHUNK_FRAMES, source.ring.channels), np.float32)
        self._chan = np.zeros((n, READ_CHUNK_FRAMES), np.float32)
        self._sumsq = np.zeros(n, np.float64)
        self._peak = np.zeros(n, np.float64)
        self._count = 0  # samples accumulated into _sumsq/_peak since the last hop
        self._onsets = [OnsetDetector() for _ in range(n)]
        self._read_pos = 0  # samples consumed from the ring
        self._seq = 0
        self._next_status = 0.0
        self._capture: _Capture | None = None
        self._audio_end = sys.maxsize  # ring position where the input ended (end of input)
        self.hits: HitLadder | None = None  # built in run(), with the library
        self._reloads: HitIndexReloads | None = None  # the hit index a reload keeps or builds
        self._reload_ms = 0.0  # the latest reload's time on this thread (status)
        self._hit_thread: HitThread | None = None  # runs self.hits beside this thread
        self.hit_detection = hit_detection
        self._gate = LevelGate(n, source.sr)
        self.mixdown = MixdownAnalyser(sr=source.sr, channels=self.channels)
        self._centre: np.ndarray | None = None  # library mean vector (similarity centring)
        self._by_hop = False  # the current drain runs hop by hop (see _read)
        # The last search: an incremental encoder returns the same embedding object
        # until its next step, and the same embedding, k and library give the same matches.
        self._searched: tuple[Any, ...] | None = None
        self._reset_schedule()

    # ------------------------------------------------------------------ control API

    def stop(self) -> None:
        """Ask the thread to end after the current iteration."""
        self._stop_event.set()

    def submit(self, cmd: str, args: dict[str, Any]) -> Command:
        """Queue a command; wait on ``command.done`` for the reply."""
        command = Command(cmd, args)
        self.commands.put(command)
        return command

    # ------------------------------------------------------------------ thread

    def run(self) -> None:
        try:
            self.library = self._open_library()
            self.hits = self._hit_ladder(self.library)
            if self.hits is not None:
                self._hit_thread = HitThread(
                    self.hits, self.handoffs, source=self.source,
                    channel_index=self.channel_index, realtime=self.realtime,
                    paused=lambda: self.paused,
                )  # fmt: skip
                self._hit_thread.start()
            if self.realtime:
                self._encoder_thread(True)
        except BaseException as exc:  # reported by the app as a one-line error
            self.error = exc
            self.ready.set()
            self.done.set()
            return
        self._load_class_data()
        self.ready.set()
        try:
            self._loop()
        except BaseException as exc:  # a bug: keep the message, end the daemon cleanly
            log.exception("worker failed")
            self.error = exc
        finally:
            try:
                self._encoder_thread(False)
            except EmberdError as exc:
                log.warning("%s", exc)
            if self._reloads is not None:  # no ladder is handed over after this
                self._reloads.stop(JOIN_HITS_S)
            if self._hit_thread is not None:
                self._hit_thread.stop()
                self._hit_thread.join(JOIN_HITS_S)
            for h in self.handoffs:
                h.put(EndOfStream())
            self._fail_pending("daemon stopping")
            self.done.set()

    def _loop(self) -> None:
        ring = self.source.ring
        while not self._stop_event.is_set():
            self._apply_commands()
            now = time.time()
            if now >= self._next_status:
                self._publish_status(now)
            n = self._read()
            if n:
                # Drain everything that arrived (the front end is cheap), then analyse:
                # a slow hop never leaves a backlog that later hops inherit (_run_hops
                # skips to the newest). Hop by hop (see _read), each hop is analysed as
                # soon as its audio is in, with its own levels, and commands and status
                # are served between hops even while a backlog is caught up.
                while n:
                    self._consume(n)
                    if self._by_hop:
                        break  # one hop's audio: analyse it, then commands and status again
                    n = self._read()
                self._run_hops()
                continue
            if self.source.finished and ring.available == 0:
                self._end_of_input()
                return
            watch = getattr(self.source, "watch", None)  # device input: stall watchdog
            if watch is not None and watch(time.monotonic()):
                self._publish_status(now)  # report a stall or a reconnection at once
            self._wait()

    def _wait(self) -> None:
        """Sleep until the block completing the next hop should have arrived.

        The producer cannot signal (no locks in the callback), so the worker predicts:
        the latest block arrived at ``t`` ending at ``pos``; the sample the next hop
        needs arrives ``(need - pos) / sr`` later. Sleeping to exactly then and polling
        briefly after keeps the wake-up delay near :data:`WAIT_POLL_S`, not a poll period.
        """
        if not self.realtime:
            time.sleep(WAIT_POLL_S)
            return
        pos, t_arrived = self.source.arrivals.last_arrival()
        need = self._hop_sample_end(self._next_hop_frame)
        due = t_arrived + max(0, need - pos) / self.source.sr
        delay = due - time.perf_counter()
        time.sleep(min(WAIT_MAX_S, delay) if delay > WAIT_POLL_S else WAIT_POLL_S)

    # ------------------------------------------------------------------ audio

    def _read(self) -> int:
        """Move the next audio from the ring into ``_scratch``; return the frames read.

        Hop by hop, a read stops at the end of the next hop's audio. That is when the
        input is a fast file (every hop is analysed), or live when the encoder is
        incremental (a hop without a new step is only a search and levels, and skipping
        it would save no encoder work: the streaming encoder sees every frame anyway)
        and the backlog is at most MAX_CATCH_UP_S: after a step, the hops that arrived
        meanwhile are caught up. A longer backlog means the encoder does not keep up:
        then everything is drained and only the newest hop is analysed (the others are
        counted in ``skipped_hops``).
        """
        ring = self.source.ring
        self._by_hop = not self.realtime or (
            getattr(self.engine.encoder, "incremental", False)
            and ring.available <= min(MAX_CATCH_UP_S * self.source.sr, ring.capacity // 2)
        )
        limit = READ_CHUNK_FRAMES
        if self._by_hop:
            due = self._hop_sample_end(self._next_hop_frame) - self._read_pos
            limit = max(1, min(limit, due))
        return int(ring.read(self._scratch[:limit]))

    def _consume(self, n: int, *, padding: bool = False) -> None:
        """Feed ``n`` samples of ``_scratch`` to every analyser (``padding``: the silence
        after the end of a file, see :meth:`_end_of_input`, never measured as loudness)."""
        fronts = self.engine.fronts
        for c, col in enumerate(self.channel_index):
            x = self._chan[c, :n]
            if col < 0:  # --channels mix: the mean of every input channel
                np.mean(self._scratch[:n], axis=1, out=x)
            else:
                np.copyto(x, self._scratch[:n, col])
            self._sumsq[c] += float(np.dot(x, x))
            self._peak[c] = max(self._peak[c], float(np.max(np.abs(x))))
            fronts[c].push(x)
            self._gate.push(c, x)
        self._count += n
        t_first = self.source.clock.time_of(self._read_pos)
        updates = [] if padding else self.mixdown.push(self._chan[:, :n], t_first)
        for update in updates:  # a few per second
            for h in self.handoffs:
                h.put(update)
        self._read_pos += n
        if self._capture is not None:
            self._record(n)

    def _hit_ladder(self, library: Any) -> HitLadder | None:
        """The hit ladder over ``library``'s hit index, built in this thread (at start)."""
        if not self.hit_detection:
            return None
        from emberd.library.hitindex import HitIndex, IndexSource

        index = HitIndex.build(IndexSource.read(library))
        self._reloads = HitIndexReloads(index)
        log.info("hits: %d library sounds in the hit index", len(index))
        return self._ladder(index, library.files())

    def _ladder(self, index: Any, files: dict[int, Any]) -> HitLadder:
        return HitLadder(index, files, sr=self.source.sr, channels=self.channels,
                         model=self.engine.encoder.model,
                         time_of=self.source.clock.time_of)  # fmt: skip

    def _reload_hits(self, library: Any) -> str:
        """Give the hit thread a ladder over the reloaded ``library``; how (reload reply).

        ``kept``: the same files, paths and snippets as the current index, whose ladder is
        handed over at once. ``building``: they changed, and the index is built on the
        builder thread (0.4-0.8 CPU-s for 62 files, 3.3 s for 663: the hops, analysed here,
        must not wait for it); :meth:`_take_built` hands its ladder over, on this thread,
        when it is done (:class:`HitIndexReloads`). Only the snippets are read here (this
        thread's SQLite connection).
        """
        from emberd.library.hitindex import IndexSource

        assert self._reloads is not None
        files = library.files()
        how = self._reloads.reload(IndexSource.read(library), files)
        if how == "kept":
            self._hand_ladder(self._ladder(self._reloads.index, files))
        return how

    def _take_built(self) -> None:
        """Hand the hit thread the ladder of an index the builder finished, if still wanted."""
        built = self._reloads.take() if self._reloads is not None else None
        if built is not None:
            index, files = built
            log.info("hits: %d library sounds in the rebuilt hit index", len(index))
            self._hand_ladder(self._ladder(index, files))

    def _hand_ladder(self, ladder: HitLadder) -> None:
        self.hits = ladder
        if self._hit_thread is not None:
            self._hit_thread.replace(ladder)

    def _run_hops(self) -> None:
        """Analyse the hops whose frames are complete (live input: only the newest)."""
        total = self.engine.fronts[0].frames.total
        if total < self._next_hop_frame:
            return
        hop = self.engine.hop_frames
        pending = (total - self._next_hop_frame) // hop + 1
        if self.realtime and pending > 1:  # late: analyse only the newest hop
            self.stats.skipped_hops += pending - 1
            self._next_hop_frame += (pending - 1) * hop
            pending = 1
        for _ in range(pending):
            self._hop(self._next_hop_frame)
            self._next_hop_frame += hop

    def _end_of_input(self) -> None:
        """Analyse the tail as the library does, then tell the publishers.

        The library embeds a sound shorter than a window zero-padded after it (silence),
        so the end of the input is followed by one window of digital silence, hopped
        through like live audio without skipping: a one-shot played once gets the
        window that starts at its onset, exactly as it was indexed.
        """
        if self._capture is not None:  # the recording ends with the real audio
            self._finish_capture()
        self._audio_end = self._read_pos
        self._encoder_thread(False)  # the flush is stepped here: every window, in order
        pad = self.engine.encoder.window_frames * self.engine.config.hop_length
        self._scratch[:] = 0.0
        while pad > 0:
            n = min(pad, READ_CHUNK_FRAMES)
            self._consume(n, padding=True)
            pad -= n
            total = self.engine.fronts[0].frames.total
            while self._next_hop_frame <= total:
                self._hop(self._next_hop_frame)
                self._next_hop_frame += self.engine.hop_frames
        if self._hit_thread is not None:
            self._hit_thread.flush()  # every hit answered before the end of stream
        self._publish_status(time.time())

    # ------------------------------------------------------------------ hop

    def _reset_schedule(self) -> None:
        """Start hop counting on the current engine's front ends (new after set_model)."""
        self._next_hop_frame = self.engine.hop_frames + self.engine.fronts[0].frames.total
        # Ring position of the engine's frame 0: fresh front ends start at the next read.
        self._origin = getattr(self, "_read_pos", 0) - self.engine.fronts[0].samples_in

    def _encoder_thread(self, on: bool) -> None:
        """Run the encoder's steps on its own thread (live) or, off, finish them and step
        in this thread again; encoders without one (windowed) always run here."""
        name = "start_background" if on else "stop_background"
        method = getattr(self.engine.encoder, name, None)
        if method is not None:
            method()

    def _hop_sample_end(self, end_frame: int) -> int:
        """Sample position (exclusive) of the newest sample frame ``end_frame - 1`` needs."""
        cfg = self.engine.config
        last = (end_frame - 1) * cfg.hop_length
        return self._origin + last + (cfg.n_fft // 2 if cfg.center else cfg.n_fft)

    def _hop(self, end_frame: int) -> None:
        cfg = self.engine.config
        sample_end = min(self._hop_sample_end(end_frame), self._read_pos)
        hop_samples = self.engine.hop_frames * cfg.hop_length
        # Silence after the end of the input (see _end_of_input) was never captured.
        capture_time = self.source.clock.time_of(min(sample_end - hop_samples, self._audio_end))
        levels = self._levels()
        if self.paused:
            return
        t0 = time.perf_counter()
        enc = self.engine.encoder
        emb = enc.embed_hop(self.engine.fronts, end_frame)
        t1 = time.perf_counter()
        if emb is None:  # a streaming encoder still filling its context
            return
        steps = getattr(enc, "step_ms", None)
        if getattr(enc, "background", False) and steps is not None:
            while steps:  # the encoder thread's step times (this hop only handed frames)
                self.stats.inference_ms.add(steps.popleft())
        else:
            self.stats.inference_ms.add((t1 - t0) * 1000.0)
        emb_end = getattr(enc, "embedding_end", None)
        window_end = min(sample_end, sample_end if emb_end is None
                         else self._hop_sample_end(emb_end))
        key = (emb, self.library, self.engine)
        last = self._searched
        if last is not None and last[1] == self.k and all(map(operator.is_, key, last[0])):
            matches = [[dict(m) for m in ms] for ms in last[2]]
        else:
            matches = self._search(emb, self.k)
            self._searched = (key, self.k, [[dict(m) for m in ms] for ms in matches])
            self.mixdown.on_hop(emb)
        window = self.engine.encoder.window_frames * cfg.hop_length
        ladder = self._answering_ladder()
        for c in range(len(self.channels)):  # a silent window names nothing
            floor = ladder.floor_db(c) if ladder is not None else -120.0
            # the embedding's own window, which may end steps before this hop
            if not self._gate.heard(c, window_end - window, window_end, floor):
                matches[c] = []
        top = next((m[0] for m in matches if m), None)
        if top is not None:
            self.stats.matched_hops += 1
            self.stats.last_top1 = str(top.get("name", ""))
        self.stats.hop_work_ms.add((time.perf_counter() - t0) * 1000.0)
        result = HopResult(
            seq=self._seq,
            capture_time=capture_time,
            stream_s=(sample_end - hop_samples) / cfg.sr,
            model=self.engine.encoder.model,
            channels=self.channels,
            embeddings=np.array(emb, dtype=np.float32, copy=True),
            window_end_s=window_end / cfg.sr,
            matches=matches,
            levels=levels,
            centre=self._centre,
        )  # tags, level and similarity messages: emberd.daemon.analyzers
        self._seq += 1
        self.stats.hops += 1
        for h in self.handoffs:
            h.put(result)

    def _levels(self) -> list[tuple[float, float, bool]]:
        out = []
        for c in range(len(self.channels)):
            if self._count:
                rms = math.sqrt(self._sumsq[c] / self._count)
                rms_db = 20.0 * math.log10(rms) if rms > 0 else -120.0
                peak_db = 20.0 * math.log10(self._peak[c]) if self._peak[c] > 0 else -120.0
            else:
                rms_db, peak_db = level_db(np.zeros(0, np.float32))
            rms_db, peak_db = max(rms_db, -120.0), max(peak_db, -120.0)
            out.append((rms_db, peak_db, self._onsets[c].push(rms_db)))
        self._sumsq[:] = 0.0
        self._peak[:] = 0.0
        self._count = 0
        return out

    def _search(self, emb: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        try:
            return [list(m) for m in self.library.search(emb, k, model=self.engine.encoder.model)]
        except EmberdError as exc:  # e.g. library not embedded with this model: say so once
            if not getattr(self, "_search_warned", False):
                log.warning("library search failed: %s", exc)
                self._search_warned = True
            return [[] for _ in self.channels]

    # ------------------------------------------------------------------ status

    def _publish_status(self, now: float) -> None:
        self._next_status = now + STATUS_PERIOD_S
        ring = self.source.ring
        self.stats.overflows = int(ring.overflow_frames) + int(getattr(self.source, "overflows", 0))
        self.stats.nonfinite_samples = int(ring.nonfinite_samples)
        self.stats.add_block_intervals(self.source.clock.new_intervals())
        self.stats.info.update(self.describe())
        item = StatusItem(self.stats.snapshot(), now)
        for h in self.handoffs:
            h.put(item)

    def describe(self) -> dict[str, Any]:
        """The worker's part of the status object."""
        enc = self.engine.encoder
        cfg = self.engine.config
        every = max(getattr(enc, "step_frames", 1), self.engine.hop_frames)  # new embeddings
        return {
            "model": enc.model,
            "provider": enc.provider,
            "encoder": enc.kind,
            "encoder_restarts": int(getattr(enc, "restarts", 0)),  # streaming: jumps when late
            "embedding_every_ms": round(every * cfg.hop_length / cfg.sr * 1000.0, 3),
            "dim": enc.dim,
            "channels": len(self.channels),
            "channel_numbers": list(self.channels),
            "sr": cfg.sr,
            "hop_ms": round(self.engine.hop_frames * cfg.hop_length / cfg.sr * 1000.0, 3),
            "window_ms": round(enc.window_frames * cfg.hop_length / cfg.sr * 1000.0, 3),
            "k": self.k,
            "paused": self.paused,
            "reload_ms": round(self._reload_ms, 1),
            **({"hit_index_builds": self._reloads.builds} if self._reloads is not None else {}),
            **(ladder.describe() if (ladder := self._answering_ladder()) is not None else {}),
            **(self._hit_thread.describe() if self._hit_thread is not None else {}),
            **(self.source.watchdog.describe() if hasattr(self.source, "watchdog") else {}),
        }

    # ------------------------------------------------------------------ commands

    def _apply_commands(self) -> None:
        self._take_built()
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                reply = self._run_command(command)
            except EmberdError as exc:
                reply = {"ok": False, "error": str(exc)}
            if reply is not None:
                command.answer(reply)

    def _answering_ladder(self) -> HitLadder | None:
        """The ladder answering hits now: after a reload the hit thread keeps the old one
        until it has finished its open hits and handed its counters on (``follow``), so
        status and the silence gate read the thread's, not the one just built."""
        if self._hit_thread is not None:
            return self._hit_thread.ladder
        return self.hits

    def _run_command(self, command: Command) -> dict[str, Any] | None:
        args = command.args
        if command.cmd in ("pause", "resume"):
            self.paused = command.cmd == "pause"
            return {"ok": True, "paused": self.paused}
        if command.cmd == "set_k":
            self.k = int(args["k"])
            return {"ok": True, "k": self.k}
        if command.cmd == "reload":
            t0 = time.perf_counter()
            library = self._open_library()
            hit_index = self._reload_hits(library) if self.hit_detection else None
            old, self.library = self.library, library
            if hasattr(old, "close"):
                old.close()
            self._search_warned = False
            self._load_class_data()
            files = len(library.files()) if hasattr(library, "files") else None
            self._reload_ms = (time.perf_counter() - t0) * 1000.0
            return {"ok": True, "library": str(getattr(library, "path", "")), "files": files,
                    **({"hit_index": hit_index} if hit_index else {})}  # fmt: skip
        if command.cmd == "set_model":
            return self._swap_engine(args["engine"])
        if command.cmd == "capture":
            if self._capture is not None:
                return {"ok": False, "error": "capture: one is already running"}
            chans = args["channels"]
            n = max(1, round(float(args["seconds"]) * self.source.sr))
            self._capture = _Capture(command, chans, np.zeros((n, len(chans)), np.float32))
            return None  # answered when the capture ends
        return {"ok": False, "error": f"unknown command {command.cmd!r}"}

    def _swap_engine(self, engine: Engine) -> dict[str, Any]:
        probe = np.zeros((1, engine.encoder.dim), np.float32)
        probe[0, 0] = 1.0
        self.library.search(probe, 1, model=engine.encoder.model)  # EmberdError if not indexed
        if self._capture is not None:
            self._capture.command.answer({"ok": False, "error": "capture: model changed"})
            self._capture = None
        self._encoder_thread(False)
        self.engine = engine
        if self.realtime:
            self._encoder_thread(True)
        self._load_class_data()
        self._reset_schedule()
        self._search_warned = False
        return {"ok": True, "model": engine.encoder.model, "provider": engine.encoder.provider}

    def _load_class_data(self) -> None:
        """The library's class head and mean vector for the current model (mix-down view)."""
        self.mixdown.head, self._centre = class_data(self.library, self.engine.encoder.model)
        self.mixdown.model = self.engine.encoder.model
        self.mixdown.channels = list(self.channels)  # the app renumbers a mix as channel 0

    def _record(self, n: int) -> None:
        """Copy the newest ``n`` samples of the captured channels; answer when full."""
        cap = self._capture
        assert cap is not None
        take = min(n, cap.audio.shape[0] - cap.filled)
        for i, c in enumerate(cap.channels):
            cap.audio[cap.filled : cap.filled + take, i] = self._chan[c, n - take : n]
        cap.filled += take
        if cap.filled == cap.audio.shape[0]:
            self._finish_capture()

    def _finish_capture(self) -> None:
        """Hand the recording to the control thread, which searches the library with it."""
        cap = self._capture
        assert cap is not None
        self._capture = None
        if cap.filled == 0:
            cap.command.answer({"ok": False, "error": "capture: no audio arrived"})
            return
        cap.command.answer({
            "ok": True,
            "audio": cap.audio[: cap.filled],
            "sr": self.source.sr,
            "channels": [self.channels[c] for c in cap.channels],
            "model": self.engine.encoder.model,
            "k": self.k,
        })  # fmt: skip

    def _fail_pending(self, why: str) -> None:
        if self._capture is not None:
            self._capture.command.answer({"ok": False, "error": f"capture: {why}"})
            self._capture = None
        while True:
            try:
                self.commands.get_nowait().answer({"ok": False, "error": why})
            except queue.Empty:
                return
