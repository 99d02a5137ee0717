"""Every library sample in a track: "which of my samples did I use, and where?".

``emberd query TRACK --timeline`` reads a beat, a bounce or a stem and lists each
occurrence of a library file in it: start time, gain, speed factor (a sampler's
resampling: pitch and length change together) and confidence, one entry per
occurrence. Producers need that list for credits and sample clearance.

The track is streamed (:class:`~emberd.dsp.sources.FileSource` blocks at WAVE_SR):
memory holds BUFFER_S of audio whatever the file's length. For each block:

1. **Onsets** -- :class:`~emberd.dsp.onset.OnsetDetector` (the live hit detector)
   runs on the track minus what is already explained (the identified samples placed
   where they play, their tails included), so a hit under a known tail still rises
   and the hits inside an identified loop do not.
2. **Candidates** -- the attack descriptors of :class:`~emberd.library.hitindex.HitIndex`
   (built from the stored onset snippets) of the residual at the onset, searched as
   it is and undone by the speeds of CANDIDATE_SPEEDS, plus the files found recently
   (a beat repeats its samples) and the NEIGHBOURS nearest files by descriptor of the
   NEIGHBOUR_TOP best attacks (a mixed residual may return only a file's velocity layers).
3. **Coarse speed** -- each candidate's onset waveform (from the library file itself,
   or its stored snippet when the file is gone) is correlated with the residual
   resampled by every factor of SPEED_GRID, over COARSE_SAMPLES after the onset
   (short enough that half a grid step does not decorrelate it) and +-LAG_SAMPLES:
   all lags of all candidates at once, by one COARSE_FFT-point transform of the
   residual against the precomputed spectra of the attacks.
4. **Fine speed** -- the best REFINE_TOP are refined around their coarse factor with
   the step halved and the window doubled each time, up to the sound's length (at most
   MAX_SOUND_S); the first window probes FIRST_PROBES speeds per side, the first windows
   run on the stored snippet (decoded only when the attack holds), and a file of two
   PART_SAMPLES or more is aligned part by part (a line through the parts' lags): a loop
   pins its speed to ~1e-6. A long candidate is also tried from the best attack's speed.
5. **Decision** -- of the candidates that correlate at least SIMILAR_RHO over the
   fine window, the one that explains the most energy of the residual (least
   squares over its whole length) wins: a loop beats its own first hit because it
   also explains the hits after it. At or above EXACT_RHO the entry is ``exact``,
   is subtracted from the residual (the sample, resampled and scaled, placed at its
   start), and the onset is examined again for a second sound starting with it (up to
   SOUNDS_PER_ONSET) unless the residual keeps under SECOND_SOUND_DB of the track
   there. Between SIMILAR_RHO and EXACT_RHO (or over QUIET_DB below the track) the
   entry is ``similar``: a lead, not a claim; it is not subtracted. An onset where
   nothing is found is examined again from the anchors ANCHOR_SHIFTS away. These retries
   (and second sounds) search the descriptors at RETRY_SPEEDS and refine only attacks
   correlating RETRY_MIN_RHO or more.
6. **Merge** -- an entry for the same file within MERGE_S of an earlier one is the
   same occurrence: the better-correlated one is kept.

``confidence`` is the judged correlation through a fixed logistic (CONFIDENCE_*, set
by hand on kits A): monotone in rho, 0.5 at CONFIDENCE_MID, but NOT calibrated (the
single-query calibration of ``emberd query`` does not cover timelines yet). Silence, DC
and the noise floor give no entry and a reason. The constants below were tuned on beats
of kits A; bench/timeline.py reports kits B.

Known limits: a library file longer than MAX_SOUND_S is matched and subtracted on its
first MAX_SOUND_S only; a loop whose first hits are over 20 dB below its loudest is found
at that loud hit (its stored snippet starts there), so its first hits may already have
been listed as one-shots (they are dropped when the loop explains them); the speed bank
holds 31 spectra of 257 complex64 bins per library file in memory (64 MB for 1000
files); decoded library waveforms are cached up to REF_CACHE_BYTES, upsampled snippets
up to HEAD_CACHE_BYTES. A candidate over RESIDUE_DB below the
explained sounds under it is taken for what their subtraction left behind, not a sound.
"""

from __future__ import annotations

import copy
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from emberd.dsp.onset import OnsetDetector
from emberd.dsp.silence import QUERY_FLOOR_DBFS
from emberd.errors import EmberdError
from emberd.library.hitindex import DESC_OFFSET_SAMPLES, EARLY_SAMPLES, HitIndex
from emberd.library.waveform import PRE_ROLL_SAMPLES, WAVE_SR, onset_sample

