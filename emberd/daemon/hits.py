"""Live hits: name the sample of every hit, first from its attack, then better as it sounds.

The worker hands every channel's samples to :class:`HitLadder` (through
:class:`HitThread`) as they leave the ring (one 256-sample callback block at a time when
live); they are converted to the library snippets' rate (:mod:`emberd.dsp.decimate`).
Per channel an :class:`~emberd.dsp.onset.OnsetDetector` finds onsets at block resolution
(with the identified sounds still ringing subtracted first); each onset
starts a hit, and each hit climbs a decision ladder (delayed decision-making), each
answer handed to the publishers the moment it exists:

1. ``provisional`` -- as soon as PROVISIONAL_S of the sound (5.8 ms) has arrived:
   candidates from the library's attack-descriptor index
   (:class:`~emberd.library.hitindex.HitIndex`), ranked by correlating the first
   milliseconds of the waveform with each candidate's stored onset snippet.
2. ``refined`` -- at REFINED_S (50 and 150 ms): candidates from the early-spectrogram
   index plus the previous stage's best, ranked by onset-aligned waveform correlation
   over everything heard so far.
3. ``final`` -- at FINAL_S (the 245 ms a snippet covers after the onset), or at once
   when the next hit on the channel starts: the same with all of the sound, and the
   instrument class from the index's :class:`~emberd.library.hitindex.ClassModel`.

Refined and final stages compare only the part of the window where the hit stands
AUDIBLE_MARGIN_DB above the noise floor: a quiet hit's decay sunk in the noise adds
nothing but noise (and let a velocity layer with another decay win).

Overlaps: every answered hit leaves a *sounding* entry (its file, gain and placement);
the next hit's audio has the predicted tails of the sounds still ringing subtracted
before it is described and correlated, and a hit never looks past the next onset.

No answer is an answer: a hit is only a hit when the detector saw a rise clear of the
noise floor (silence and the floor give none). The best candidate is ``exact`` only
when the calibrated probability that it is the very file played reaches
EXACT_MIN_PROBABILITY, its correlation EXACT_MIN_RHO and its margin EXACT_MIN_MARGIN (a
claim, once made, holds while nothing else is sure); otherwise the answer is ``similar``:
the best-correlated file when it correlates SIMILAR_TRUST_RHO or is of the voted
instrument class, else the best-correlated file of the voted class (the vote: the
best-correlated candidates, or at the final stage the class model; where the final
waveform evidence is weaker than SIMILAR_TRUST_RHO, the file a refined stage correlated
STAGE_TRUST_RHO with stays the answer: more sound under an unexplained tail lowered it). Both
``confidence`` values come from logistic models (:data:`EXACT_WEIGHTS`,
:data:`CLASS_WEIGHTS`) fitted by ``bench/fit_hit_confidence.py`` on tuning kits and
measured there on held-out kits.

Threads: the ladder runs in :class:`HitThread` beside the worker, reading the ring
itself (a second reader), so an answer never waits for a hop's encoder;
:class:`HitResult` items are read-only once built. The worker reads
:meth:`HitLadder.floor_db` (its level gate) and :meth:`HitLadder.describe` (plain numbers).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emberd.dsp.decimate import ToRate
from emberd.dsp.onset import FRAME_S, LOOKBACK_S, RISE_SPAN_S, OnsetDetector
from emberd.library import hitindex as hx
from emberd.library.waveform import PRE_ROLL_SAMPLES, SNIPPET_SAMPLES, onset_sample

log = logging.getLogger(__name__)

PROVISIONAL_S = 0.0058  # sound after the onset the provisional answer waits for (128 samples)
PROVISIONAL_MAX_S = 0.0116  # ... and uses at most (a whole block if it is there)
REFINED_S = (0.05, 0.15)  # the refined answers
FINAL_S = (SNIPPET_SAMPLES - PRE_ROLL_SAMPLES) / hx.WAVE_SR  # 245 ms: all a snippet holds
HISTORY_S = 3.0  # audio kept per channel: the encoder's 2.32-s window (the level gate)
PROVISIONAL_CANDIDATES = 64  # attack-descriptor neighbours correlated at the first stage
REFINED_CANDIDATES = 32  # early-descriptor neighbours correlated at later stages
CARRIED_CANDIDATES = 8  # best of the previous stage kept as candidates
VOTE_CANDIDATES = 8  # best-correlated candidates voting for the instrument class (early)
SIMILAR_TRUST_RHO = 0.5  # a near answer correlating this well is the answer, not the vote
STAGE_TRUST_RHO = 0.6  # a refined stage's file correlating this well stays the final answer
# when the final waveform evidence falls under SIMILAR_TRUST_RHO (chosen on the tuning split)
AUDIBLE_FRAME_S = 0.0116  # frames (256 samples) in which a hit is heard above the floor
AUDIBLE_MARGIN_DB = 10.0  # ... by this much (the floor is the low end of the noise's frames)
ANCHOR_BEFORE_S = 0.002  # later stages look for the library's onset from this before the
ANCHOR_SPAN_S = 0.05  # ... detected one, over this much of the hit (the loudest part of a
ANCHOR_MAX_SHIFT_S = 0.03  # ... drum is in it), at most this far after it
SOUNDING_MAX = 4  # previous sounds per channel whose tails are subtracted
TAIL_PROBE = 220  # samples at a snippet's end (10 ms) that tell how loud its tail goes on
TAIL_RANGE_DB = 30.0  # a tail going on within this of a hit's peak limits the hit's window
SUBTRACT_MIN_RHO = 0.9  # ... when identified this well (a worse fit would add, not remove)
CHECK_SAMPLES = 64  # a prediction past its snippet is checked against the audio this finely
CHECK_STOPPED = 0.5  # ... and ends where the audio's energy falls under this share of it,
CHECK_EXPLAINED = 0.5  # ... or where the audio's projection on it falls under this share of
CHECK_MEMORY_SAMPLES = 1024  # ... its energy, both remembered over this long (exponential)
SAME_RECORDING = 0.999  # snippets this correlated are one recording at two levels
MAX_MATCHES = 3  # matches per hit message: the answer and two alternatives
EXACT_MIN_PROBABILITY = 0.98  # P(exact) to claim the very file: the highest P a tuning
# held-out-kit hit reached (0.731) plus EXACT_SAFETY in bench/fit_hit_confidence.py, and
EXACT_MIN_RHO = 0.95  # ... the waveform must correlate this well (noise, a tail: >= 0.97)
EXACT_MIN_MARGIN = 0.02  # ... and beat every other recording by this much
TAP_CHUNK_FRAMES = 2048  # samples per channel the hit thread reads from the ring at most
TAP_POLL_S = 0.0005  # sleep while the next block is due but has not arrived yet
TAP_LATE_MAX_S = 0.002  # longest sleep while a due block is late (a third of a block)
TAP_WAIT_MAX_S = 0.02  # longest sleep between reads (bounds the reply to flush/stop)
FLUSH_STALL_S = 10.0  # end of input: the flush gives up after this long without progress
GATE_MARGIN_DB = 12.0  # a window with no frame this far above the noise floor is silent
GATE_ABSOLUTE_DB = -70.0  # dBFS RMS: a window quieter than this everywhere is silent
GATE_FRAME_S = 0.0058  # frames whose RMS the level gate compares
LEVEL_HISTORY_S = 120.0  # frame levels kept: fast file input may run ahead of the hops

#: Logistic models ``P = 1 / (1 + exp(-(bias + sum w * feature)))``, fitted by
#: bench/fit_hit_confidence.py on the tuning kits (2855 answers; see its docstring).
#: Features: ``nines`` (-log10(1 - rho) of the best waveform correlation, capped at 4),
#: ``margin`` (rho over the best other recording), ``log_window`` (log2(samples / 128)).
EXACT_WEIGHTS: dict[str, float] = {
    "bias": -5.1125, "nines": 3.4447, "margin": 6.9511, "log_window": 0.4021,
}  # fmt: skip
#: ``share`` (the voted class's share of the vote; at the final stage the class model's
#: probability), ``rho`` of its best candidate.
CLASS_WEIGHTS: dict[str, float] = {
    "bias": -5.5948, "share": 2.9867, "rho": 5.3435, "log_window": 0.3571,
}  # fmt: skip


def is_exact(p_exact: float, rho: float, margin: float) -> bool:
    """The rule for an ``exact`` claim (see EXACT_MIN_PROBABILITY and what follows it)."""
    return p_exact >= EXACT_MIN_PROBABILITY and rho >= EXACT_MIN_RHO and margin >= EXACT_MIN_MARGIN


def _nines(rho: float) -> float:
    """-log10(1 - rho): 0.9 -> 1, 0.99 -> 2 (the evidence is in how close to 1 rho is)."""
    return -math.log10(max(1.0 - rho, 1e-4))


def _logistic(weights: dict[str, float], **features: float) -> float:
    z = weights.get("bias", 0.0) + sum(weights.get(k, 0.0) * v for k, v in features.items())
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def near_answer(
    stage: str,
    rows: np.ndarray,
    rho: np.ndarray,
    best: int,
    voted: int,
    classes: Sequence[str | None],
    trusted: int | None,
) -> tuple[int, int | None]:
    """The ``similar`` answer of a stage that claims no exact file.

    Parameters
    ----------
    stage : str
        ``provisional``, ``refined`` or ``final``.
    rows : int array
        Candidate rows of the hit index.
    rho : float array
        Their waveform correlations with the hit.
    best, voted : int
        Positions in ``rows`` of the best-correlated candidate and of the vote's (at the
        final stage: the class model's) candidate.
    classes : sequence
        Instrument class (or None) of every index row.
    trusted : int or None
        The row an earlier refined stage correlated STAGE_TRUST_RHO with.

    Returns
    -------
    answer : int
        Position in ``rows`` of the answer: the best-correlated file when it is of the
        voted class or correlates SIMILAR_TRUST_RHO (SUBTRACT_MIN_RHO for a file of no
        known class), else the vote's; at the final stage, where that would be the vote,
        ``trusted`` stays the answer (more sound under an unexplained tail made the
        waveform evidence weaker, not the file wrong).
    trusted : int or None
        The row later stages trust from now on.
    """
    same = classes[int(rows[best])] == classes[int(rows[voted])]
    # A near file of no known instrument is the answer only when it correlates as well
    # as a sound we would subtract (else the instrument vote names one).
    known_class = classes[int(rows[best])] is not None
    trust = float(rho[best]) >= (SIMILAR_TRUST_RHO if known_class else SUBTRACT_MIN_RHO)
    answer = best if same or trust else voted
    if stage == "refined" and known_class and float(rho[best]) >= STAGE_TRUST_RHO:
        trusted = int(rows[best])
    elif stage == "final" and not (same or trust) and trusted in rows.tolist():
        answer = int(np.nonzero(rows == trusted)[0][0])
    return answer, trusted


class SerialPut:
    """``put`` into ``target`` under a lock shared by every thread that feeds it (the
    worker and the hit thread both hand items to the same outputs)."""

    def __init__(self, target: Any, lock: threading.Lock) -> None:
        self.target = target
        self._lock = lock

    def put(self, item: Any) -> None:
        with self._lock:
            self.target.put(item)


class HitThread(threading.Thread):
    """Runs the ladder beside the worker, reading the audio from the ring itself.

    The worker spends most of a hop inside the encoder; a hit thread fed by it waited for
    the hop to end before it saw the next block (the provisional answer's p90 tail). This
    thread is the ring's *tap* (:meth:`~emberd.dsp.ring.SampleRing.peek`, its own read
    position): it wakes when the next block is due, reads whatever arrived, selects the
    worker's channels (``channel_index``, -1: the mix of every column), pushes them
    through the ladder and puts each answer into ``outputs`` at once. Live, the producer
    never waits for it (frames it falls a whole ring behind are lost and counted in
    ``lost_frames``); with ``hold`` (fast file input) the ring keeps them for it.
    :meth:`flush` (end of input) returns once everything written is answered;
    :meth:`replace` swaps in the ladder of a reloaded library (the old one's open hits
    get their final answers from what they have, and hit numbers go on); while
    ``paused()`` the audio is read and not analysed. Each push carries the ring position
    it starts at, so hits after a gap (lost, paused, a replaced ladder) keep their true
    times.

    Shared attributes (written by -> read by): ``ladder`` (this thread, on replace ->
    worker: describe, floor_db: plain numbers); ``lost_frames``, ``progress`` (this
    thread -> status, flush); ``flush_stalls`` (the flushing thread -> status).
    """

    def __init__(
        self,
        ladder: HitLadder,
        outputs: list[Any],
        *,
        source: Any,
        channel_index: list[int],
        realtime: bool,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(name="emberd-hits", daemon=True)
        self.ladder = ladder  # swapped by this thread on reload; read by the worker (status)
        self.outputs = outputs
        self.error: BaseException | None = None
        self.lost_frames = 0
        self.progress = 0  # frames read plus answers handed on (flush watches it)
        self.flush_stalls = 0  # flushes that gave up (written by the flushing thread)
        self._source = source
        self._ring = source.ring
        self._ring.tapped = self._pos = self._ring.total_read
        self._ring.hold_tap = not realtime
        self._columns = list(channel_index)
        self._realtime = realtime
        self._paused = paused
        self._late = 0  # polls since a due block was expected
        self._scratch = np.zeros((TAP_CHUNK_FRAMES, self._ring.channels), np.float32)
        self._chan = np.zeros((len(self._columns), TAP_CHUNK_FRAMES), np.float32)
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def flush(self, stall_s: float = FLUSH_STALL_S) -> bool:
        """Wait until everything written to the ring is answered; True when it is.

        Fast file input can leave the tap a whole ring behind, and on a loaded machine
        answering that takes as long as it takes: the wait goes on while the thread makes
        progress (frames read, answers handed on) and gives up only after ``stall_s``
        without any (a stuck or dead thread), counting the give-up in ``flush_stalls``.
        """
        done = threading.Event()
        self._queue.put(("flush", done))
        seen = -1
        while not done.wait(stall_s):
            if self.progress == seen or not self.is_alive():
                self.flush_stalls += 1
                log.warning("hits: flush gave up after %.1f s without progress", stall_s)
                return False
            seen = self.progress
        return True

    def describe(self) -> dict[str, Any]:
        """The thread's part of the status object (plain numbers)."""
        return {"hit_lost_frames": self.lost_frames, "hit_flush_stalls": self.flush_stalls}

    def replace(self, ladder: HitLadder) -> None:
        self._queue.put(("ladder", ladder))

    def stop(self) -> None:
        self._queue.put(("stop", None))

    def run(self) -> None:
        try:
            while True:
                while not self._queue.empty():
                    what, arg = self._queue.get()
                    if what == "stop":
                        return
                    if what == "ladder":  # a reload: the old ladder's hits end here
                        self._hand(self.ladder.flush())
                        arg.follow(self.ladder)
                        self.ladder = arg
                    else:  # flush: everything written is in the ring by now
                        try:
                            while self._tap():
                                pass
                            self._hand(self.ladder.flush())
                        finally:
                            arg.set()
                if not self._tap():
                    self._wait()
        finally:
            self._ring.hold_tap = False  # a stopped tap must not hold the producer back

    def _tap(self) -> int:
        """Read and analyse what has arrived since the last read; return frames read."""
        first, n = self._ring.peek(self._pos, self._scratch)
        self.lost_frames += first - self._pos
        self._pos = first + n
        self.progress += n
        if n:
            self._late = 0
            try:
                if not self._paused():
                    for c, col in enumerate(self._columns):
                        x = self._chan[c, :n]
                        if col < 0:
                            np.mean(self._scratch[:n], axis=1, out=x)
                        else:
                            np.copyto(x, self._scratch[:n, col])
                        self._hand(self.ladder.push(c, x, at=first))
            except Exception as exc:  # a bug in one hit must not end hit detection
                if self.error is None:
                    log.exception("hit ladder failed")
                self.error = exc
            finally:
                self._ring.tapped = self._pos
        return n

    def _wait(self) -> None:
        """Sleep until the next block should have arrived (live), or briefly (fast input).

        A block that is late is polled for with a doubling sleep (TAP_POLL_S up to
        TAP_LATE_MAX_S): on a loaded machine a tight poll would take the GIL from the
        worker thousands of times a second.
        """
        delay = TAP_POLL_S
        if self._realtime:
            _pos, t_arrived = self._source.arrivals.last_arrival()
            due = t_arrived + self._source.nominal_block_s - time.perf_counter()
            if due > TAP_POLL_S:
                delay, self._late = min(TAP_WAIT_MAX_S, due), 0
            else:
                delay = min(TAP_POLL_S * 2.0**self._late, TAP_LATE_MAX_S)
                self._late += 1
        time.sleep(delay)

    def _hand(self, results: list[HitResult]) -> None:
        for r in results:
            for out in self.outputs:
                out.put(r)
            self.progress += 1


