"""Mel front end: a batch function and a streaming class that give the same frames.

Pipeline per frame: window -> real FFT -> power (or magnitude) -> mel filterbank ->
compression -> min-max scaling (see :class:`emberd.dsp.config.FrontEndConfig`).

Allocation: :class:`StreamingFrontEnd` preallocates every scratch array at construction;
``push`` and ``flush`` then allocate no array data (``tests/test_dsp_frontend.py`` checks
this with tracemalloc). The FFT is ``numpy.fft.rfft`` with ``out=`` on **float64**
frames: measured with numpy 2.4, float64 input with ``out=`` allocates nothing, while
float32 input makes numpy allocate a converted copy plus work buffer (about 34 KB per
2048-point frame) on every call. A real DFT as a matmul with a cached basis would be
allocation-free too but costs n_fft x (n_fft + 2) multiply-adds per frame (4.2 M for
2048 points, a 33 MB float64 basis): far slower than pocketfft's ~12 us.
The filterbank product is sparse (gather, weight, ``np.add.reduceat``) rather than a
BLAS matmul: ~2000 non-zeros instead of 128 x 1025, and no BLAS thread pool, which
measured up to 10 ms for one small matmul on a loaded 2-core machine.
Frames are computed in batches of up to ``max_batch`` when a push completes several.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

from emberd.dsp.config import FrontEndConfig
from emberd.dsp.filters import config_window, mel_filterbank
from emberd.dsp.ring import FrameRing
from emberd.errors import EmberdError

F32 = npt.NDArray[np.float32]

DB_AMIN = 1e-10  # power floor before 10*log10, librosa.power_to_db's default
LOG10_1E4_GAIN = 1e4  # aiSFX: log10(1e4 * x + 1)
_INV_LN10 = 1.0 / np.log(10.0)
DEFAULT_MAX_BATCH = 32  # frames per kernel call when a push completes many
DEFAULT_FRAME_CAPACITY = 2048  # frames kept in the FrameRing (47 s at the aisfx hop)


@functools.cache
def _sparse_config(config: FrontEndConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_sparse_rows` of ``config``'s filterbank, built once per config (read-only):
    building it walks ~2000 non-zeros in Python, ~8 ms, once per file when indexing."""
    out = _sparse_rows(mel_filterbank(config))
    for a in out:
        a.flags.writeable = False
    return out