MAX_SOUND_S = 8.0  # s: at most this much of a library file is matched and subtracted
READ_BLOCK = 8192  # samples per FileSource block at WAVE_SR (0.37 s)
DETECT_BLOCK = 512  # samples per onset-detector push (23 ms): explanations land between
SPECULATE_BLOCKS = 16  # blocks pushed at once to a copy of the detector (see _Stream._detect)
LEAD_IN = 2048  # silent samples before the track: the detector's warm-up hides no hit at 0
CANDIDATES = 16  # files per descriptor search
CANDIDATE_SPEEDS = (1.0, 0.92, 1.09)  # the residual is also searched undone by these
SAME_ATTACK_COS = 0.98  # descriptor cosine of files that start alike (refined together) ...
SAME_ATTACK_MAX = 4  # ... at most this many per candidate
RECENT_FILES = 8  # files found last are always candidates
SPEED_GRID = tuple(float(s) for s in np.round(np.geomspace(0.86, 1.17, 31), 5))  # ~1 % steps
COARSE_SAMPLES = 224  # 10 ms after the onset: 0.5 % speed error drifts it by 1 sample
PRE_SAMPLES = 32  # compared before the onset too (1.5 ms)
LAG_SAMPLES = 128  # +-5.8 ms: the detected onset vs the file's own onset
# Samples (11.6, 23 ms): where else a sound is looked for. Half A (bench/timeline.py --set):
# (256, -256, 512, -512) and (256, -256, 512) gave 222/226 right/exact entries (9.2-9.9 and
# 8.4 CPU s for 4 beats), (256, -256) 219/221: an anchor 23 ms before found nothing there.
ANCHOR_SHIFTS = (256, -256, 512)
REFINE_TOP = 3  # candidates refined after the coarse grid
# The claimed file is refined again from its best grid speed at least SECOND_SPEED_STEPS steps
# (~0.9 % each) from its first, when its attack correlates no more than SECOND_SPEED_RHO below
# there, and kept from there where it correlates better (see _Stream._second_speed). Half A:
# one claim moved (x1.060 -> x1.051, rho 0.957 -> 0.987), no entry added or lost. Tried and
# not kept: the same for the best 3 refined candidates where nothing was claimed (+1 right,
# +2 wrong exact entries on half A; claimed only from rho 0.9: no right entry more, 1 similar).
SECOND_SPEED_STEPS = 2
SECOND_SPEED_RHO = 0.1
SECOND_SPEED_SAME = 0.002  # a second speed within this (relative) of the first is the same
# ... only for claims judged under this correlation (62 of half A's 227 exact claims; none of
# the others was over 0.1 % off its speed): a third of the second refinements' CPU.
SECOND_SPEED_MAX_RHO = 0.98
# The NEIGHBOURS nearest files by attack descriptor of each of the NEIGHBOUR_TOP best attacks
# are candidates too (see _Stream._add_neighbours). Half A (bench/fit_timeline.py): NEIGHBOUR_TOP
# 3 gave the same 222/226 right/exact entries as none, 5 223/227 (a foot hat whose 4th-best
# layer lists it), NEIGHBOURS 8 with 3: 222/226.
NEIGHBOURS = 4
NEIGHBOUR_TOP = 5
NEIGHBOUR_MIN_RHO = 0.6  # ... whose attacks correlate this well (half A: 0.35, 0.6, 0.8 the same)
COARSE_TIE_RHO = 0.02  # candidates this close to the best attack are all refined ...
REFINE_TIES = 8  # ... up to this many
COARSE_MIN_RHO = 0.35  # a candidate's attack must correlate this well to be refined
# ... and this well in a search that is not an onset's first (at an anchor, ANCHOR_SHIFTS, or
# for a second sound): half A had 498 anchor searches for 13 exact claims, whose best attacks
# correlated 0.78 or more, and 80 second-sound searches for none. Half A (bench/timeline.py
# --set RETRY_MIN_RHO=...): 0.35 (as the first search), 0.6, 0.7 gave the same 222/226
# right/exact entries, 0.8 220/224.
RETRY_MIN_RHO = 0.7
# ... whose descriptor searches undo these speeds. (1.0,) alone (no resampling: 12 % less CPU)
# gave half A the same 222/226 right/exact entries, 5.9-6.0 vs 6.6-7.1 CPU s, but half B one
# right entry fewer and one wrong more (220/233 vs 221/233), so all three stay (this decision
# saw half B).
RETRY_SPEEDS = CANDIDATE_SPEEDS
BANK_CHUNK = 256  # snippets resampled per soxr call when the speed bank is built
# The coarse window (the attack and +-LAG_SAMPLES) in one transform, without wrapping.
COARSE_FFT = 1 << (PRE_SAMPLES + COARSE_SAMPLES + 2 * LAG_SAMPLES - 1).bit_length()
FINE_LAGS = 6  # +-samples re-searched at each refinement step
FINE_START_WINDOW = 384  # samples in the first refinement window, doubled every step
FINE_START_STEP = 0.004  # speed step of the first refinement, halved every step
FIRST_PROBES = 4  # speeds probed per side on the first window (step / 4 apart)
SNIPPET_WINDOW = 5512  # 250 ms: the window rho is judged on (the snippet's length) ...
LONG_FILE_SAMPLES = WAVE_SR  # files this long (1 s) are also judged over their whole length,
LONG_EXACT_RHO = 0.75  # ... and claimed from this correlation (half A: 0.55/0.70/0.75/0.80
# gave 221/226, 222/227, 222/226, 221/225 right/exact entries: bench/timeline.py --set)
JUDGE_MIN_SAMPLES = 1024  # ... cut at the next sound's onset, but never shorter than 46 ms
NEXT_ONSET_MIN_S = 0.03  # s: an onset this close after a sound's own is still its attack
EXACT_RHO = 0.80  # fine correlation at or above which an occurrence is claimed (and subtracted)
SIMILAR_RHO = 0.60  # ... between this and EXACT_RHO: listed as similar, not subtracted
LONGER_EXPLAINS = 1.5  # explained-energy ratio by which a candidate beats a better-correlated one
SOUNDS_PER_ONSET = 3  # sounds looked for at one onset (a kick and a hat hit together)
# A file of two PART_SAMPLES or more is not decoded where only a claim would count and its
# snippet judges it under this (its whole length may correlate better: no gate otherwise).
# Half A (bench/fit_timeline.py LONG_HEAD_MIN_RHO=...): the long files claimed so judged 0.74
# or more on their snippets; 0.60, 0.65, 0.70 and no gate gave the same 223/227 right/exact
# entries; 0.60 halved the 109 refinements that ended `similar` after a claim (0.6 of 6.7 s).
LONG_HEAD_MIN_RHO = 0.60
HEAD_MARGIN_RHO = 0.05  # a one-shot judged this far under SIMILAR_RHO on its snippet is dropped
ABANDON_RHO = 0.4  # a candidate refined this far below is dropped (saves long windows)
MIN_STEP = 0.00002  # refinement ends at this speed step, or where a step drifts the
MIN_STEP_SAMPLES = 0.5  # sound's end by less than this many samples (and the whole length)
PART_SAMPLES = 5512  # 250 ms: a long file is also aligned part by part (speed to ~1e-5) ...
PART_LAGS = (24, 6)  # ... within these lags (samples), a pass each
PART_MIN_RHO = 0.5  # ... from the parts correlating at least this well
MERGE_S = 0.03  # s: the same file this close is the same occurrence
# Fitted on half A (bench/timeline.py --half A, 4 beats): the quietest right claim was 17.5 dB
# below the track over its judged window, the loudest claim of a subtraction's leftovers 25.6.
QUIET_DB = -20.0  # a sound this far below the track where it plays is not claimed
SECOND_SOUND_DB = QUIET_DB  # a residual this far below the track after a claim: no 2nd sound
RESIDUE_DB = -30.0  # a candidate this far below the explained sounds under it is their residue
CONFIDENCE_SLOPE = 18.0  # logistic of rho (set by hand on kits A; not calibrated)
CONFIDENCE_MID = 0.70
# Library waveforms kept decoded (an 8-s file takes 3.5 MB). Half A's 4 beats decoded 300
# distinct files 465 times with 64 MB (1.3 of ~7.5 CPU s), and the snippets were upsampled
# 869 times with 16 MB: 192 MB and 96 MB took 7.0-7.4 to 6.5-6.8 CPU s, the same entries.
REF_CACHE_BYTES = 160 * 2**20
HEAD_CACHE_BYTES = 64 * 2**20  # stored snippets kept upsampled (~110 kB each: ~600 of them)
UPSAMPLE = 4  # library waveforms are placed by linear interpolation of a 4x upsampled copy
MIN_SPEED, MAX_SPEED = SPEED_GRID[0] * 0.98, SPEED_GRID[-1] * 1.02
# The longest a matched sound plays in the track (MAX_SOUND_S slowed to MIN_SPEED), in
# samples: a sound is judged once all of it (and the lag search around it) has been read.
LOOKAHEAD_SAMPLES = math.ceil(MAX_SOUND_S / MIN_SPEED * WAVE_SR) + 2 * LAG_SAMPLES
BUFFER_S = 2 * LOOKAHEAD_SAMPLES / WAVE_SR + 2.0  # s of track (and its explained part) held


@dataclass(frozen=True)
class Entry:
    """One occurrence of a library file in the track."""

    file_id: int
    path: str
    start_s: float  # where the file's first sample plays in the track
    end_s: float  # where its last matched sample (at most MAX_SOUND_S of the file) plays
    gain_db: float  # its level relative to the file as stored
    speed: float  # resampling factor (>1: faster and higher)
    rho: float  # normalised correlation over the first 250 ms (or the whole sound)
    confidence: float
    kind: str  # "exact" (claimed and subtracted) or "similar" (a lead)

    def record(self) -> dict[str, Any]:
        """The entry as the CLI prints it (JSON-ready)."""
        return {
            "path": self.path, "file_id": self.file_id, "start_s": round(self.start_s, 4),
            "end_s": round(self.end_s, 4),
            "gain_db": round(self.gain_db, 2), "speed": round(self.speed, 5),
            "semitones": round(12 * math.log2(self.speed), 3), "rho": round(self.rho, 4),
            "confidence": round(self.confidence, 4), "kind": self.kind,
        }


@dataclass
class Result:
    """What :meth:`Timeline.run` found in one track."""

    entries: list[Entry]
    duration_s: float
    onsets: int  # onsets examined
    reason: str | None = None  # why there is no entry at all (silence), else None
    onset_s: list[float] | None = None  # where they were (s), for benchmarks' breakdowns


@dataclass
class _Ref:
    """A library file's waveform at WAVE_SR (first MAX_SOUND_S) and its onset sample."""

    y: np.ndarray
    onset: int
    # y at UPSAMPLE x WAVE_SR (interpolated between samples without HF loss), then one zero:
    # the interpolation reads the sample after each position without clipping its index.
    up: np.ndarray
    avail: int = 0  # samples from the pre-roll to the end of the sound (a snippet's: its own)

    @property
    def n_up(self) -> int:
        """Samples of the upsampled waveform (``up`` without its padding zero)."""
        return len(self.up) - 1

    @property
    def nbytes(self) -> int:
        """Memory held by the decoded waveforms."""
        return int(self.y.nbytes + self.up.nbytes)


