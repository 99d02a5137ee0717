"""Audio sources: one small interface yielding float32 blocks with capture timestamps.

* :class:`FileSource`: anything libsndfile reads, resampled block by block with a
  streaming soxr resampler, channel selection or mono mix, paced at wall-clock rate
  (``pace="realtime"``) or as fast as the consumer takes blocks (``pace="fast"``);
  optionally looping. End of file is a clean end of iteration.
* :class:`SynthSource`: deterministic test signals (sines, clicks, noise bursts,
  silence, or a mix), the same samples whatever the block size.
* :func:`load_audio`: a whole file for offline use (indexer, query, ``emberd features``).

The device source lives in :mod:`emberd.dsp.device` (it needs PortAudio, imported lazily).
Bad files raise :class:`EmberdError` with a one-line reason; NaN/Inf samples in a file
reject the file.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from emberd.errors import EmberdError

F32 = npt.NDArray[np.float32]

DEFAULT_BLOCK_SIZE = 256  # frames; 5.8 ms at 44.1 kHz
SCAN_CHUNK_FRAMES = 65536  # frames read at a time when checking a file for NaN/Inf
READ_CHUNK_FRAMES = 4096  # frames read from the file per resampler call
PACES = ("realtime", "fast")
SYNTH_KINDS = ("sine", "clicks", "noise", "silence", "mix")


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare .data yourself
class Block:
    """One block of audio.

    Attributes
    ----------
    data : ndarray, float32, shape [frames, channels]
    capture_time : float
        Unix time (seconds) of the block's first sample.
    start_sample : int
        Index of the first sample since the source started.
    """

    data: F32
    capture_time: float
    start_sample: int


@runtime_checkable
class AudioSource(Protocol):
    """What the worker consumes: ``sr``, ``channels``, an iterable of Blocks, ``close()``."""

    sr: int
    channels: int

    def __iter__(self) -> Iterator[Block]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AudioInfo:
    """What a file is, as libsndfile reports it (before resampling)."""

    path: str
    sr: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        """Duration in seconds."""
        return self.frames / self.sr


def check_sample_rate(sr: Any, what: str = "sample rate") -> int:
    """Return ``sr`` as int or raise EmberdError (0, negative, non-integer)."""
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise EmberdError(f"{what} {sr!r}: must be a positive integer (Hz)")
    return int(sr)


def check_block_size(block_size: Any) -> int:
    """Return ``block_size`` as int or raise EmberdError."""
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, (int, np.integer))
        or block_size <= 0
    ):
        raise EmberdError(f"block size {block_size!r}: must be a positive integer (frames)")
    return int(block_size)


def check_pace(pace: str) -> str:
    """Return ``pace`` or raise EmberdError."""
    if pace not in PACES:
        raise EmberdError(f"pace {pace!r}: must be one of {', '.join(PACES)}")
    return pace


def _wav_header_rate(path: Path) -> int | None:
    """Sample rate field of a RIFF/WAVE header, to explain libsndfile's refusal."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 16 <= len(head):
            return int(struct.unpack("<I", head[pos + 12 : pos + 16])[0])
        pos += 8 + size + (size & 1)
    return None


def open_sound_file(path: str | os.PathLike[str]) -> Any:
    """Open ``path`` with soundfile, translating every failure into one EmberdError line.

    Returns
    -------
    soundfile.SoundFile
        Open for reading; has more than one frame and a positive sample rate.
    """
    import soundfile

    p = Path(path)
    if not p.exists():
        raise EmberdError(f"{p}: no such file")
    if p.is_dir():
        raise EmberdError(f"{p}: is a folder, not an audio file")
    if p.stat().st_size == 0:
        raise EmberdError(f"{p}: empty file")
    try:
        fh = soundfile.SoundFile(str(p))
    except (RuntimeError, OSError) as exc:  # LibsndfileError is a RuntimeError
        if _wav_header_rate(p) == 0:
            raise EmberdError(f"{p}: sample rate is 0") from None
        reason = str(exc).split(":", 1)[-1].strip().rstrip(".") or type(exc).__name__
        raise EmberdError(f"{p}: cannot read audio ({reason})") from None
    if fh.samplerate <= 0:
        fh.close()
        raise EmberdError(f"{p}: sample rate is {fh.samplerate}")
    if fh.frames <= 0:
        fh.close()
        raise EmberdError(f"{p}: no audio samples (empty)")
    if fh.frames == 1:
        fh.close()
        raise EmberdError(f"{p}: only one sample, too short to analyse")
    return fh