def _sparse_rows(fb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Filterbank as (bin index, weight) runs per band for ``np.add.reduceat``.

    Each mel band touches only the bins under its triangle (~2000 non-zeros of
    128 x 1025), and the sum stays in numpy ufuncs: no BLAS call, whose thread pool
    stalls badly on a loaded 2-core machine. An empty band gets one zero-weight term
    because ``reduceat`` cannot express an empty run.
    """
    cols: list[int] = []
    weights: list[float] = []
    starts: list[int] = []
    for row in np.asarray(fb, dtype=np.float64):
        nz = np.flatnonzero(row)
        starts.append(len(cols))
        if nz.size == 0:
            cols.append(0)
            weights.append(0.0)
        else:
            cols.extend(int(i) for i in nz)
            weights.extend(float(v) for v in row[nz])
    return (
        np.asarray(cols, dtype=np.intp),
        np.asarray(weights, dtype=np.float64),
        np.asarray(starts, dtype=np.intp),
    )


class _Kernel:
    """Frames ``[k, n_fft]`` -> mel ``[k, n_mels]`` in preallocated float64 scratch.

    Few numpy calls per batch, because for one frame per call (a 256-sample block and a
    1024-sample hop) the per-call overhead, not the arithmetic, is most of the cost:

    * power 2: the filterbank gathers the real and imaginary parts of each bin it uses
      straight from the complex spectrum, squares and weights them (no |X|^2 pass);
    * the log10(1e4 x + 1) gain is folded into the filterbank weights, and the
      compression constant and min-max scaling into one multiply(-add) that also casts
      to float32.
    """

    def __init__(self, config: FrontEndConfig, max_batch: int) -> None:
        self.config = config
        self.max_batch = max_batch
        self.window = config_window(config).astype(np.float64)
        cols, weights, starts = _sparse_config(config)
        if config.compression == "log10_1e4":
            weights = weights * LOG10_1E4_GAIN
        self._power2 = config.power == 2.0
        if self._power2:  # gather re and im of every used bin from the complex spectrum
            self._idx = np.stack([2 * cols, 2 * cols + 1], axis=1).ravel()
            self._weights = np.repeat(weights, 2)
            self._starts = 2 * starts
        else:
            self._idx, self._weights, self._starts = cols, weights, starts
        self._win = np.zeros((max_batch, config.n_fft), dtype=np.float64)
        self._spec = np.zeros((max_batch, config.n_bins), dtype=np.complex128)
        self._power = np.zeros((max_batch, config.n_bins), dtype=np.float64)  # power 1 only
        self._terms = np.zeros((max_batch, self._idx.shape[0]), dtype=np.float64)
        self._mel = np.zeros((max_batch, config.n_mels), dtype=np.float64)
        # Output = gain * f(mel) + offset, with f = log10 (db), ln(1 + x) (log10_1e4), x.
        span = config.scale_max - config.scale_min
        const = {"none": 1.0, "db": 10.0, "log10_1e4": float(_INV_LN10)}[config.compression]
        self._gain = const / span
        self._offset = -config.scale_min / span

    def run(self, frames: np.ndarray, out: np.ndarray) -> None:
        """Compute ``len(frames) <= max_batch`` mel frames into ``out`` (float32)."""
        k = frames.shape[0]
        win, spec, terms, mel = self._win[:k], self._spec[:k], self._terms[:k], self._mel[:k]
        np.multiply(frames, self.window, out=win)
        np.fft.rfft(win, axis=-1, out=spec)
        # Sparse filterbank product: gather the terms each band uses, weight, sum per band.
        # mode='clip': with the default 'raise' numpy buffers ``out`` (an allocation).
        if self._power2:
            np.take(spec.view(np.float64), self._idx, axis=1, out=terms, mode="clip")
            np.square(terms, out=terms)
        else:
            np.abs(spec, out=self._power[:k])
            np.take(self._power[:k], self._idx, axis=1, out=terms, mode="clip")
        np.multiply(terms, self._weights, out=terms)
        np.add.reduceat(terms, self._starts, axis=1, out=mel)
        compression = self.config.compression
        if compression == "db":
            np.maximum(mel, DB_AMIN, out=mel)
            np.log10(mel, out=mel)
        elif compression == "log10_1e4":
            np.log1p(mel, out=mel)  # log10(1 + g x) = ln(1 + g x) / ln 10, exact near 0
        np.multiply(mel, self._gain, out=out, casting="same_kind")
        if self._offset:
            np.add(out, self._offset, out=out, casting="same_kind")


def n_frames_for(n_samples: int, config: FrontEndConfig) -> int:
    """Number of frames a signal of ``n_samples`` gives (batch and stream alike)."""
    if n_samples <= 0:
        return 0
    n_fft, hop = config.n_fft, config.hop_length
    if not config.center:
        return 0 if n_samples < n_fft else 1 + (n_samples - n_fft) // hop
    if config.framing == "essentia":  # every frame starting before the end
        return -(-(n_samples + n_fft // 2) // hop)
    return 1 + (n_samples + 2 * (n_fft // 2) - n_fft) // hop


def melspectrogram(
    y: npt.ArrayLike, config: FrontEndConfig, *, max_batch: int = DEFAULT_MAX_BATCH
) -> F32:
    """Mel frames of a whole mono signal.

    Parameters
    ----------
    y : array_like, shape [n]
        Mono audio at ``config.sr``.
    config : FrontEndConfig
    max_batch : int
        Frames per kernel call (memory vs speed).

    Returns
    -------
    ndarray, float32, shape [frames, n_mels]

    Raises
    ------
    EmberdError
        If ``y`` is not 1-D or holds NaN/Inf.
    """
    x = np.asarray(y)
    if x.ndim != 1:
        raise EmberdError(f"audio shape {x.shape}: the front end takes mono 1-D samples")
    if x.size and not np.isfinite(x).all():
        raise EmberdError("audio: contains NaN/Inf samples")
    n_fft, hop = config.n_fft, config.hop_length
    n_frames = n_frames_for(x.size, config)
    out = np.zeros((n_frames, config.n_mels), dtype=np.float32)
    if n_frames == 0:
        return out
    left = n_fft // 2 if config.center else 0
    padded = np.zeros(max(left + x.size, (n_frames - 1) * hop + n_fft), dtype=np.float64)
    padded[left : left + x.size] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    kernel = _Kernel(config, min(max_batch, n_frames))
    for i in range(0, n_frames, kernel.max_batch):
        chunk = frames[i : i + kernel.max_batch]
        kernel.run(chunk, out[i : i + chunk.shape[0]])
    return out


class StreamingFrontEnd:
    """Mel frames from audio pushed in blocks of any size; equal to :func:`melspectrogram`.

    Parameters
    ----------
    config : FrontEndConfig
    frame_capacity : int
        Frames kept in :attr:`frames` (read them before they are overwritten).
    max_batch : int
        Largest number of frames computed in one kernel call.

    Attributes
    ----------
    frames : FrameRing
        The latest frames; ``frames.total`` counts every frame ever produced,
        ``frames.latest(n, out)`` copies the newest ``n`` into a preallocated array.

    Notes
    -----
    Samples live in one linear float64 buffer of ``n_fft + (max_batch - 1) * hop``
    (at least ``2 * n_fft``) samples. When it is full, the unconsumed tail (< n_fft
    samples) moves to the front; the size bound guarantees the source and destination
    never overlap, so the move is a plain copy with no temporary.
    """

    def __init__(
        self,
        config: FrontEndConfig,
        *,
        frame_capacity: int = DEFAULT_FRAME_CAPACITY,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch <= 0:
            raise EmberdError(f"max_batch {max_batch}: must be positive")
        self.config = config
        self.frames = FrameRing(frame_capacity, config.n_mels)
        self._kernel = _Kernel(config, max_batch)
        cap = max(2 * config.n_fft, config.n_fft + (max_batch - 1) * config.hop_length)
        self._buf = np.zeros(cap, dtype=np.float64)
        # Frames always start at a multiple of hop in the buffer (the compaction moves the
        # next frame to index 0), so one strided view made here serves every hop: row m
        # is the frame starting at m * hop. (as_strided per hop costs ~10 us.)
        hop = config.hop_length
        self._rows = np.lib.stride_tricks.as_strided(
            self._buf, shape=((cap - config.n_fft) // hop + 1, config.n_fft),
            strides=(hop * self._buf.itemsize, self._buf.itemsize), writeable=False,
        )
        self._zeros = np.zeros(config.n_fft, dtype=np.float64)  # right padding in flush
        self._out = np.zeros((max_batch, config.n_mels), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Start a new stream (frame counter keeps counting; frames ring is kept)."""
        self._buf[:] = 0.0
        # Centre padding: n_fft // 2 zeros before the first sample.
        self._filled = self.config.n_fft // 2 if self.config.center else 0
        self._start = 0  # buffer index of the next frame's first sample
        self._samples_in = 0  # real samples pushed in this stream
        self._stream_frames = 0  # frames emitted in this stream
        self._limit: int | None = None  # frame cap while flushing
        self._ended = False

    @property
    def total_frames(self) -> int:
        """Frames produced since construction (absolute index of the next frame)."""
        return self.frames.total

    @property
    def samples_in(self) -> int:
        """Samples pushed since the last :meth:`reset`."""
        return self._samples_in

    def push(self, samples: npt.ArrayLike) -> int:
        """Append mono samples; compute every frame they complete.

        Returns
        -------
        int
            Number of new frames (now the newest in :attr:`frames`).
        """
        if self._ended:
            raise EmberdError("front end: push after flush (call reset() first)")
        x = np.asarray(samples)
        if x.ndim != 1:
            raise EmberdError(f"audio block shape {x.shape}: the front end takes mono 1-D")
        self._samples_in += x.shape[0]
        return self._feed(x)

    def flush(self) -> int:
        """End the stream: zero-pad the right edge and emit the last frames.

        ``framing="librosa"`` ends like ``librosa.stft(center=True)``; ``"essentia"``
        like Essentia's FrameCutter (``startFromZero=False``, ``lastFrameToEndOfFile=
        False``, ``validFrameThresholdRatio=0``): every frame that starts before the end.

        Returns
        -------
        int
            Number of new frames.
        """
        if self._ended:
            return 0
        self._ended = True
        target = n_frames_for(self._samples_in, self.config)
        if target <= self._stream_frames:
            return 0
        cfg = self.config
        left = cfg.n_fft // 2 if cfg.center else 0
        have = left + self._samples_in  # padded samples so far
        need = (target - 1) * cfg.hop_length + cfg.n_fft - have
        self._limit = target
        new = 0
        while need > 0:
            n = min(need, self._zeros.shape[0])
            new += self._feed(self._zeros[:n])
            need -= n
        self._limit = None
        return new

    def _feed(self, x: np.ndarray) -> int:
        buf = self._buf
        cap = buf.shape[0]
        pos, n_total, new = 0, x.shape[0], 0
        while pos < n_total:
            if self._filled == cap:
                self._compact()
            n = min(n_total - pos, cap - self._filled)
            np.copyto(buf[self._filled : self._filled + n], x[pos : pos + n], casting="unsafe")
            self._filled += n
            pos += n
            new += self._run()
        return new

    def _compact(self) -> None:
        keep = self._filled - self._start
        # keep < n_fft <= start (see class notes): no overlap, so no temporary copy.
        self._buf[:keep] = self._buf[self._start : self._filled]
        self._start, self._filled = 0, keep

    def _run(self) -> int:
        n_fft, hop = self.config.n_fft, self.config.hop_length
        ready = 0 if self._filled - self._start < n_fft else 1 + (
            self._filled - self._start - n_fft
        ) // hop
        if self._limit is not None:
            ready = min(ready, self._limit - self._stream_frames)
        done = 0
        batch = self._kernel.max_batch
        while done < ready:
            k = min(batch, ready - done)
            row = self._start // hop
            out = self._out[:k]
            self._kernel.run(self._rows[row : row + k], out)
            self.frames.write(out)
            self._start += k * hop
            done += k
        self._stream_frames += done
        return done