class _RefCache:
    """Waveforms by file id, least recently used dropped first once they hold more than
    ``bound`` bytes (bounded in bytes, not files: 128 long files would hold ~450 MB). The
    newest stays even when it alone is over the bound."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.refs: OrderedDict[int, _Ref] = OrderedDict()  # least recently used first
        self.nbytes = 0  # their total nbytes

    def get(self, file_id: int) -> _Ref | None:
        ref = self.refs.get(file_id)
        if ref is not None:
            self.refs.move_to_end(file_id)
        return ref

    def put(self, file_id: int, ref: _Ref) -> _Ref:
        self.refs[file_id] = ref
        self.nbytes += ref.nbytes
        while self.nbytes > self.bound and len(self.refs) > 1:
            _fid, old = self.refs.popitem(last=False)
            self.nbytes -= old.nbytes
        return ref


def confidence(rho: float) -> float:
    """Confidence (0..1) of an entry with fine correlation ``rho``."""
    return float(1.0 / (1.0 + math.exp(-CONFIDENCE_SLOPE * (rho - CONFIDENCE_MID))))


class Timeline:
    """Finds library samples in tracks (see the module docstring).

    Parameters
    ----------
    library : emberd.library.query.Library
        An open library (its stored snippets and file paths are used).
    """

    def __init__(self, library: Any) -> None:
        self.library = library
        self.files = library.files()
        self.index = HitIndex.from_library(library)
        if len(self.index) == 0:
            raise EmberdError("the library holds no onset snippets (run 'emberd index' again)")
        self._refs = _RefCache(REF_CACHE_BYTES)  # decoded library files
        self.decodes = 0  # library files decoded (a cache miss each)
        self._row = {int(f): i for i, f in enumerate(self.index.file_ids.tolist())}
        self._heads = _RefCache(HEAD_CACHE_BYTES)  # upsampled stored snippets
        self.bank, self.bank_energy = _speed_bank(self.index)
        self.same_attack, self.neighbours = _same_attack(self.index)
        # The detector's filters (and scipy.signal's import, ~0.5 s) once, with the engine,
        # not in the first track's time.
        OnsetDetector(sr=WAVE_SR)

    # -- library waveforms ------------------------------------------------------------

    def _ref(self, file_id: int) -> _Ref:
        """The file's waveform (cached); its stored snippet when the file cannot be read."""
        ref = self._refs.get(file_id)
        if ref is not None:
            return ref
        from emberd.dsp.sources import load_audio

        self.decodes += 1
        try:
            y, _info = load_audio(self.files[file_id].path, sr=WAVE_SR, mono=True)
            y = y[: int(MAX_SOUND_S * WAVE_SR)]
            onset = onset_sample(y)
        except (EmberdError, OSError, KeyError):
            y = self.index.snippet(self._row[file_id])
            onset = PRE_ROLL_SAMPLES
        # Room before the onset for the compared pre-roll.
        if onset < PRE_SAMPLES:
            y = np.concatenate([np.zeros(PRE_SAMPLES - onset, np.float32), y])
            onset = PRE_SAMPLES
        import soxr

        y = np.ascontiguousarray(y, np.float32)
        return self._refs.put(file_id, _Ref(y, onset, _upsampled(y, soxr)))

    def _head(self, file_id: int) -> _Ref:
        """The file's stored snippet as a _Ref (its first 250 ms from the pre-roll, no
        decoding); ``avail`` ends at its last non-zero sample (a shorter file is padded).
        Cached (least recently used out past HEAD_CACHE_BYTES): a beat repeats its
        samples, and the same files are candidates at many onsets."""
        head = self._heads.get(file_id)
        if head is not None:
            return head
        import soxr

        y = self.index.snippet(self._row[file_id])
        up = _upsampled(y, soxr)
        nz = np.flatnonzero(y)
        end = int(nz[-1]) + 1 if len(nz) else len(y)
        avail = max(end - (PRE_ROLL_SAMPLES - PRE_SAMPLES), 1)
        return self._heads.put(file_id, _Ref(y, PRE_ROLL_SAMPLES, up, avail))

    # -- streaming ----------------------------------------------------------------------

    def run(self, path: str | os.PathLike[str]) -> Result:
        """Find every library sample in the file at ``path``.

        Raises
        ------
        EmberdError
            The file cannot be read (one line, naming it).
        """
        from emberd.dsp.sources import FileSource

        with FileSource(path, sr=None, mono=True, block_size=READ_BLOCK, pace="fast") as src:
            return self.run_blocks((b.data[:, 0] for b in src), src.sr)

    def run_blocks(self, blocks: Iterator[np.ndarray], sr: int = WAVE_SR) -> Result:
        """:meth:`run` over mono blocks at ``sr`` (any sizes, in order).

        The silence rule looks at the samples as they are; the engine gets them at
        WAVE_SR through a streaming resampler.
        """
        import soxr

        from emberd.library.query import one_blas_thread

        # One BLAS thread: the products here are small (a few hundred rows), and a second
        # BLAS thread spinning for its share cost 3x the wall time on the shared 2-core box
        # (9.4 s -> 2.9 s per 30-s beat at load 10, same entries). The query path's limit:
        # its controller is looked up once, and it leaves other threads' BLAS alone.
        with one_blas_thread():
            return self._run_blocks(blocks, sr, soxr)

    def _run_blocks(self, blocks: Iterator[np.ndarray], sr: int, soxr: Any) -> Result:
        s = _Stream(self)
        rs = None if sr == WAVE_SR else soxr.ResampleStream(sr, WAVE_SR, 1, dtype="float32",
                                                             quality="HQ")
        for block in blocks:
            x = np.asarray(block, np.float32).reshape(-1)
            s.observe(x)
            s.feed(x if rs is None else rs.resample_chunk(x))
        if rs is not None:
            s.feed(rs.resample_chunk(np.zeros(0, np.float32), last=True))
        return s.finish()