def _info(fh: Any, path: str | os.PathLike[str]) -> AudioInfo:
    return AudioInfo(
        path=str(Path(path)),
        sr=int(fh.samplerate),
        channels=int(fh.channels),
        frames=int(fh.frames),
        format=str(fh.format),
        subtype=str(fh.subtype),
    )


def _check_finite(data: np.ndarray, path: str | os.PathLike[str]) -> None:
    if not np.isfinite(data).all():
        raise EmberdError(f"{Path(path)}: contains NaN/Inf samples")


def _select(
    data: np.ndarray, channels: Sequence[int] | None, mono: bool
) -> np.ndarray:
    if channels is not None:
        data = data[:, list(channels)]
    if mono:
        data = data.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    return data


def _check_channels(channels: Sequence[int] | None, available: int, path: Any) -> None:
    if channels is None:
        return
    if len(channels) == 0:
        raise EmberdError(f"{path}: empty channel selection")
    for ch in channels:
        if isinstance(ch, bool) or not isinstance(ch, (int, np.integer)) or not (
            0 <= ch < available
        ):
            raise EmberdError(f"{path}: channel {ch!r} does not exist (file has {available})")


def load_audio(
    path: str | os.PathLike[str],
    *,
    sr: int | None,
    mono: bool = True,
    channels: Sequence[int] | None = None,
) -> tuple[F32, AudioInfo]:
    """Read a whole audio file, optionally resampled (soxr, high quality) and mixed to mono.

    Parameters
    ----------
    path : path-like
        Any file libsndfile reads.
    sr : int or None
        Target sample rate in Hz; ``None`` keeps the file's rate.
    mono : bool
        Mix (mean) the selected channels to one and return shape ``[n]``.
    channels : sequence of int, optional
        0-based channels to keep (default all).

    Returns
    -------
    audio : ndarray, float32, shape [n] (mono) or [n, channels]
    info : AudioInfo
        The file as it is on disk (native rate and channel count).

    Raises
    ------
    EmberdError
        Missing, unreadable, empty or one-sample file, sample rate 0, NaN/Inf samples,
        bad channel selection, bad target rate.
    """
    target = None if sr is None else check_sample_rate(sr, "target sample rate")
    fh = open_sound_file(path)
    try:
        info = _info(fh, path)
        _check_channels(channels, info.channels, Path(path))
        try:
            data = fh.read(dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as exc:
            raise EmberdError(f"{Path(path)}: cannot decode audio ({exc})") from None
    finally:
        fh.close()
    if data.shape[0] < 2:
        raise EmberdError(f"{Path(path)}: fewer than two samples could be decoded")
    _check_finite(data, path)
    data = _select(data, channels, mono)
    if target is not None and target != info.sr:
        import soxr

        data = np.asarray(soxr.resample(data, info.sr, target, quality="HQ"), dtype=np.float32)
    out = data[:, 0] if mono else data
    return np.ascontiguousarray(out, dtype=np.float32), info


class _Pacer:
    """Turns sample positions into capture times and (realtime) waits for them."""

    def __init__(self, sr: int, pace: str) -> None:
        self.sr = sr
        self.realtime = pace == "realtime"
        self.t0_wall = time.time()
        self.t0_mono = time.monotonic()

    def release(self, start: int, n: int) -> float:
        """Wait (realtime) until the block's last sample 'arrived'; return its capture time."""
        if self.realtime:
            delay = self.t0_mono + (start + n) / self.sr - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return self.t0_wall + start / self.sr


class FileSource:
    """Blocks of a file, resampled with a streaming soxr resampler.

    Parameters
    ----------
    path : path-like
    sr : int or None
        Rate the consumer wants (Hz); ``None`` keeps the file's rate.
    channels : sequence of int, optional
        0-based file channels to keep (default all).
    mono : bool
        Mix the kept channels to one.
    block_size : int
        Frames per block (the last block may be shorter).
    pace : {"realtime", "fast"}
        Release blocks at wall-clock rate, or as fast as they are taken.
    loop : bool
        Start again at the end of the file (seamlessly, the resampler keeps running).

    Raises
    ------
    EmberdError
        As :func:`load_audio`, plus bad block size or pace. The file is scanned for
        NaN/Inf once when opened, so a bad file is refused before the first block.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sr: int | None,
        channels: Sequence[int] | None = None,
        mono: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        pace: str = "realtime",
        loop: bool = False,
    ) -> None:
        self.block_size = check_block_size(block_size)
        self.pace = check_pace(pace)
        target = None if sr is None else check_sample_rate(sr, "target sample rate")
        self.path = Path(path)
        self._fh = open_sound_file(path)
        self.info = _info(self._fh, path)
        try:
            _check_channels(channels, self.info.channels, self.path)
            self._scan()
        except BaseException:
            self._fh.close()
            raise
        self._select = None if channels is None else list(channels)
        self.mono = mono
        self.loop = loop
        self.sr = target or self.info.sr
        n_sel = self.info.channels if channels is None else len(channels)
        self.channels = 1 if mono else n_sel

    def _scan(self) -> None:
        for chunk in self._fh.blocks(blocksize=SCAN_CHUNK_FRAMES, dtype="float32"):
            _check_finite(chunk, self.path)
        self._fh.seek(0)

    def _chunks(self) -> Iterator[tuple[np.ndarray, bool]]:
        """File chunks ``[n, channels]`` after selection; ``last`` marks the end of stream."""
        while True:
            data = self._fh.read(READ_CHUNK_FRAMES, dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                if self.loop:
                    self._fh.seek(0)
                    continue
                yield np.zeros((0, self.channels), dtype=np.float32), True
                return
            _check_finite(data, self.path)  # the file may have changed since the scan
            yield np.ascontiguousarray(_select(data, self._select, self.mono)), False

    def _resampled(self) -> Iterator[np.ndarray]:
        if self.sr == self.info.sr:
            for data, _ in self._chunks():
                if data.shape[0]:
                    yield data
            return
        import soxr

        stream = soxr.ResampleStream(
            self.info.sr, self.sr, self.channels, dtype="float32", quality="HQ"
        )
        for data, last in self._chunks():
            out = stream.resample_chunk(data, last=last)
            if out.shape[0]:
                yield np.asarray(out, dtype=np.float32).reshape(-1, self.channels)

    def __iter__(self) -> Iterator[Block]:
        pacer = _Pacer(self.sr, self.pace)
        pending = np.zeros((self.block_size, self.channels), dtype=np.float32)
        filled = 0
        start = 0
        for data in self._resampled():
            pos = 0
            while pos < data.shape[0]:
                n = min(self.block_size - filled, data.shape[0] - pos)
                pending[filled : filled + n] = data[pos : pos + n]
                filled += n
                pos += n
                if filled == self.block_size:
                    t = pacer.release(start, filled)
                    yield Block(pending.copy(), t, start)
                    start += filled
                    filled = 0
        if filled:
            t = pacer.release(start, filled)
            yield Block(pending[:filled].copy(), t, start)

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Synthetic signal layout (all deterministic from the absolute sample index).
CLICK_INTERVAL_S = 0.5  # one click every half second
CLICK_DECAY_S = 0.002  # exponential decay time constant of a click
BURST_INTERVAL_S = 1.0  # one noise burst per second
BURST_LENGTH_S = 0.1  # noise burst duration
MIX_SEGMENT_S = 1.0  # "mix" cycles sine, clicks, noise, silence, one second each


def synth_signal(
    kind: str,
    start: int,
    n: int,
    *,
    sr: int,
    seed: int = 0,
    freq_hz: float = 440.0,
    amplitude: float = 0.5,
) -> F32:
    """Samples ``start .. start + n - 1`` of a deterministic test signal (float32 ``[n]``).

    ``kind`` is ``"sine"`` (``freq_hz``), ``"clicks"`` (decaying impulses every
    0.5 s), ``"noise"`` (seeded white-noise bursts of 0.1 s every second),
    ``"silence"``, or ``"mix"`` (one second of each in turn). The value of a sample
    depends only on its index, so any block split gives the same signal.
    """
    if kind not in SYNTH_KINDS:
        raise EmberdError(f"synthetic signal {kind!r}: must be one of {', '.join(SYNTH_KINDS)}")
    idx = np.arange(start, start + n, dtype=np.int64)
    if kind == "silence":
        return np.zeros(n, dtype=np.float32)
    if kind == "sine":
        # Phase from the index modulo the period keeps float64 precise for long runs.
        phase = 2.0 * np.pi * freq_hz * (idx % (sr * 1000)) / sr
        return (amplitude * np.sin(phase)).astype(np.float32)
    if kind == "clicks":
        period = max(1, round(CLICK_INTERVAL_S * sr))
        age = (idx % period) / sr
        return (amplitude * np.exp(-age / CLICK_DECAY_S) * (age < 10 * CLICK_DECAY_S)).astype(
            np.float32
        )
    if kind == "noise":
        period = max(1, round(BURST_INTERVAL_S * sr))
        length = max(1, round(BURST_LENGTH_S * sr))
        out = np.zeros(n, dtype=np.float32)
        for burst in range(int(idx[0] // period), int(idx[-1] // period) + 1) if n else ():
            b0 = burst * period
            lo, hi = max(b0, start), min(b0 + length, start + n)
            if lo >= hi:
                continue
            rng = np.random.default_rng([seed, burst])
            noise = rng.uniform(-amplitude, amplitude, length).astype(np.float32)
            out[lo - start : hi - start] = noise[lo - b0 : hi - b0]
        return out
    # mix
    seg = max(1, round(MIX_SEGMENT_S * sr))
    order = ("sine", "clicks", "noise", "silence")
    out = np.zeros(n, dtype=np.float32)
    pos = start
    while pos < start + n:
        which = order[(pos // seg) % len(order)]
        end = min(start + n, (pos // seg + 1) * seg)
        out[pos - start : end - start] = synth_signal(
            which, pos, end - pos, sr=sr, seed=seed, freq_hz=freq_hz, amplitude=amplitude
        )
        pos = end
    return out


class SynthSource:
    """Deterministic synthetic audio as a source (see :func:`synth_signal`).

    Parameters
    ----------
    kind : str
        ``"sine"``, ``"clicks"``, ``"noise"``, ``"silence"`` or ``"mix"``.
    sr : int
        Sample rate in Hz.
    channels : int
        Every channel carries the same signal.
    duration_s : float or None
        Length in seconds; ``None`` runs until closed.
    block_size : int
        Frames per block.
    pace : {"fast", "realtime"}
    seed, freq_hz, amplitude
        Signal parameters.
    """

    def __init__(
        self,
        kind: str = "mix",
        *,
        sr: int = 44100,
        channels: int = 1,
        duration_s: float | None = 5.0,
        block_size: int = DEFAULT_BLOCK_SIZE,
        pace: str = "fast",
        seed: int = 0,
        freq_hz: float = 440.0,
        amplitude: float = 0.5,
    ) -> None:
        if kind not in SYNTH_KINDS:
            raise EmberdError(
                f"synthetic signal {kind!r}: must be one of {', '.join(SYNTH_KINDS)}"
            )
        self.kind = kind
        self.sr = check_sample_rate(sr)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise EmberdError(f"channels {channels!r}: must be a positive integer")
        self.channels = channels
        self.block_size = check_block_size(block_size)
        self.pace = check_pace(pace)
        if duration_s is not None and not duration_s > 0:
            raise EmberdError(f"duration {duration_s!r}: must be positive seconds")
        self.total = None if duration_s is None else round(duration_s * self.sr)
        self.seed, self.freq_hz, self.amplitude = seed, freq_hz, amplitude
        self._closed = False

    def __iter__(self) -> Iterator[Block]:
        pacer = _Pacer(self.sr, self.pace)
        start = 0
        while not self._closed and (self.total is None or start < self.total):
            n = self.block_size if self.total is None else min(self.block_size, self.total - start)
            mono = synth_signal(
                self.kind, start, n, sr=self.sr, seed=self.seed,
                freq_hz=self.freq_hz, amplitude=self.amplitude,
            )
            data = np.repeat(mono[:, None], self.channels, axis=1)
            yield Block(data, pacer.release(start, n), start)
            start += n

    def close(self) -> None:
        """Stop an endless source at the next block."""
        self._closed = True