class LevelGate:
    """Withholds window matches while a channel's whole encoder window is silent.

    The worker pushes every chunk (:meth:`push`, in input samples); :meth:`heard` says
    whether any GATE_FRAME_S frame between two input positions stood GATE_MARGIN_DB above
    the channel's noise floor (the hit detector's, when hits run) and above
    GATE_ABSOLUTE_DB. The window-level ``match`` stream asks it for each hop's encoder
    window: the noise floor and digital silence are never matched.
    """

    def __init__(self, channels: int, sr: int) -> None:
        self.frame = max(1, round(GATE_FRAME_S * sr))
        self._levels = [_History(round(LEVEL_HISTORY_S / GATE_FRAME_S)) for _ in range(channels)]
        self._pending = [np.zeros(0, np.float32) for _ in range(channels)]

    def push(self, c: int, x: np.ndarray) -> None:
        """Channel ``c``'s next input samples."""
        buf = np.concatenate([self._pending[c], np.asarray(x, np.float32)])
        n = len(buf) // self.frame * self.frame
        self._pending[c] = buf[n:].copy()
        if n:
            energy = np.mean(buf[:n].reshape(-1, self.frame).astype(np.float64) ** 2, axis=1)
            db = np.maximum(10.0 * np.log10(np.maximum(energy, 1e-12)), -120.0)
            self._levels[c].append(db.astype(np.float32))

    def heard(self, c: int, start: int, end: int, floor_db: float = -120.0) -> bool:
        """Whether channel ``c`` had sound between input positions ``start`` and ``end``."""
        lv = self._levels[c]
        a = max(start // self.frame, lv.end - len(lv.buf))
        b = min(-(-end // self.frame), lv.end)
        if b <= a:
            return False
        return float(np.max(lv.get(a, b - a))) >= max(GATE_ABSOLUTE_DB, floor_db + GATE_MARGIN_DB)


@dataclass
class HitResult:
    """One stage of the answer for one hit (built by the worker, read-only after).

    ``capture_time`` is the Unix time when the newest sample the stage used was
    captured; ``onset_time`` the Unix time of the onset sample.
    """

    channel: int
    hit: int
    stage: str  # one of emberd.clients.wire.HIT_STAGES
    onset_time: float
    onset_s: float  # the onset in seconds since the input began
    capture_time: float
    window_ms: float  # sound after the onset this stage used
    peak_db: float  # the hit's peak so far, dBFS
    model: str
    matches: list[dict[str, Any]] = field(default_factory=list)


class _History:
    """The newest samples of one channel, addressed by absolute sample position."""

    def __init__(self, n: int) -> None:
        self.buf = np.zeros(n, np.float32)
        self.end = 0  # absolute position after the newest sample

    def append(self, x: np.ndarray) -> None:
        n = len(self.buf)
        x = x[-n:]
        i = self.end % n
        first = min(len(x), n - i)
        self.buf[i : i + first] = x[:first]
        self.buf[: len(x) - first] = x[first:]
        self.end += len(x)

    def jump(self, end: int) -> None:
        """Samples up to ``end`` were never heard: they read as zeros from now on."""
        n = min(end - self.end, len(self.buf))
        if n > 0:
            self.buf[np.arange(self.end, self.end + n) % len(self.buf)] = 0.0
        self.end = max(self.end, end)

    def get(self, start: int, length: int, stop: int | None = None) -> np.ndarray:
        """Samples ``start .. start + length`` (zeros where unknown or at/after ``stop``)."""
        out = np.zeros(length, np.float32)
        hi = min(start + length, self.end, self.end if stop is None else stop)
        lo = max(start, self.end - len(self.buf))
        if hi > lo:
            idx = np.arange(lo, hi) % len(self.buf)
            out[lo - start : hi - start] = self.buf[idx]
        return out


@dataclass
class _Sounding:
    """A sound still ringing: snippet ``row`` at ``gain``, its sample 0 at ``start``."""

    row: int
    gain: float
    start: int
    hit: int
    end: int  # absolute position after the last predicted sample
    xp: float = 0.0  # the audio's projection on the prediction past the snippet (decaying)
    pp: float = 0.0  # ... and the prediction's energy there (HitLadder._check)


@dataclass
class _Hit:
    id: int
    onset: int  # absolute sample position
    end: int | None = None  # the next onset on the channel: nothing from there on is ours
    stage: int = 0  # index of the next stage in the ladder
    carried: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sounding: _Sounding | None = None
    exact: tuple[int, float] | None = None  # (row, P) of an exact claim made at a stage
    trusted: int | None = None  # row a refined stage's waveform named (STAGE_TRUST_RHO)
    background: np.ndarray | None = None  # band power of what sounded before it (per band)


@dataclass
class _Channel:
    number: int
    detector: OnsetDetector
    history: _History
    rate: ToRate  # input rate -> the ladder's
    next_in: int = 0  # input (ring) position of the next sample pushed
    hits: list[_Hit] = field(default_factory=list)
    sounding: list[_Sounding] = field(default_factory=list)
    next_id: int = 0


class HitLadder:
    """Onset detection and the decision ladder for every channel (see module docstring).

    Parameters
    ----------
    index : HitIndex or None
        The library's hit index (None: hits are detected and answered ``none``).
    files : dict
        Library file id -> record with ``path``, ``name``, ``tags``.
    sr : int
        Sample rate of the pushed audio.
    channels : list of int
        Published channel numbers, in push order.
    model : str
        Encoder name put on every message.
    time_of : callable
        Absolute sample position -> Unix time of its capture.
    """

    def __init__(
        self,
        index: hx.HitIndex | None,
        files: dict[int, Any],
        *,
        sr: int,
        channels: list[int],
        model: str,
        time_of: Callable[[int], float],
    ) -> None:
        from threadpoolctl import threadpool_limits

        # Each stage is a few small matrix products: BLAS threads only add wake-ups and
        # contention with the encoder (40x slower on a loaded 2-core box). Process-wide,
        # like the streaming encoder's own limit.
        threadpool_limits(limits=1, user_api="blas")
        self.index = index if index is not None and len(index) else None
        self.files = files
        self.sr_in = int(sr)
        self.sr = hx.WAVE_SR  # the ladder's rate: the library snippets'
        self._ratio = self.sr_in / self.sr
        self.model = model
        self._time_of = time_of
        self.hits_started = 0
        self.stage_ms = 0.0  # total compute spent on stages (status: mean per answer)
        self._answers = 0
        self.evidence: list[dict[str, Any]] | None = None  # set to a list to record features
        sr = self.sr
        self._stages = [
            ("provisional", round(PROVISIONAL_S * sr)),
            *[("refined", round(s * sr)) for s in REFINED_S],
            ("final", round(FINAL_S * sr)),
        ]
        self._channels = [
            _Channel(n, OnsetDetector(sr=sr), _History(round(HISTORY_S * sr)),
                     ToRate(self.sr_in, sr))
            for n in channels
        ]  # fmt: skip

    def follow(self, old: HitLadder) -> None:
        """Continue ``old``'s hit numbers and counters (this ladder replaces it on reload).

        Hit numbers stay unique per channel for the whole run: a client merging the
        stages of a hit by ``(channel, hit)`` (the MIDI output's note-offs, a subscriber)
        never mixes a new hit with an old one of the same number.
        """
        next_ids, started, stage_ms, answers = old.handover()
        for ch, next_id in zip(self._channels, next_ids, strict=True):
            ch.next_id = max(ch.next_id, next_id)
        self.hits_started += started
        self.stage_ms += stage_ms
        self._answers += answers

    def handover(self) -> tuple[list[int], int, float, int]:
        """What a ladder replacing this one carries on (:meth:`follow`): each channel's next
        hit number, hits started, stage milliseconds and answers given."""
        return ([ch.next_id for ch in self._channels], self.hits_started, self.stage_ms,
                self._answers)  # fmt: skip

    def time_of(self, pos: int) -> float:
        """Unix capture time of ladder sample ``pos`` (input position ``pos * ratio``)."""
        return self._time_of(round(pos * self._ratio))

    def floor_db(self, c: int) -> float:
        """Channel ``c``'s tracked noise floor (dBFS RMS)."""
        return self._channels[c].detector.floor_db

    def describe(self) -> dict[str, Any]:
        """The ladder's part of the status object."""
        return {
            "hits": self.hits_started,
            "hit_index_files": len(self.index) if self.index is not None else 0,
            "hit_stage_ms": round(self.stage_ms / max(1, self._answers), 3),
        }

    # ------------------------------------------------------------------ feeding

    def push(self, c: int, x: np.ndarray, at: int | None = None) -> list[HitResult]:
        """Feed channel ``c``'s next samples; return the answers that became due, in order.

        ``at`` is the input (ring) position of ``x[0]``; None: right after the last push.
        Ladder positions are input positions over the rate ratio, so a gap (frames the
        tap lost, audio read while paused, a ladder that starts late) leaves the times of
        later hits right: see :meth:`_gap`.
        """
        ch = self._channels[c]
        out: list[HitResult] = []
        if at is not None and at != ch.next_in:
            if at < ch.next_in:
                raise ValueError(f"channel {c}: input position {at} before {ch.next_in}")
            out += self._gap(ch, at)
        ch.next_in += len(x)
        x = ch.rate.push(x)
        if not len(x):
            return out
        pos = ch.history.end
        ch.history.append(x)
        known, covered = self._known(ch, pos, len(x))
        for onset in ch.detector.push(x, known, covered):
            for hit in ch.hits:  # the next hit starts: the previous ones end here
                hit.end = onset if hit.end is None else hit.end
            out += self._advance(ch, until=onset)
            hit = _Hit(ch.next_id, onset)
            ch.next_id += 1
            self.hits_started += 1
            ch.hits.append(hit)
        out += self._advance(ch, until=ch.history.end)
        return out

    def _gap(self, ch: _Channel, at: int) -> list[HitResult]:
        """The channel's input jumps to position ``at``: what was before does not join up.

        Open hits end where the audio did (their final answers, from what they have);
        no tail is subtracted across the gap; the history, the detector and the rate
        converter restart at ``at``'s ladder position (the gap reads as zeros, and the
        detector warms up again so the splice is no onset).
        """
        for hit in ch.hits:
            hit.end = ch.history.end if hit.end is None else hit.end
        out = self._advance(ch, until=ch.history.end)
        ch.hits.clear()
        ch.sounding.clear()
        base = max(round(at / self._ratio), ch.history.end)
        ch.history.jump(base)
        ch.detector.skip(base - ch.detector.position)
        ch.rate = ToRate(self.sr_in, self.sr)
        ch.next_in = at
        return out

    def _known(
        self, ch: _Channel, start: int, n: int
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The predicted continuation of the channel's identified sounds over ``start..+n``."""
        if self.index is None or not ch.sounding:
            return None, None
        guard = round((LOOKBACK_S + RISE_SPAN_S + FRAME_S) * self.sr)
        ch.sounding[:] = [s for s in ch.sounding if s.end + guard > start]
        known = np.zeros(n, np.float32)
        covered = np.zeros(n, bool)
        # Each prediction once per block (None: it does not reach into it).
        preds = [self._predicted(s, start, n) if min(s.end, start + n) > max(s.start, start)
                 else None for s in ch.sounding]  # fmt: skip
        past = [s for s in ch.sounding if s.start + SNIPPET_SAMPLES < start + n and s.end > start]
        if past:  # each is checked against what the others leave of the audio
            x = ch.history.get(start, n)
            everything = np.sum([p for p in preds if p is not None], axis=0)
            for s, p in zip(ch.sounding, preds, strict=True):
                if p is not None and any(s is q for q in past):
                    self._check(s, x - (everything - p), start, p)
                    p[max(0, s.end - start) :] = 0.0  # ended there by the check
        for s, p in zip(ch.sounding, preds, strict=True):
            a, b = max(s.start, start), min(s.end, start + n)
            if b > a and p is not None:
                known += p
                covered[a - start : b - start] = True
        # Where a prediction has just ended, its sound comes back into the residual of the
        # others: compare raw levels there (no residual "rise") until the detector's
        # look-back has passed.
        for s in ch.sounding:
            end = s.end
            a, b = max(end, start), min(end + guard, start + n)
            if b > a:
                covered[a - start : b - start] = False
        return (known, covered) if covered.any() else (None, None)

    def _predicted(self, s: _Sounding, start: int, n: int) -> np.ndarray:
        """Sounding ``s``'s predicted samples ``start .. start + n`` (zeros past its end)."""
        assert self.index is not None
        p = self.index.placed(s.row, s.gain, start - s.start, n)
        p[max(0, s.end - start) :] = 0.0
        return p

    def _check(self, s: _Sounding, x: np.ndarray, start: int, p: np.ndarray) -> None:
        """End ``s`` where, past its snippet, it stops explaining the audio ``x`` (from
        ``start``; the other known sounds' predictions taken out) given its prediction
        ``p``: a right prediction leaves less than the audio (the audio's projection on it,
        ``x . p``, is its energy ``p . p``), a wrong one (another recording) more (``x . p``
        near 0); the rule is ``x . p < CHECK_EXPLAINED * p . p``, both sums remembered over
        about CHECK_MEMORY_SAMPLES (over one CHECK_SAMPLES piece a louder sound starting
        over a right prediction made it look wrong by chance, and the quiet hit that came
        next was missed under the tail no longer subtracted). Where the audio falls well
        under the prediction within a piece, the sound was stopped (a choked cymbal)."""
        first = max(0, s.start + SNIPPET_SAMPLES - start)
        keep = math.exp(-CHECK_SAMPLES / CHECK_MEMORY_SAMPLES)
        for a in range(first, len(x), CHECK_SAMPLES):
            b = min(a + CHECK_SAMPLES, len(x))
            x_e, p_e = float(x[a:b] @ x[a:b]), float(p[a:b] @ p[a:b])
            s.xp = keep * s.xp + float(x[a:b] @ p[a:b])
            s.pp = keep * s.pp + p_e
            if s.xp < CHECK_EXPLAINED * s.pp or x_e < CHECK_STOPPED * p_e:
                s.end = min(s.end, start + a)
                return

    def flush(self) -> list[HitResult]:
        """End of input: every open hit publishes its final answer with what it has."""
        out: list[HitResult] = []
        for ch in self._channels:
            for hit in ch.hits:
                hit.end = ch.history.end if hit.end is None else hit.end
            out += self._advance(ch, until=ch.history.end)
        return out

    def _advance(self, ch: _Channel, until: int) -> list[HitResult]:
        """Run every stage that is due with the audio up to ``until``."""
        out = []
        for hit in list(ch.hits):
            while hit.stage < len(self._stages):
                name, need = self._stages[hit.stage]
                have = min(until, hit.end if hit.end is not None else until) - hit.onset
                ended = hit.end is not None and until >= hit.end
                if have < need and not ended:
                    break
                if ended and name != "final" and have < need:
                    if hit.stage == 0 and have >= self._stages[0][1] // 2:
                        pass  # a very short hit still gets its provisional answer first
                    else:
                        hit.stage = len(self._stages) - 1  # jump to the final answer
                        continue
                if name == "provisional":
                    have = min(have, round(PROVISIONAL_MAX_S * self.sr))
                else:  # exactly the stage's window: the same answer whatever the block size
                    have = min(have, need)
                out.append(self._answer(ch, hit, name, max(1, min(have, self._stages[-1][1]))))
                hit.stage += 1
            if hit.stage >= len(self._stages):
                ch.hits.remove(hit)
        return out

    # ------------------------------------------------------------------ one stage

    def _query(self, ch: _Channel, hit: _Hit, start: int, length: int) -> np.ndarray:
        """The hit's audio from ``start`` with the tails of earlier sounds subtracted."""
        x = ch.history.get(start, length, hit.end)
        for s in ch.sounding:
            if s.hit < hit.id and self.index is not None and s.start < start + length:
                x -= self._predicted(s, start, length)
        return x

    def _answer(self, ch: _Channel, hit: _Hit, stage: str, window: int) -> HitResult:
        t0 = time.perf_counter()
        raw = ch.history.get(hit.onset, window, hit.end)
        peak = float(np.max(np.abs(raw))) if window else 0.0
        matches: list[dict[str, Any]] = []
        if self.index is not None:
            matches, window = self._identify(ch, hit, stage, window)
        newest = (hit.onset + window) * self._ratio + ch.rate.delay_in  # input position
        self.stage_ms += (time.perf_counter() - t0) * 1000.0
        self._answers += 1
        return HitResult(
            channel=ch.number,
            hit=hit.id,
            stage=stage,
            onset_time=self.time_of(hit.onset),
            onset_s=hit.onset / self.sr,
            capture_time=self._time_of(round(newest)),
            window_ms=window / self.sr * 1000.0,
            peak_db=20.0 * math.log10(peak) if peak > 0 else -120.0,
            model=self.model,
            matches=matches,
        )

    def _identify(
        self, ch: _Channel, hit: _Hit, stage: str, window: int
    ) -> tuple[list[dict[str, Any]], int]:
        """The stage's matches and the samples after the onset it really compared."""
        index = self.index
        assert index is not None
        window = min(window, SNIPPET_SAMPLES - PRE_ROLL_SAMPLES, self._usable(ch, hit))
        heard = window  # samples after the detected onset this stage uses (reported)
        onset = hit.onset
        if stage != "provisional":
            window = self._audible(ch, hit, window)
            heard = window
            onset = self._anchor(ch, hit, window)
            window = max(1, min(window - (onset - hit.onset), SNIPPET_SAMPLES - PRE_ROLL_SAMPLES))
        if stage == "provisional" or window < hx.EARLY_SAMPLES:
            n_desc, k = hx.ATTACK_SAMPLES, PROVISIONAL_CANDIDATES
        else:
            n_desc, k = hx.EARLY_SAMPLES, REFINED_CANDIDATES
        desc = self._query(ch, hit, onset - hx.DESC_OFFSET_SAMPLES, n_desc)
        if window < n_desc - hx.DESC_OFFSET_SAMPLES:  # not heard yet: do not describe zeros
            desc[hx.DESC_OFFSET_SAMPLES + window :] = 0.0
        rows, _ = index.candidates(desc, n_desc, k, self._background(ch, hit))
        rows = np.array(list(dict.fromkeys([*hit.carried.tolist(), *rows.tolist()])), np.int64)
        pre = hx.PRE_SAMPLES + hx.LAG_SAMPLES
        seg = self._query(ch, hit, onset - pre, pre + window + hx.LAG_SAMPLES)
        seg[pre + window :] = 0.0  # only what this stage may use
        rho, gain, lag = index.correlate(seg, rows, window)
        order = np.argsort(-rho)
        hit.carried = rows[order[:CARRIED_CANDIDATES]]
        best = int(order[0])
        margin = float(rho[best]) - self._second(index, rows, rho, order)
        log_window = math.log2(max(window, 1) / 128.0)
        p_exact = _logistic(EXACT_WEIGHTS, nines=_nines(float(rho[best])), margin=margin,
                            log_window=log_window)  # fmt: skip
        if stage == "final" and index.class_model is not None:
            # All of the sound there will be: the instrument model names its class, and
            # the near answer is the best-correlated library sound of that class.
            cls, share = index.class_model.predict(self._query(ch, hit, onset, window))
            of_class = [i for i in order.tolist() if index.classes[int(rows[i])] == cls]
            voted = of_class[0] if of_class else best
            if not of_class:
                more = index.candidates_of_class(desc, n_desc, REFINED_CANDIDATES, cls)
                if not len(more):  # no named file of the class: the library model's guesses
                    more = index.candidates_of_class(desc, n_desc, REFINED_CANDIDATES, cls,
                                                     guessed=True)  # fmt: skip
                if len(more):
                    r2, g2, l2 = index.correlate(seg, more, window)
                    voted = len(rows) + int(np.argmax(r2))
                    rows, rho = np.append(rows, more), np.append(rho, r2)
                    gain, lag = np.append(gain, g2), np.append(lag, l2)
        else:
            voted_row, share = self._vote(index, rows[order], rho[order], VOTE_CANDIDATES)
            voted = int(np.nonzero(rows == voted_row)[0][0]) if voted_row is not None else best
        if self.evidence is not None:  # bench/fit_hit_confidence.py fits on these
            self.evidence.append({
                "onset_s": hit.onset / self.sr, "stage": stage, "window": window,
                "rho": float(rho[best]), "margin": margin, "log_window": log_window,
                "nines": _nines(float(rho[best])),
                "share": share, "rho_vote": float(rho[voted]),
                "best_path": self._path(index, int(rows[best])),
                "vote_path": self._path(index, int(rows[voted])),
            })  # fmt: skip
        claimed = (
            int(np.nonzero(rows == hit.exact[0])[0][0])
            if hit.exact is not None and hit.exact[0] in rows.tolist() else None
        )  # fmt: skip
        if is_exact(p_exact, float(rho[best]), margin):
            answer, kind, confidence = best, "exact", p_exact
            if claimed == best:  # more sound (or more noise) does not weaken the claim
                confidence = max(p_exact, hit.exact[1]) if hit.exact else p_exact
            hit.exact = (int(rows[best]), confidence)
        elif claimed is not None and hit.exact is not None:
            # An earlier stage was sure and nothing now is: its file stays the answer (a
            # quiet hit sinking into the noise or under the next sound loses evidence).
            answer, kind, confidence = claimed, "exact", hit.exact[1]
        else:  # the best-correlated file when the waveform says enough, else the vote
            answer, hit.trusted = near_answer(stage, rows, rho, best, voted, index.classes,
                                              hit.trusted)  # fmt: skip
            kind = "similar"
            confidence = _logistic(CLASS_WEIGHTS, share=share, rho=float(rho[answer]),
                                   log_window=log_window)  # fmt: skip
        if kind == "exact" and rho[answer] >= SUBTRACT_MIN_RHO:  # known: subtract its tail
            self._sound(ch, hit, int(rows[answer]), float(gain[answer]), onset + int(lag[answer]),
                        whole=stage == "final")  # fmt: skip
        elif rho[best] >= SUBTRACT_MIN_RHO:  # a near answer's file (a velocity layer) too
            self._sound(ch, hit, int(rows[best]), float(gain[best]), onset + int(lag[best]),
                        whole=stage == "final")  # fmt: skip
        elif hit.sounding is not None:  # an earlier stage was sure, this one is not
            ch.sounding[:] = [s for s in ch.sounding if s is not hit.sounding]
            hit.sounding = None
        out = [self._match(index, int(rows[answer]), float(rho[answer]), float(gain[answer]),
                           kind, confidence)]  # fmt: skip
        for i in order.tolist():
            if len(out) >= MAX_MATCHES:
                break
            if i != answer:
                p = _logistic(EXACT_WEIGHTS, nines=_nines(float(rho[i])),
                              margin=float(rho[i] - rho[best]), log_window=log_window)  # fmt: skip
                out.append(self._match(index, int(rows[i]), float(rho[i]), float(gain[i]),
                                       "similar", p))  # fmt: skip
        return out, heard

    def _background(self, ch: _Channel, hit: _Hit) -> np.ndarray:
        """Band power of what sounded just before the hit (the BACKGROUND_SAMPLES before
        its descriptor starts, the known tails subtracted): an unexplained tail and the
        noise floor. Candidates are ranked on the descriptor cells the hit lifts above it
        (:meth:`~emberd.library.hitindex.HitIndex.candidates`): a quiet tom under a
        cymbal's tail no longer looks like the cymbal to the index. Measured once, at the
        first stage (before the detected onset: an anchor moved later would take the hit's
        own first sound for background)."""
        if hit.background is None:
            n = hx.BACKGROUND_SAMPLES
            x = self._query(ch, hit, hit.onset - hx.DESC_OFFSET_SAMPLES - n, n)
            hit.background = hx.band_power(x, n)[0].mean(axis=0)
        return hit.background

    def _anchor(self, ch: _Channel, hit: _Hit, window: int) -> int:
        """Where the library would place this hit's onset: the first sample within
        ONSET_DB of its loudest (:func:`~emberd.library.waveform.onset_sample`, the rule
        every snippet was cut by), searched from ANCHOR_BEFORE_S before the detected onset
        over the first ANCHOR_SPAN_S. A rise detector fires at the first sound: a finger
        snap's rub 20 ms before the snap, a soft stick noise before a tom; the waveform
        stages align on what the snippets align on. The detected onset stays when the
        search starts above the threshold (an earlier sound still loud there) or the rule
        would move it earlier (a kick anchored 0.5 ms early left a tail residue that fired
        a false onset 69 ms in, seen in the JACK MIDI test)."""
        before = round(ANCHOR_BEFORE_S * self.sr)
        span = min(window, round(ANCHOR_SPAN_S * self.sr))
        x = self._query(ch, hit, hit.onset - before, before + span)
        a = onset_sample(x)
        if a <= before:  # never earlier (see above)
            return hit.onset
        return hit.onset - before + min(a, before + round(ANCHOR_MAX_SHIFT_S * self.sr))

    def _usable(self, ch: _Channel, hit: _Hit) -> int:
        """Samples after the onset free of an earlier sound's unexplained tail.

        An identified earlier sound is subtracted only as far as its snippet goes; past
        that, its tail returns at full level. While that tail is within TAIL_RANGE_DB of
        this hit's peak, the hit is compared only up to there.
        """
        assert self.index is not None
        usable = SNIPPET_SAMPLES
        peak = float(np.max(np.abs(ch.history.get(hit.onset, 256, hit.end)))) + 1e-12
        for s in ch.sounding:
            end = s.end
            if s.hit >= hit.id or not s.start < hit.onset < end:
                continue
            tail = self.index.placed(s.row, s.gain, end - s.start - TAIL_PROBE, TAIL_PROBE)
            if float(np.max(np.abs(tail))) > peak * 10 ** (-TAIL_RANGE_DB / 20):
                usable = min(usable, end - hit.onset)
        return max(usable, round(PROVISIONAL_S * self.sr))

    def _audible(self, ch: _Channel, hit: _Hit, window: int) -> int:
        """The part of ``window`` where the hit still stands above the noise floor.

        A quiet hit sinks into the noise within its snippet; past that point more
        "sound" is noise only, which lowers the right file's correlation as much as a
        wrong one's and lets a velocity layer with another decay win. Later stages compare
        only up to the last AUDIBLE_FRAME_S frame AUDIBLE_MARGIN_DB above the channel's
        noise floor (after the known tails are subtracted), never less than the
        provisional window.
        """
        frame = round(AUDIBLE_FRAME_S * self.sr)
        if window < 2 * frame:
            return window
        x = self._query(ch, hit, hit.onset, window).astype(np.float64) ** 2
        starts = np.arange(0, window, frame)  # the last frame may be partial: its own mean
        level = 10.0 * np.log10(np.add.reduceat(x, starts) / np.diff([*starts, window]) + 1e-30)
        loud = np.nonzero(level >= ch.detector.floor_db + AUDIBLE_MARGIN_DB)[0]
        if not len(loud):
            return round(PROVISIONAL_MAX_S * self.sr)
        # Frames are fixed from the onset, so a longer window never ends earlier.
        return min(window, max(int(loud[-1] + 1) * frame, round(PROVISIONAL_MAX_S * self.sr)))

    @staticmethod
    def _second(index: hx.HitIndex, rows: np.ndarray, rho: np.ndarray, order: np.ndarray) -> float:
        """The best correlation of another recording than the best candidate's."""
        best = index.snippet(int(rows[order[0]]))
        nb = float(np.linalg.norm(best)) + 1e-12
        for i in order[1:].tolist():
            other = index.snippet(int(rows[i]))
            same = float(best @ other) / (nb * (float(np.linalg.norm(other)) + 1e-12))
            if same < SAME_RECORDING:
                return float(rho[i])
        return 0.0

    @staticmethod
    def _vote(
        index: hx.HitIndex, rows: np.ndarray, scores: np.ndarray, voters: int
    ) -> tuple[int | None, float]:
        """The instrument class the best ``voters`` rows (best first) vote for, weighted by
        score: (its best row, the class's share of the vote), or (None, 0)."""
        votes: dict[str, float] = {}
        first: dict[str, int] = {}
        for r, sc in zip(rows[:voters].tolist(), scores[:voters].tolist(), strict=True):
            cls = index.classes[int(r)]
            if cls is None:
                continue
            votes[cls] = votes.get(cls, 0.0) + max(float(sc), 0.0)
            first.setdefault(cls, int(r))
        total = sum(votes.values())
        if not votes or total <= 0.0:
            return None, 0.0
        cls = max(votes, key=lambda c: votes[c])
        return first[cls], votes[cls] / total

    def _sound(
        self, ch: _Channel, hit: _Hit, row: int, gain: float, at: int, *, whole: bool
    ) -> None:
        """Remember the answer as the sound now ringing (its tail is subtracted later);
        ``whole`` (the final answer): predict it past its snippet, from the decoded file."""
        assert self.index is not None
        start = at - PRE_ROLL_SAMPLES
        length = (self.index.load_sound(row, self._path(self.index, row)) if whole
                  else self.index.sound_length(row))  # fmt: skip
        if hit.sounding is None or not any(s is hit.sounding for s in ch.sounding):
            hit.sounding = _Sounding(row, gain, start, hit.id, start + length)
            ch.sounding.append(hit.sounding)
            del ch.sounding[:-SOUNDING_MAX]
        else:
            hit.sounding.row, hit.sounding.gain, hit.sounding.start = row, gain, start
            hit.sounding.end = start + length
            hit.sounding.xp = hit.sounding.pp = 0.0  # another prediction: evidence anew

    def _path(self, index: hx.HitIndex, row: int) -> str:
        return str(getattr(self.files.get(int(index.file_ids[row])), "path", ""))

    def _match(
        self, index: hx.HitIndex, row: int, rho: float, gain: float, kind: str, confidence: float
    ) -> dict[str, Any]:
        rec = self.files.get(int(index.file_ids[row]))
        path = str(getattr(rec, "path", ""))
        return {
            "path": path,
            "name": str(getattr(rec, "name", "")),
            "score": round(rho, 6),
            "distance": round(math.sqrt(max(0.0, 2.0 - 2.0 * min(rho, 1.0))), 6),
            "segment_start_s": 0.0,
            "tags": list(getattr(rec, "tags", ())),
            "kind": kind,
            "confidence": round(confidence, 4),
            "rho": round(rho, 4),
            "gain_db": round(20.0 * math.log10(max(abs(gain), 1e-6)), 2),
            "class": index.classes[row],
        }