class _Stream:
    """One track in flight: the buffer, the explained part, the detector, the entries."""

    def __init__(self, tl: Timeline) -> None:
        self.tl = tl
        cap = int(BUFFER_S * WAVE_SR)
        self.x = np.zeros(cap, np.float32)  # track samples base .. base + cap
        self.known = np.zeros(cap, np.float32)  # identified samples placed there
        self.cover = np.zeros(cap, bool)
        self.base = -LEAD_IN  # absolute sample of x[0] (track sample 0 is absolute 0)
        self.end = 0  # absolute: one past the last sample read
        self.det_pos = -LEAD_IN  # next absolute sample for the detector
        self.det = OnsetDetector(sr=WAVE_SR)
        # A second detector on the raw track at the read position: where the next sounds
        # start, so a sound is judged before the next one covers it.
        self.ahead = OnsetDetector(sr=WAVE_SR)
        self.upcoming: list[int] = []  # absolute onsets from ``ahead``, not yet passed
        # Entries still playing where new ones may start (merged, covered, absorbed: the
        # only ones each new entry is compared with), and those long done.
        self.entries: list[Entry] = []
        self.done: list[Entry] = []
        self.recent: OrderedDict[int, None] = OrderedDict()
        self.onsets = 0
        self.onset_s: list[float] = []
        self.fed = 0  # track samples fed at WAVE_SR
        self.n = 0  # track samples observed (at the file's rate)
        self.total = 0.0  # their sum (for the mean)
        self.vmax, self.vmin = -math.inf, math.inf  # extremes of the track samples
        self.lookahead = LOOKAHEAD_SAMPLES

    def _i(self, a: int) -> int:
        return a - self.base

    def observe(self, block: np.ndarray) -> None:
        """Count the track's samples as read (any rate) for the silence rule."""
        if len(block):
            self.n += len(block)
            self.total += float(block.sum(dtype=np.float64))
            self.vmax = max(self.vmax, float(block.max()))
            self.vmin = min(self.vmin, float(block.min()))

    def feed(self, block: np.ndarray) -> None:
        """Append track samples at WAVE_SR; detect and explain all the lookahead allows."""
        self.fed += len(block)
        self._append(np.asarray(block, np.float32).reshape(-1))

    def _append(self, block: np.ndarray) -> None:
        pos = 0
        while pos < len(block):
            room = len(self.x) - self._i(self.end)
            if room <= 0:
                self._shift()
                continue
            m = min(room, len(block) - pos)
            self.x[self._i(self.end) : self._i(self.end) + m] = block[pos : pos + m]
            self.upcoming += [o - LEAD_IN for o in self.ahead.push(
                self.x[self._i(self.end) - (LEAD_IN if self.end == 0 else 0) : self._i(self.end)
                       + m])]
            self.end += m
            pos += m
            self._detect(self.end - self.lookahead)

    def finish(self) -> Result:
        """Detect to the end of the track (silence after it) and return the result."""
        pad = self.lookahead + DETECT_BLOCK
        while pad > 0:
            m = min(pad, READ_BLOCK)
            self._append(np.zeros(m, np.float32))
            pad -= m
        entries = sorted(self.done + self.entries, key=lambda e: (e.start_s, e.path))
        reason = None if entries else self._silence_reason()
        return Result(entries, self.fed / WAVE_SR, self.onsets, reason, self.onset_s)

    def _silence_reason(self) -> str | None:
        """Why the track holds no sound, as :func:`emberd.dsp.silence.no_sound_reason` says
        it (streamed: the peak about the mean from the running maximum and minimum)."""
        if self.n == 0:
            return "no sound: empty"
        if self.vmax == 0.0 and self.vmin == 0.0:
            return "no sound: digital silence"
        mean = self.total / self.n
        ac_peak = max(self.vmax - mean, mean - self.vmin)
        if ac_peak >= 10 ** (QUERY_FLOOR_DBFS / 20):
            return None
        db = 20 * math.log10(max(ac_peak, 1e-12))
        if max(abs(self.vmax), abs(self.vmin)) >= 10 ** (QUERY_FLOOR_DBFS / 20):
            return f"no sound: DC offset only (signal peak {db:.1f} dBFS)"
        return f"no sound: below the noise floor (peak {db:.1f} dBFS < {QUERY_FLOOR_DBFS:g} dBFS)"

    def _shift(self) -> None:
        """Drop the oldest samples: keep what the detector and pre-roll still need."""
        keep_from = self.det_pos - 2 * LAG_SAMPLES - EARLY_SAMPLES
        drop = self._i(keep_from)
        if drop <= 0:
            raise AssertionError("timeline buffer too small for its lookahead")
        for arr in (self.x, self.known, self.cover):
            arr[:-drop] = arr[drop:]
            arr[-drop:] = 0
        self.base += drop

    def _detect(self, until: int) -> None:
        """Run the detector up to absolute sample ``until``, explaining each onset.

        Block by block (DETECT_BLOCK), so that an explanation is subtracted before the
        detector reads on; but as most blocks hold no onset, up to SPECULATE_BLOCKS are
        pushed at once (the detector saved first), and only when that finds an onset is
        the saved detector put back and pushed again: the blocks before the onset's in one
        push, then the onset's block on its own (a push per block cost 1.7 of the 9 CPU s
        of half A's beats)."""
        while self.det_pos + DETECT_BLOCK <= until:
            n = min((until - self.det_pos) // DETECT_BLOCK, SPECULATE_BLOCKS)
            if n > 1:
                saved = copy.deepcopy(self.det)
                found = self._push(n)
                if not found:
                    self.det_pos += n * DETECT_BLOCK
                    continue
                self.det = saved
                # The blocks before the first onset's in one push (none of them completes
                # an onset: the same pushes found none there), then the onset's block.
                before = (found[0] - self.det_pos) // DETECT_BLOCK
                if before > 0:
                    self._push(before)
                    self.det_pos += before * DETECT_BLOCK
                n = 1
            for o in self._push(n):
                while self.upcoming and self.upcoming[0] < self.det_pos - EARLY_SAMPLES:
                    self.upcoming.pop(0)
                self._explain(o)
            self.det_pos += n * DETECT_BLOCK

    def _push(self, n_blocks: int) -> list[int]:
        """Push ``n_blocks`` blocks from the detector's position; absolute onsets."""
        a = self._i(self.det_pos)
        sl = slice(a, a + n_blocks * DETECT_BLOCK)
        # The detector counts from its first sample, absolute -LEAD_IN.
        return [o - LEAD_IN for o in self.det.push(self.x[sl], self.known[sl], self.cover[sl])]

    # -- one onset ------------------------------------------------------------------------

    def _residual(self, a: int, b: int) -> np.ndarray:
        """Track minus explained samples, absolute ``a .. b`` (zeros outside the buffer)."""
        if a >= self.base and b <= self.end:  # (most windows: no zero-filled copy first)
            return self.x[self._i(a) : self._i(b)] - self.known[self._i(a) : self._i(b)]
        out = np.zeros(b - a, np.float32)
        lo, hi = max(a, self.base), min(b, self.end)
        if hi > lo:
            out[lo - a : hi - a] = self.x[self._i(lo) : self._i(hi)] - self.known[
                self._i(lo) : self._i(hi)]
        return out

    def _explain(self, onset: int) -> None:
        self.onsets += 1
        self.onset_s.append(onset / WAVE_SR)
        claimed: set[int] = set()
        for k in range(SOUNDS_PER_ONSET):
            entry = self._best(onset, claimed, None if k == 0 else RETRY_MIN_RHO)
            # Nothing at the detected onset: the sound may start up to 25 ms off it (a
            # slow-rising cymbal, a hit under another's tail) where the attack search
            # (+-LAG_SAMPLES) does not reach: looked for again from shifted anchors.
            for shift in ANCHOR_SHIFTS if entry is None and k == 0 else ():
                entry = self._best(onset + shift, claimed, RETRY_MIN_RHO)
                if entry is not None:
                    break
            if entry is None:
                return
            self._add(entry)
            if entry.kind != "exact" or self._explained_at(onset):
                return
            claimed.add(entry.file_id)

    def _explained_at(self, onset: int) -> bool:
        """Whether the sounds claimed so far leave less than SECOND_SOUND_DB of the track's
        energy in the residual over the coarse window at ``onset`` (its attack and
        +-LAG_SAMPLES): a further sound starting there would be that far below the track
        at its attack, where QUIET_DB rules out a claim (half A: no second sound was ever
        claimed under that level, and those searches cost a tenth of the CPU)."""
        a, b = onset - PRE_SAMPLES - LAG_SAMPLES, onset + COARSE_SAMPLES + LAG_SAMPLES
        rest = self._residual(a, b).astype(np.float64)
        lo, hi = max(a, self.base), min(b, self.end)
        x = self.x[self._i(lo) : self._i(hi)].astype(np.float64)
        return float(rest @ rest) < float(x @ x) * 10 ** (SECOND_SOUND_DB / 10)

    def _candidates(self, onset: int, speeds: tuple[float, ...] | None = None) -> list[int]:
        seg = self._residual(onset - DESC_OFFSET_SAMPLES - 64, onset + 2 * EARLY_SAMPLES)
        files: dict[int, None] = {}
        queries = []
        for s in CANDIDATE_SPEEDS if speeds is None else speeds:
            q = seg if s == 1.0 else _resampled(seg, s)
            queries.append(q[64 : 64 + EARLY_SAMPLES] if s == 1.0
                           else q[round(64 * s) :][:EARLY_SAMPLES])
        # The speeds' queries in one descriptor pass and one search.
        for rows in self.tl.index.candidates_many(queries, EARLY_SAMPLES, CANDIDATES):
            files.update(dict.fromkeys(int(self.tl.index.file_ids[r]) for r in rows))
        # Files that start with the same attack as a candidate (a loop and its first hit).
        for f in list(files):
            files.update(dict.fromkeys(self.tl.same_attack.get(f, ())))
        files.update(dict.fromkeys(reversed(self.recent)))
        return list(files)

    def _best(self, onset: int, claimed: set[int], min_rho: float | None = None
              ) -> Entry | None:
        """The entry of the sound starting at ``onset`` (None when nothing is found): the
        candidates' attacks correlated at every grid speed, those at ``min_rho`` or more
        refined (COARSE_MIN_RHO when None), the best kept (see the module docstring)."""
        speeds = None if min_rho is None else RETRY_SPEEDS  # a retry: min_rho is given
        min_rho = COARSE_MIN_RHO if min_rho is None else min_rho
        ids = [f for f in self._candidates(onset, speeds) if f not in claimed]
        if not ids:
            return None
        tl = self.tl
        rows = np.array([tl._row[f] for f in ids])
        # Coarse: every candidate's attack at every grid speed (precomputed bank spectra)
        # against the residual at the track's own rate, over +-LAG_SAMPLES.
        win = self._residual(onset - PRE_SAMPLES - LAG_SAMPLES, onset + COARSE_SAMPLES
                             + LAG_SAMPLES)
        rho, lag = _coarse_ncc(win, tl.bank[rows], tl.bank_energy[rows])
        ids, rho, lag = self._add_neighbours(win, ids, rho, lag, claimed, min_rho)
        rho, lag = rho.T, lag.T  # [speeds, candidates]
        g = np.argmax(rho, axis=0)
        cols = np.arange(len(ids))
        best_rho, best_lag = rho[g, cols], lag[g, cols]
        found: list[tuple[float, float, Entry]] = []
        at: dict[int, int] = {}  # file id -> its candidate column, for the second speeds
        order = np.argsort(-best_rho)
        # The best few, and every near-tie of the best (a loop starts like its first hit).
        ties = int(np.sum(best_rho >= best_rho[order[0]] - COARSE_TIE_RHO))
        for i in order[: max(REFINE_TOP, min(ties, REFINE_TIES))].tolist():
            if best_rho[i] < min_rho:
                break
            speed = SPEED_GRID[int(g[i])]
            # The template's first sample sat at win[lag]: the file's sample
            # (onset - PRE_SAMPLES) plays there.
            pos = onset - PRE_SAMPLES - LAG_SAMPLES + float(best_lag[i])
            # Once a claim is found, only claims matter here (the pool keeps exact entries):
            # a short file whose snippet judges it below EXACT_RHO is not decoded.
            exact_found = any(f[2].kind == "exact" for f in found)
            fit = self._refine(ids[i], speed, pos, exact_found)
            g0 = int(g[order[0]])
            if (abs(int(g[i]) - g0) > 1
                    and tl.files[ids[i]].duration_s * WAVE_SR >= LONG_FILE_SAMPLES):
                # A loop is also tried at the speed of the best attack: a loop starting
                # with a one-shot's hit may correlate best at another speed over its first
                # 10 ms (its hit mixed with another) and then miss its whole-length peak.
                other = self._refine(ids[i], SPEED_GRID[g0], onset - PRE_SAMPLES
                                     - LAG_SAMPLES + float(lag[g0, i]))
                if other is not None and (fit is None or other[1].rho > fit[1].rho):
                    fit = other
            if fit is not None and fit[1].rho >= SIMILAR_RHO:
                found.append((fit[0], fit[1].rho, fit[1]))
            at[ids[i]] = i
        if not found:
            return None
        pool = [f for f in found if f[2].kind == "exact"] or found
        # The best-correlated file, unless another explains clearly more of the track (a
        # loop beginning with that file's sound explains the hits after it too).
        best = max(pool, key=lambda f: f[1])
        most = max(pool, key=lambda f: f[0])
        win_entry = (most if most[0] > LONGER_EXPLAINS * best[0] else best)[2]
        i = at.get(win_entry.file_id)
        if win_entry.kind == "exact" and win_entry.rho < SECOND_SPEED_MAX_RHO and i is not None:
            # The claimed file from its second speed too: kept where it correlates better.
            fit = self._second_speed(onset, ids[i], rho[:, i], lag[:, i], int(g[i]))
            if (fit is not None and fit[1].kind == "exact" and fit[1].rho > win_entry.rho
                    and abs(fit[1].speed / win_entry.speed - 1) > SECOND_SPEED_SAME):
                win_entry = fit[1]
        return win_entry

    def _second_speed(
        self, onset: int, file_id: int, rho: np.ndarray, lag: np.ndarray, g: int
    ) -> tuple[float, Entry] | None:
        """One candidate refined again from its best grid speed at least SECOND_SPEED_STEPS
        grid steps from its best ``g`` (the fine search reaches about one step from where it
        starts), when that attack correlates within SECOND_SPEED_RHO of the best (``rho``,
        ``lag``: the candidate's coarse correlations and lags by grid speed). Over 10 ms a
        foot hat or a pedal hat correlates nearly as well several percent off its speed
        (half A: x1.0 taken for x1.045, x0.95 for x1.056), and the climb from there never
        reaches its peak. None when there is no such speed or the refinement fails."""
        far = np.abs(np.arange(len(rho)) - g) >= SECOND_SPEED_STEPS
        if not far.any():
            return None
        k = int(np.flatnonzero(far)[np.argmax(rho[far])])
        if rho[k] < rho[g] - SECOND_SPEED_RHO or rho[k] < COARSE_MIN_RHO:
            return None
        return self._refine(file_id, SPEED_GRID[k], onset - PRE_SAMPLES - LAG_SAMPLES
                            + float(lag[k]), True)

    def _add_neighbours(
        self, win: np.ndarray, ids: list[int], rho: np.ndarray, lag: np.ndarray,
        claimed: set[int], min_rho: float,
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The candidates with the descriptor neighbours (:func:`_same_attack`) of the
        NEIGHBOUR_TOP best attacks added, their attacks correlated too (rows appended to
        ``rho`` and ``lag``, [candidates, speeds]). The descriptor search on a residual
        mixed with other sounds may return a file's velocity layers but not the file (half
        A: a foot hat at x0.95 whose attack correlated 0.98 was no candidate; four of its
        layers were, at 0.92-0.97)."""
        best = rho.max(axis=1)
        have = set(ids)
        add: dict[int, None] = {}
        for i in np.argsort(-best)[:NEIGHBOUR_TOP].tolist():
            if best[i] < max(min_rho, NEIGHBOUR_MIN_RHO):
                break
            for f in self.tl.neighbours.get(ids[i], ()):
                if f not in have and f not in claimed:
                    add[f] = None
        if not add:
            return ids, rho, lag
        tl = self.tl
        rows = np.array([tl._row[f] for f in add])
        r2, l2 = _coarse_ncc(win, tl.bank[rows], tl.bank_energy[rows])
        return ids + list(add), np.concatenate([rho, r2]), np.concatenate([lag, l2])

    def _refine(
        self, file_id: int, speed: float, pos: float, exact_only: bool = False
    ) -> tuple[float, Entry] | None:
        """Refine the speed and place (``pos``: track sample where the file's sample
        ``onset - PRE_SAMPLES`` plays) of one candidate; its explained energy and entry.

        Every candidate is refined on its stored snippet first (its first 250 ms): one
        whose attack correlates under ABANDON_RHO there is dropped undecoded, and so is a
        file shorter than two PART_SAMPLES (the length from which files are aligned part
        by part) whose judged correlation there, on its first 250 ms at most, is under
        SIMILAR_RHO - HEAD_MARGIN_RHO (decoding was a third of the time; most candidates
        fail here); with ``exact_only`` (only a claim would count), under EXACT_RHO -
        HEAD_MARGIN_RHO, and a longer file under LONG_HEAD_MIN_RHO (half A: 347 refinements
        ending ``similar`` took a fifth of the CPU, 131 of them after a claim at the same
        onset)."""
        tl = self.tl
        step = FINE_START_STEP
        head = tl._head(file_id)
        avail = head.avail
        n = min(FINE_START_WINDOW, avail)
        rho, pos = self._fit(head, speed, pos, n)
        # The windows the attack may rule a candidate out on (the same steps as on the
        # decoded file), then the window a one-shot is judged on. Decoded or not, every
        # candidate passes here first, so the entries do not depend on the decode cache.
        rho, speed, pos, n, step = self._climb(head, rho, speed, pos, n, step, avail,
                                               stop=SNIPPET_WINDOW)
        if rho < ABANDON_RHO and n <= self._judge_window(pos, speed):
            return None
        n_judge = min(self._judge_window(pos, speed), avail)
        if tl.files[file_id].duration_s * WAVE_SR < 2 * PART_SAMPLES:
            floor = (EXACT_RHO if exact_only else SIMILAR_RHO) - HEAD_MARGIN_RHO
        else:  # (longer files are aligned part by part before they are judged)
            floor = LONG_HEAD_MIN_RHO if exact_only else -math.inf
        if floor > -math.inf and self._fit(head, speed, pos, n_judge)[0] < floor:
            return None
        ref = tl._ref(file_id)
        avail = len(ref.y) - (ref.onset - PRE_SAMPLES)
        if n < avail:  # on as the climb would have gone on: the next window
            step /= 2
            n = min(2 * n, avail)
        n = min(n, avail)
        rho, pos = self._fit(ref, speed, pos, n, n >= avail)  # the decoded file's own rho
        rho, speed, pos, n, _ = self._climb(ref, rho, speed, pos, n, step, avail)
        return self._judge(file_id, ref, rho, speed, pos, n, avail)

    def _climb(
        self, ref: _Ref, rho: float, speed: float, pos: float, n: int, step: float, avail: int,
        stop: int | None = None,
    ) -> tuple[float, float, float, int, float]:
        """The fine search from (``rho``, ``speed``, ``pos``) on ``n`` samples: the step
        halves and the window doubles (up to ``avail``) until the step drifts the file's end
        by under MIN_STEP_SAMPLES, or the attack correlates under ABANDON_RHO, or (with
        ``stop``) after the step on the last window under ``stop`` samples. Returns rho,
        speed, pos, the last window and the last step."""
        while True:
            best = (rho, speed, pos)
            # On the first window every step/FIRST_PROBES within +-step: a bright sound's
            # correlation peaks within 0.1 % of speed even over 17 ms (a hat at +0.6 %
            # correlated 0.70 at +-0.4 % and 0.91 at its speed), so +-step alone missed it.
            k = FIRST_PROBES if n == FINE_START_WINDOW else 1
            probes = [s for s in (speed * (1 + step * j / k) for j in range(-k, k + 1) if j)
                      if MIN_SPEED <= s <= MAX_SPEED]
            if k > 1 and n < avail:  # the probes in one product (as _fit does each)
                fits = self._fit_many(ref, probes, pos, n)
            else:
                fits = [self._fit(ref, s, pos, n, n >= avail) for s in probes]
            for s, (r, p) in zip(probes, fits, strict=True):
                if r > best[0]:
                    best = (r, s, p)
            rho, speed, pos = best
            # Over long windows other sounds lower rho: only the attack may rule one out.
            # Done when the step drifts the whole file by under a sample.
            done = n >= avail and step < max(MIN_STEP_SAMPLES / avail, MIN_STEP)
            # The attack is the sound before the next one starts (a hat correlating 0.99
            # over 100 ms fell to 0.28 over 140 ms once a snare came in and was dropped).
            if (rho < ABANDON_RHO and n <= self._judge_window(pos, speed)) or done:
                break
            if stop is not None and n < avail and 2 * n > stop:
                break
            step /= 2
            if n < avail:  # a longer window (at last the whole file): the best on it first
                n = min(2 * n, avail)
                rho, pos = self._fit(ref, speed, pos, n, n >= avail)
        return rho, speed, pos, n, step

    def _judge(
        self, file_id: int, ref: _Ref, rho: float, speed: float, pos: float, n: int, avail: int
    ) -> tuple[float, Entry] | None:
        """The entry of a refined candidate (None when it is ruled out) and the energy it
        explains."""
        if rho < ABANDON_RHO and n <= self._judge_window(pos, speed):
            return None
        if avail >= 2 * PART_SAMPLES:
            # A loop's speed to ~1e-5: the hill-climb above stops in a local maximum of
            # the whole-length correlation, off by 2e-4 (8 samples at the end of a 2-s
            # loop: its hats are then left in the residual and claimed as one-shots).
            s2, p2 = self._align_parts(ref, speed, pos, avail)
            r2, p2 = self._fit(ref, s2, p2, avail, True)
            if r2 > rho:
                rho, speed, pos = r2, s2, p2
        n_judge = min(self._judge_window(pos, speed), avail)
        rho_j, _ = self._fit(ref, speed, pos, n_judge)
        # Gain over the judged window (later sounds bias a fit over the whole file); the
        # energy explained over the whole file (a loop explains its later hits too).
        gain, _ = self._gain(ref, speed, pos, n_judge)
        whole_gain, explained = self._gain(ref, speed, pos, avail)
        if avail >= LONG_FILE_SAMPLES:
            # A loop is judged over all of it too: its start may coincide with other sounds.
            rho_j, gain = max(rho_j, rho), whole_gain
        if gain <= 0 or self._residue(ref, speed, pos, n_judge, gain):
            return None
        start = pos - (ref.onset - PRE_SAMPLES) / speed
        # Over a whole loop (seconds at one exact speed) a lower correlation is as telling.
        exact_rho = LONG_EXACT_RHO if avail >= LONG_FILE_SAMPLES else EXACT_RHO
        kind = "exact" if rho_j >= exact_rho and not self._quiet(
            ref, speed, pos, n_judge, gain) else "similar"
        entry = Entry(file_id, self.tl.files[file_id].path, start / WAVE_SR,
                      (start + len(ref.y) / speed) / WAVE_SR, 20 * math.log10(gain), speed,
                      rho_j, confidence(rho_j), kind)
        return explained, entry

    def _quiet(self, ref: _Ref, speed: float, pos: float, n: int, gain: float) -> bool:
        """Whether the sound, placed at ``gain``, is over QUIET_DB below the track over its
        first ``n`` samples: what correlates there is what subtractions and tails left in
        a near-silent residual, not a sound anyone hears (listed as similar, not claimed)."""
        a = max(math.floor(pos), self.base)
        b = min(math.ceil(pos + n / speed) + 1, self.end)
        if b <= a:
            return False
        p = self._placed(ref, speed, pos, a, b).astype(np.float64) * gain
        x = self.x[self._i(a) : self._i(b)].astype(np.float64)
        return float(p @ p) < float(x @ x) * 10 ** (QUIET_DB / 10)

    def _residue(self, ref: _Ref, speed: float, pos: float, n: int, gain: float) -> bool:
        """Whether a candidate is only what subtracting an explained sound left behind:
        over its first ``n`` samples it is over RESIDUE_DB below the explained part there
        (resampling a placed file is exact to about -35 dB, and that remainder has the
        explained file's own onsets)."""
        a = math.floor(pos)
        b = min(math.ceil(pos + n / speed) + 1, self.end)
        if b <= a or not (a >= self.base and self.cover[self._i(a) : self._i(b)].any()):
            return False
        p = self._placed(ref, speed, pos, a, b).astype(np.float64) * gain
        k = self.known[self._i(a) : self._i(b)].astype(np.float64)
        return float(p @ p) < float(k @ k) * 10 ** (RESIDUE_DB / 10)

    def _judge_window(self, pos: float, speed: float) -> int:
        """File samples (from its pre-roll) that play before the next sound starts:
        JUDGE_MIN_SAMPLES .. SNIPPET_WINDOW."""
        onset = pos + PRE_SAMPLES / speed
        nxt = next((o for o in self.upcoming if o > onset + NEXT_ONSET_MIN_S * WAVE_SR), None)
        if nxt is None:
            return SNIPPET_WINDOW
        return int(np.clip((nxt - pos) * speed, JUDGE_MIN_SAMPLES, SNIPPET_WINDOW))

    def _placed(
        self, ref: _Ref, speed: float, pos: float, a: int, b: int, n: int | None = None
    ) -> np.ndarray:
        """The file at ``speed`` with its sample (onset - PRE_SAMPLES) at track ``pos``,
        over absolute samples ``a .. b`` (linear interpolation of the file); only its first
        ``n`` samples from there when given."""
        first = ref.onset - PRE_SAMPLES
        m = ref.n_up if n is None else min(ref.n_up, UPSAMPLE * (first + n))
        # Positions in ``up`` step evenly: index and fraction directly (np.interp's search
        # per point cost 15x more); zero outside the file. In place, without clipping the
        # next index (``up`` ends in a padding zero; a position is at most m - 1): a
        # third of the time the temporaries took on long windows.
        t0, dt = ((a - pos) * speed + first) * UPSAMPLE, speed * UPSAMPLE
        lo = max(0, math.ceil(-t0 / dt)) if t0 < 0 else 0
        hi = min(b - a, math.floor((m - 1 - t0) / dt) + 1)
        out = np.zeros(max(b - a, 0), np.float32)
        if hi > lo:
            t = np.arange(lo, hi, dtype=np.float64)
            t *= dt
            t += t0
            i = t.astype(np.intp)  # (t >= 0 but for rounding: truncation gives 0 there)
            t -= i
            frac = t.astype(np.float32)
            here = ref.up[i]
            i += 1
            nxt = ref.up[i]
            nxt -= here
            nxt *= frac
            nxt += here
            out[lo:hi] = nxt
        return out

    def _fit(
        self, ref: _Ref, speed: float, pos: float, n: int, whole: bool = False
    ) -> tuple[float, float]:
        """Best correlation of the file's first ``n`` samples from its pre-roll (with
        ``whole``, from its first sample) with the residual at ``speed`` within +-FINE_LAGS
        of ``pos``, and the position taking it."""
        before = (ref.onset - PRE_SAMPLES) / speed if whole else 0.0
        lo = math.floor(pos - before)
        span = math.ceil(n / speed + before) + 1
        # The file as it plays at ``speed`` from ``pos``, on the track's sample grid.
        placed = self._placed(ref, speed, pos, lo, lo + span, n)
        r, off = self._lag(placed, lo, FINE_LAGS)
        return r, pos + off

    def _fit_many(
        self, ref: _Ref, speeds: list[float], pos: float, n: int
    ) -> list[tuple[float, float]]:
        """:meth:`_fit` (from the pre-roll, not ``whole``) at several speeds in one pass: the
        placed files as rows of one matrix, correlated with the residual's windows at the
        2 * FINE_LAGS + 1 lags in one product."""
        if not speeds:
            return []
        lags = FINE_LAGS
        lo = math.floor(pos)
        sp = np.asarray(speeds, np.float64)
        spans = np.ceil(n / sp).astype(np.intp) + 1
        width = int(spans.max())
        first = ref.onset - PRE_SAMPLES
        m = min(ref.n_up, UPSAMPLE * (first + n))
        t = ((lo - pos) * sp[:, None] + first) * UPSAMPLE + (sp * UPSAMPLE)[:, None] * np.arange(
            width, dtype=np.float64)
        ok = (t >= 0) & (t <= m - 1) & (np.arange(width) < spans[:, None])
        i = np.clip(t.astype(np.intp), 0, m - 1)
        frac = (t - i).astype(np.float32)
        here = ref.up[i]
        placed = np.where(ok, here + (ref.up[i + 1] - here) * frac,
                          np.float32(0))
        seg = self._residual(lo - lags, lo + width + lags)
        windows = np.lib.stride_tricks.sliding_window_view(seg, width)  # [2 lags + 1, width]
        num = (placed @ windows.T).astype(np.float64)  # [speeds, 2 lags + 1]
        cum = np.concatenate([[0.0], np.cumsum(seg.astype(np.float64) ** 2)])
        k = np.arange(2 * lags + 1)
        w_energy = cum[k[None] + spans[:, None]] - cum[k][None]
        pp = np.einsum("ij,ij->i", placed, placed, dtype=np.float64)
        r = num / np.sqrt(w_energy * pp[:, None] + 1e-20)
        out = []
        for row in r:
            j = int(np.argmax(row))
            off = 0.0
            if 0 < j < len(row) - 1:  # parabolic sub-sample refinement, as in _lag
                d = row[j - 1] - 2 * row[j] + row[j + 1]
                off = float(np.clip(0.5 * (row[j - 1] - row[j + 1]) / d, -0.5, 0.5)) \
                    if d < 0 else 0.0
            out.append((float(row[j]), pos + (j - lags) + off))
        return out

    def _lag(self, placed: np.ndarray, lo: int, lags: int) -> tuple[float, float]:
        """Best normalised correlation of ``placed`` (samples from absolute ``lo``) with
        the residual within +-``lags`` samples, and that lag (sub-sample, parabolic)."""
        span = len(placed)
        seg = self._residual(lo - lags, lo + span + lags)
        num = np.correlate(seg, placed, "valid").astype(np.float64)  # [2 * lags + 1]
        # Window energies at the 2 * lags + 1 lags: the shared middle once, the edges.
        w = 2 * lags
        mid = float(seg[w:span] @ seg[w:span]) if span > w else 0.0
        head = np.concatenate([np.cumsum(seg[:w][::-1].astype(np.float64) ** 2)[::-1], [0.0]])
        tail = np.concatenate([[0.0], np.cumsum(seg[span : span + w].astype(np.float64) ** 2)])
        w_energy = mid + head + tail if span > w else np.array(
            [float(seg[k : k + span] @ seg[k : k + span]) for k in range(w + 1)])
        r = num / np.sqrt(w_energy * float(placed @ placed) + 1e-20)
        k = int(np.argmax(r))
        off = 0.0
        if 0 < k < len(r) - 1:  # parabolic sub-sample refinement of the lag
            d = r[k - 1] - 2 * r[k] + r[k + 1]
            off = float(np.clip(0.5 * (r[k - 1] - r[k + 1]) / d, -0.5, 0.5)) if d < 0 else 0.0
        return float(r[k]), (k - lags) + off

    def _align_parts(
        self, ref: _Ref, speed: float, pos: float, avail: int
    ) -> tuple[float, float]:
        """Speed and place of a long file from the lags of its parts: each PART_SAMPLES of
        the file (from its pre-roll) is aligned on its own within +-lags; a line through
        the lags (weighted by correlation) over the file's time corrects 1 / speed (slope)
        and the place (intercept). Parts correlating under PART_MIN_RHO are left out."""
        n_parts = avail // PART_SAMPLES
        for lags in PART_LAGS:
            at, lag, weight = [], [], []
            for k in range(n_parts):
                f0 = k * PART_SAMPLES
                lo = math.floor(pos + f0 / speed)
                span = math.ceil(PART_SAMPLES / speed) + 1
                if lo + span + lags > self.end:
                    break
                # Where file sample f0 (from the pre-roll) plays: lo + frac.
                placed = self._placed(ref, speed, pos, lo, lo + span, f0 + PART_SAMPLES)
                r, d = self._lag(placed, lo, lags)
                if r >= PART_MIN_RHO:
                    at.append(f0 + PART_SAMPLES / 2)
                    lag.append(d)
                    weight.append(r)
            if len(at) < 2 or max(at) - min(at) < PART_SAMPLES:
                break
            slope, icept = np.polyfit(np.array(at), np.array(lag), 1, w=np.array(weight))
            speed, pos = 1.0 / (1.0 / speed + float(slope)), pos + float(icept)
        return speed, pos

    def _gain(self, ref: _Ref, speed: float, pos: float, n: int) -> tuple[float, float]:
        """Least-squares gain of the file's first ``n`` samples (from its pre-roll) at their
        place, and the energy of the residual they explain."""
        a = math.floor(pos) - 1
        b = math.ceil(pos + n / speed) + 1
        b = min(b, self.end)
        p = self._placed(ref, speed, pos, a, b).astype(np.float64)
        r = self._residual(a, b).astype(np.float64)
        pp = float(p @ p)
        if pp <= 0:
            return 0.0, 0.0
        pr = float(p @ r)
        return pr / pp, pr * pr / pp

    def _retire(self) -> None:
        """Move entries that ended before any new entry can start to ``done``: a new
        entry starts at most its file's onset (< MAX_SOUND_S, slowed) before the onset
        being explained, which is at least the detector's position minus a block."""
        first = (self.det_pos - DETECT_BLOCK - LOOKAHEAD_SAMPLES) / WAVE_SR - MERGE_S
        if any(o.end_s < first for o in self.entries):
            self.done += [o for o in self.entries if o.end_s < first]
            self.entries = [o for o in self.entries if o.end_s >= first]

    def _add(self, e: Entry) -> None:
        """Record an entry (merging a repeat of one occurrence); subtract an exact one."""
        self._retire()
        for j, old in enumerate(self.entries):
            if old.file_id == e.file_id and abs(old.start_s - e.start_s) <= MERGE_S:
                if e.rho > old.rho:
                    self.entries[j] = e
                return
        if any(o.kind == "exact" and o.file_id != e.file_id and self._covers(o, e)
               and self._part_of(e, o) for o in self.entries):
            return  # a sound of a loop already found (its subtraction left a trace)
        if e.kind == "exact":
            self._absorb(e)
        self.entries.append(e)
        self.recent[e.file_id] = None
        self.recent.move_to_end(e.file_id)
        while len(self.recent) > RECENT_FILES:
            self.recent.popitem(last=False)
        if e.kind == "exact":
            self._subtract(e, 1.0)

    def _span(self, e: Entry, a: int | None = None, b: int | None = None
              ) -> tuple[int, int, np.ndarray]:
        """Where entry ``e`` plays in the buffer (absolute ``a .. b``, clipped) and its
        samples there at its gain."""
        ref = self.tl._ref(e.file_id)
        pos = e.start_s * WAVE_SR + (ref.onset - PRE_SAMPLES) / e.speed
        a0 = max(math.floor(e.start_s * WAVE_SR), self.base)
        b0 = min(math.ceil(e.start_s * WAVE_SR + len(ref.y) / e.speed) + 1,
                 self.base + len(self.x))
        a = a0 if a is None else max(a, a0)
        b = b0 if b is None else min(b, b0)
        if b <= a:
            return a, a, np.zeros(0, np.float32)
        placed = self._placed(ref, e.speed, pos, a, b) * np.float32(10 ** (e.gain_db / 20))
        return a, b, placed

    def _subtract(self, e: Entry, sign: float) -> None:
        """Add (sign 1) or remove (sign -1) an exact entry from the explained part."""
        a, b, placed = self._span(e)
        if b > a:
            self.known[self._i(a) : self._i(b)] += np.float32(sign) * placed
            self.cover[self._i(a) : self._i(b)] |= placed != 0

    @staticmethod
    def _covers(e: Entry, o: Entry) -> bool:
        """Whether ``o`` starts while ``e`` plays (no decoding: the entry knows its end)."""
        return e.start_s - MERGE_S <= o.start_s < e.end_s

    def _part_of(self, o: Entry, e: Entry) -> bool:
        """Whether entry ``o``'s attack is a sound of entry ``e`` (its waveform there)."""
        ref = self.tl._ref(o.file_id)
        a = math.floor(o.start_s * WAVE_SR + (ref.onset - PRE_SAMPLES) / o.speed)
        a, b, mine = self._span(o, a, a + JUDGE_MIN_SAMPLES)  # before a loop's next hit
        ea, eb, placed = self._span(e, a, b)
        theirs = np.zeros(b - a, np.float32)
        theirs[ea - a : eb - a] = placed
        if not len(mine):
            return False
        den = math.sqrt(float(mine @ mine) * float(theirs @ theirs)) + 1e-20
        return float(mine @ theirs) / den >= EXACT_RHO

    def _absorb(self, e: Entry) -> None:
        """Drop earlier entries that are sounds of the new one (a loop found at one of its
        loud hits, after its first hits were taken for one-shots): an earlier sound that is
        no longer in the residual once ``e`` is explained (its own subtraction undone) was
        part of ``e``; an exact one's subtraction is undone."""
        keep = []
        for o in self.entries:
            # Only sounds that end within ``e``: a loop is not a sound of its own first hit
            # (found at the loop's onset after the loop, it used to drop the loop and leave
            # its hits to be claimed as one-shots).
            if (o.file_id != e.file_id and o.end_s <= e.end_s + MERGE_S and self._covers(e, o)
                    and self._gone_with(o, e)):
                if o.kind == "exact":
                    self._subtract(o, -1.0)
                continue
            keep.append(o)
        self.entries = keep

    def _gone_with(self, o: Entry, e: Entry) -> bool:
        """Whether ``o``'s attack is absent from the track once ``e`` is explained."""
        ref = self.tl._ref(o.file_id)
        a = math.floor(o.start_s * WAVE_SR + (ref.onset - PRE_SAMPLES) / o.speed)
        a, b, mine = self._span(o, a, a + JUDGE_MIN_SAMPLES)
        if b <= a:
            return False
        rest = self._residual(a, b)
        if o.kind == "exact":
            rest += mine  # undo o's own subtraction
        ea, eb, theirs = self._span(e, a, b)
        rest[ea - a : eb - a] -= theirs
        den = math.sqrt(float(mine @ mine) * float(rest @ rest)) + 1e-20
        return float(mine @ rest) / den < SIMILAR_RHO

def _same_attack(index: HitIndex) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """For each file, up to SAME_ATTACK_MAX others whose first 46 ms after the onset have
    nearly the same descriptor (a loop and the one-shot it starts with); and its
    NEIGHBOURS nearest others by that descriptor, whatever their cosine (its velocity
    layers and siblings: see :meth:`_Stream._add_neighbours`)."""
    from emberd.library.hitindex import descriptors

    n = len(index)
    a = PRE_ROLL_SAMPLES - DESC_OFFSET_SAMPLES
    dim = descriptors(np.zeros((1, EARLY_SAMPLES), np.float32), EARLY_SAMPLES).shape[1]
    desc = np.zeros((n, dim), np.float32)
    for chunk in range(0, n, BANK_CHUNK):
        rows = np.arange(chunk, min(chunk + BANK_CHUNK, n))
        desc[rows] = descriptors(index.snippet_rows(rows)[:, a : a + EARLY_SAMPLES],
                                 EARLY_SAMPLES)
    out: dict[int, list[int]] = {}
    neighbours: dict[int, list[int]] = {}
    ids = index.file_ids
    for chunk in range(0, n, BANK_CHUNK):
        sim = desc[chunk : chunk + BANK_CHUNK] @ desc.T
        for i, row in enumerate(sim):
            row[chunk + i] = -np.inf
            near = np.nonzero(row >= SAME_ATTACK_COS)[0]
            if len(near):
                best = near[np.argsort(-row[near])[:SAME_ATTACK_MAX]]
                out[int(ids[chunk + i])] = [int(ids[j]) for j in best]
            top = min(NEIGHBOURS, n - 1)
            if top > 0:
                near = np.argpartition(-row, top - 1)[:top]
                near = near[np.argsort(-row[near], kind="stable")]
                neighbours[int(ids[chunk + i])] = [int(ids[j]) for j in near]
    return out, neighbours


def _attack_bank(index: HitIndex, rows: np.ndarray) -> np.ndarray:
    """The attacks of snippets ``rows`` as they play at each SPEED_GRID factor: float32
    [rows, speeds, PRE_SAMPLES + COARSE_SAMPLES] from PRE_SAMPLES before the onset."""
    import soxr

    n_t = PRE_SAMPLES + COARSE_SAMPLES
    margin = 64  # resampler context on both sides
    a = PRE_ROLL_SAMPLES - PRE_SAMPLES - margin
    span = int(n_t * MAX_SPEED) + 2 * margin
    bank = np.zeros((len(rows), len(SPEED_GRID), n_t), np.float32)
    heads = np.zeros((len(rows), span), np.float32)
    got = index.snippet_rows(rows)[:, max(a, 0) : a + span]
    heads[:, max(-a, 0) : max(-a, 0) + got.shape[1]] = got
    for k, s in enumerate(SPEED_GRID):
        # Played s times faster: file sample m lands at m / s.
        out = np.asarray(soxr.resample(heads.T, WAVE_SR, WAVE_SR / s, quality="HQ")).T
        first = round(margin / s)
        piece = out[:, first : first + n_t]
        bank[:, k, : piece.shape[1]] = piece
    return bank


def _speed_bank(index: HitIndex) -> tuple[np.ndarray, np.ndarray]:
    """The coarse stage's bank: every snippet's attack at every SPEED_GRID factor
    (:func:`_attack_bank`) as the conjugate spectrum of its COARSE_FFT-point transform,
    complex64 [files, speeds, COARSE_FFT // 2 + 1], and the attacks' energies
    [files, speeds] (float64)."""
    import scipy.fft

    n = len(index)
    spectra = np.zeros((n, len(SPEED_GRID), COARSE_FFT // 2 + 1), np.complex64)
    energy = np.zeros((n, len(SPEED_GRID)), np.float64)
    for chunk in range(0, n, BANK_CHUNK):
        rows = np.arange(chunk, min(chunk + BANK_CHUNK, n))
        bank = _attack_bank(index, rows)
        spectra[rows] = np.conj(scipy.fft.rfft(bank, COARSE_FFT, axis=2))
        energy[rows] = (bank.astype(np.float64) ** 2).sum(axis=2) + 1e-20
    return spectra, energy


def _coarse_ncc(
    win: np.ndarray, spectra: np.ndarray, energy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best normalised correlation of every bank attack with ``win`` and its lag.

    ``win`` holds the coarse window's residual samples (PRE_SAMPLES + COARSE_SAMPLES +
    2 * LAG_SAMPLES); ``spectra`` [files, speeds, bins] and
    ``energy`` [files, speeds] are rows of :func:`_speed_bank`. One forward transform of
    the window, one product with every attack's spectrum and one batch of inverse
    transforms give the correlations at all 2 * LAG_SAMPLES + 1 lags (the window and the
    attacks fit in COARSE_FFT samples without wrapping): what
    :func:`~emberd.library.hitindex.ncc` computes lag by lag, at about half its cost.
    Returns rho and lag, [files, speeds] each.
    """
    import scipy.fft

    n_t = PRE_SAMPLES + COARSE_SAMPLES
    n_lags = len(win) - n_t + 1
    spec = scipy.fft.rfft(np.asarray(win, np.float32), COARSE_FFT)
    x = scipy.fft.irfft(spectra * spec, COARSE_FFT, axis=-1)[..., :n_lags]
    cum = np.concatenate([[0.0], np.cumsum(win.astype(np.float64) ** 2)])
    seg_energy = cum[n_t:] - cum[: len(cum) - n_t]
    # Lags where the residual is (nearly) silent would divide by ~0: floored as ncc does.
    seg_energy = np.maximum(seg_energy, 1e-3 * seg_energy.max() + 1e-12)
    x *= (1.0 / np.sqrt(seg_energy)).astype(np.float32)
    lag = np.argmax(x, axis=-1)
    rho = np.take_along_axis(x, lag[..., None], axis=-1)[..., 0] / np.sqrt(energy)
    return rho, lag


def _upsampled(y: np.ndarray, soxr: Any) -> np.ndarray:
    """``y`` at UPSAMPLE x WAVE_SR and one padding zero (see :class:`_Ref`)."""
    up = np.asarray(soxr.resample(y, WAVE_SR, UPSAMPLE * WAVE_SR, quality="HQ"), np.float32)
    return np.concatenate([up, np.zeros(1, np.float32)])


def _resampled(y: np.ndarray, speed: float) -> np.ndarray:
    """``y`` read ``speed`` times faster: sample j of the output is y at j * ... / speed
    (so a sound played at ``speed`` is brought back to its own rate)."""
    if speed == 1.0:
        return y
    import soxr

    return np.asarray(soxr.resample(y, WAVE_SR, WAVE_SR * speed, quality="HQ"), np.float32)



def run_cli(library_path: str, paths: list[str], *, as_json: bool) -> int:
    """``emberd query FILE... --timeline [--json]``: one report per file on stdout.

    Returns the exit status: 0 all files answered, 1 some could not be read (each named
    on stderr), 2 none could.
    """
    import json
    import sqlite3
    import sys

    from emberd.library.query import Library

    library = Library.open(library_path)
    try:
        tl = Timeline(library)
        failed = 0
        for path in paths:
            try:
                res = tl.run(path)
            except sqlite3.Error:
                raise  # the library failed, not this file: the command fails (exit 2)
            except Exception as exc:  # any odd file is skipped with its reason
                failed += 1
                print(f"emberd query: {_file_error(path, exc)}", file=sys.stderr, flush=True)
                continue
            record: dict[str, Any] = {"query": str(path), "duration_s": round(res.duration_s, 3),
                                      "onsets": res.onsets,
                                      "timeline": [e.record() for e in res.entries]}
            if res.reason is not None:
                record["reason"] = res.reason
            print(json.dumps(record) if as_json else format_text(record), flush=True)
    finally:
        library.close()
    if failed == len(paths):
        return 2
    return 1 if failed else 0


def _file_error(path: str, exc: Exception) -> str:
    """One line naming ``path`` and why it could not be read (a damaged stream mid-file,
    an unreadable folder, ...), for any error: a bad file never ends the command."""
    text = " ".join(str(exc).split())  # decoders' messages can span lines
    if not isinstance(exc, EmberdError):
        text = f"cannot read audio ({type(exc).__name__}: {text})" if text else \
            f"cannot read audio ({type(exc).__name__})"
    return text if text.startswith(str(path)) else f"{path}: {text}"


def format_text(record: dict[str, Any]) -> str:
    """A timeline record as a human-readable block."""
    lines = [f"{record['query']} ({record['duration_s']:.1f} s, {len(record['timeline'])} "
             f"occurrences)"]
    if "reason" in record:
        lines.append(f"  none: {record['reason']}")
    for e in record["timeline"]:
        m, s = divmod(e["start_s"], 60.0)
        lines.append(f"  {int(m):2d}:{s:06.3f}  x{e['speed']:.3f} ({e['semitones']:+.2f} st) "
                     f"{e['gain_db']:+6.1f} dB  conf {e['confidence']:.2f} {e['kind']:7s} "
                     f"{e['path']}")
    return "\n".join(lines)
