"""StreamingEncoder: per-hop aiSFX embeddings with cached conv activations.

The aiSFX conv stack (Ma & Lerch, ISMIR 2022; MIT code, CC BY 4.0 model) is
translation-equivariant in time, so consecutive windows share most of their
work. Two ways to treat the window's time edges (``edges=``):

``"exact"`` (default): each embedding IS the windowed reference
    (:class:`emberd.models.runtime.Encoder` on the last 100 frames, zero padding
    at both window edges at every layer), to float32 rounding (measured max abs
    difference ~1e-5). The reference's own activations are cached; a hop
    recomputes only the rows the 8-frame slide changes: the new rows and the
    rows the zero padding reaches at both edges, which grow by one row per conv
    (:mod:`emberd.models.streaming_exact` derives and tabulates them). No
    look-ahead: the push that delivers frame ``8k + 7`` returns the embedding of
    frames ``[8k + 8 - 100, 8k + 8)`` (``end_frame = 8k + 8``). Before 100 frames
    exist the window is left-padded with ``pad_frame`` (the daemon passes its
    front end's silence frame, like its windowed path), so embeddings flow from
    frame 8 on. Cost: 9 of 12 block-4 columns and 10 of 25 block-3 rows change
    every hop, so a hop is ~54 % of a window's multiply-adds (694 M of 1288 M):
    at most ~1.9x less work than the full window. GEMMs run at 1 BLAS thread;
    with ``threads=2`` one channel computes its left and right edge rows on
    two threads and several channels run in two groups. numpy backend only,
    by measurement: the hop's eight GEMM shapes took 16.8 ms in numpy at 1
    thread against 20.3 ms as ONNX Runtime MatMuls at 2 threads on the loaded
    2-core machine, and numpy rings slide without copying, where a fixed-shape
    ONNX step graph would copy the whole ~10 MB per channel state every hop.
    Figures: ``bench/streaming.py``.

``"continuous"``: the stream has no window edges. Every conv keeps its last
    two input rows and every pool its unpaired row, so a hop computes only the
    new rows (about a tenth of a window's work per 8 frames), but edge columns
    see the real neighbouring audio instead of zeros; see below.

Continuous mode: time grid and latency
--------------------------------------
The three 2x pools make one block-4 *column* per 8 input frames: column ``j``
pools frames ``8j .. 8j+7``. Each 3x3 conv needs one row of context on each
side at its own resolution, which adds up to 30 input frames on each side of a
column (receptive field 68 frames). The right-hand context is real later
audio, so column ``j`` exists only once frame ``8j + 37`` has arrived.
:attr:`StreamingEncoder.latency_frames` is the resulting look-ahead, counted
from the embedding's ``end_frame``: 32 frames (0.74 s at 1024-sample hops,
44.1 kHz) with the ONNX backend, which steps in whole 8-frame blocks; 30 with
the numpy backend, which runs any frame count. At the start of a stream every
layer sees zeros before row 0, exactly like the reference's zero padding.
Block-4 output is averaged over mel into a 512-d column vector; the embedding
after column ``j`` is the element-wise max over the last ``window_frames // 8``
columns (12). It covers frames ``[end_frame - 96, end_frame)`` with
``end_frame = 8j + 8``: the same columns as the 100-frame reference window
starting at ``end_frame - 96``. Until 12 columns exist the max runs over the
columns seen so far.

Continuous mode: difference from the windowed reference
-------------------------------------------------------
Columns 4-7 of a window (receptive field inside frames 0-99) agree to float
rounding; columns 0-3 and 8-11 differ (median cosine per column 0.77 / 0.93 /
0.99 at the left edge, 0.998 / 0.96 / 0.80 at the right on drums). On 154 s
of hydrogen-drumkits one-shots and a loop the cosine to the windowed
embedding of the same 100 frames is 0.946 at the 5th percentile, 0.981 at the
median; identification 79/80 against 80/80 windowed. Against the whole stream
run through the network in one piece
(:func:`emberd.models.conv_numpy.forward_columns`) every column is identical.

Hops of any size
----------------
:meth:`StreamingEncoder.push` accepts any number of frames. Frames that do not
yet complete a step wait in buffers; every completed step yields exactly one
embedding, so the sequence of embeddings does not depend on how the stream is
cut into pushes, only the push that delivers each one does.

Backends and devices
--------------------
Continuous: ``"onnx"`` (default) runs a fixed-shape step graph with state
inputs/outputs (:mod:`emberd.models.streaming_onnx`; ``device="cuda"`` keeps
the state on the GPU with IO binding), ``"numpy"`` im2col GEMMs on BLAS
(:class:`emberd.models.conv_numpy.NumpyStack`). Exact: numpy
(:class:`emberd.models.streaming_exact.ExactStack`) on the CPU whatever the
device. All are allocation-free per hop after construction; C channels share
every conv.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from emberd.errors import EmberdError
from emberd.models import conv_numpy as cn

if TYPE_CHECKING:
    from emberd.models.streaming_exact import ExactGroups
    from emberd.models.streaming_onnx import OnnxStack

log = logging.getLogger(__name__)

WINDOW_FRAMES = 100  # aiSFX EMB_BLOCK_LENGTH: 2.32 s at 1024-sample hops, 44.1 kHz
COLUMN_FRAMES = cn.TIME_STRIDE_FRAMES  # 8 input frames per block-4 column
BACKENDS = ("onnx", "numpy")
EDGES = ("exact", "continuous")
DEVICES = ("auto", "cpu", "cuda")
EXACT_BLAS_THREADS = 1  # OpenBLAS at 2 threads ran the exact hop ~10x slower on 2 loaded cores


class StreamingEncoder:
    """Incremental aiSFX encoder over a multi-channel stream of mel frames.

    Parameters
    ----------
    folded : sequence of (W [out, in, 3, 3], b [out])
        The eight BatchNorm-folded convs (``emberd.models.aisfx.folded_weights``).
    hop_frames : int
        Typical frames per :meth:`push` (the daemon's hop); sizes the buffers so
        that pushes up to this size allocate nothing.
    window_frames : int
        Reference window length in frames.
    channels : int
        Independent streams processed together in every conv.
    threads : int
        ONNX Runtime intra-op threads (continuous ``"onnx"``) or BLAS threads
        (continuous ``"numpy"``; BLAS pools are process-wide, so this sets them
        for the whole process). Exact mode runs BLAS at 1 thread
        (:data:`EXACT_BLAS_THREADS`) and steps up to ``threads`` channel groups
        in parallel instead.
    backend : {"onnx", "numpy"}, optional
        Compute path; default ``"numpy"`` for exact edges (the only one),
        ``"onnx"`` for continuous.
    spinning : bool
        ONNX Runtime only: let idle worker threads spin between hops.
    edges : {"exact", "continuous"}
        Window-edge treatment, see the module docstring.
    pad_frame : ndarray, float32 [96], optional
        Exact mode: the frame the window holds before the stream starts
        (default zeros).
    device : {"auto", "cpu", "cuda"}
        Continuous ONNX backend: execution provider, chosen and falling back to
        CPU like :class:`emberd.models.runtime.Encoder`. The numpy paths always
        run on the CPU (``"cuda"`` then logs a warning).

    Attributes
    ----------
    provider : str
        What runs the convs: the ONNX Runtime execution provider or ``"numpy"``.
    edges : str
        ``"exact"`` or ``"continuous"``.
    channels, dim, window_frames, window_columns, chunk_frames : int
        Streams, embedding size (512), window (100), columns in the max (12),
        buffer step.

    Examples
    --------
    >>> enc = StreamingEncoder(folded, hop_frames=1, channels=2)
    >>> for end_frame, emb in enc.push(frames):   # frames: float32 [2, n, 96]
    ...     publish(end_frame, emb.copy())        # emb: [2, 512], valid until next push
    """

    def __init__(
        self,
        folded: cn.Folded,
        *,
        hop_frames: int,
        window_frames: int = WINDOW_FRAMES,
        channels: int = 1,
        threads: int = 2,
        backend: str | None = None,
        spinning: bool = False,
        edges: str = "exact",
        pad_frame: np.ndarray | None = None,
        device: str = "cpu",
    ) -> None:
        if hop_frames < 1:
            raise EmberdError(f"streaming encoder: hop_frames must be >= 1, got {hop_frames}")
        if window_frames < COLUMN_FRAMES:
            raise EmberdError(
                f"streaming encoder: window_frames must be >= {COLUMN_FRAMES}, got {window_frames}"
            )
        if channels < 1:
            raise EmberdError(f"streaming encoder: channels must be >= 1, got {channels}")
        if threads < 1:
            raise EmberdError(f"streaming encoder: threads must be >= 1, got {threads}")
        if edges not in EDGES:
            raise EmberdError(
                f"streaming encoder: unknown edges {edges!r}, expected one of {EDGES}"
            )
        if device not in DEVICES:
            raise EmberdError(f"streaming encoder: device {device!r}, expected one of {DEVICES}")
        if backend is None:
            backend = "numpy" if edges == "exact" else "onnx"
        if backend not in BACKENDS:
            raise EmberdError(
                f"streaming encoder: unknown backend {backend!r}, expected one of {BACKENDS}"
            )
        if edges == "exact" and backend != "numpy":
            raise EmberdError("streaming encoder: exact edges run on the numpy backend only")
        weights = cn.check_folded(folded)
        self.channels = channels
        self.backend = backend
        self.edges = edges
        self.window_frames = window_frames
        self.window_columns = window_frames // COLUMN_FRAMES
        self.dim = int(weights[-1][0].shape[0])
        self.chunk_frames = -(-hop_frames // COLUMN_FRAMES) * COLUMN_FRAMES
        self._onnx: OnnxStack | None = None
        self._numpy: cn.NumpyStack | None = None
        self._exact: ExactGroups | None = None
        if backend == "onnx":
            from emberd.models.streaming_onnx import OnnxStack

            self._onnx = OnnxStack(
                weights, channels, threads=threads, spinning=spinning, device=device
            )
            self._latency = self._onnx.latency_frames
            self.provider: str = self._onnx.provider
        else:
            from threadpoolctl import threadpool_limits

            if device == "cuda":
                log.warning("streaming encoder: the numpy backend runs on the CPU, not CUDA")
            if edges == "exact":
                from emberd.models.streaming_exact import ExactGroups

                threadpool_limits(limits=EXACT_BLAS_THREADS, user_api="blas")
                # Parallelism across channel groups instead: one core per group.
                self._exact = ExactGroups(weights, channels, window_frames, pad_frame, threads)
                self._latency = 0
            else:
                threadpool_limits(limits=threads, user_api="blas")
                self._numpy = cn.NumpyStack(weights, channels, self.chunk_frames)
                self._latency = self._numpy.latency_frames
            self.provider = "numpy"  # BLAS GEMMs
        self._ring = np.zeros((self.window_columns, channels, self.dim), np.float32)
        self._out = np.zeros(
            (self.chunk_frames // COLUMN_FRAMES + 2, channels, self.dim), np.float32
        )
        self.reset()

    # ------------------------------------------------------------------ public

    @property
    def latency_frames(self) -> int:
        """Look-ahead: the embedding ending at ``end_frame`` is returned by the push
        that delivers frame ``end_frame + latency_frames - 1`` (0-based); 0 for exact."""
        return self._latency

    @property
    def frames_pushed(self) -> int:
        """Frames consumed since construction or :meth:`reset`."""
        return self._frames_in

    def reset(self) -> None:
        """Forget the stream: the next push starts a new one at frame 0."""
        if self._onnx is not None:
            self._onnx.reset()
        if self._numpy is not None:
            self._numpy.reset()
        if self._exact is not None:
            self._exact.reset()
        self._columns = 0
        self._frames_in = 0
        self._fill = 0  # frames waiting in the 8-frame step buffer (ONNX, exact)

    def restart(self, window: np.ndarray, end_frame: int) -> np.ndarray:
        """Exact edges: jump to the window of stream frames ``[end_frame - window_frames,
        end_frame)`` without stepping through the frames in between.

        For a consumer that fell behind: one full window per channel instead of one step
        per 8 frames skipped. The state afterwards is what stepping would have left (the
        reference's activations on that window), so later pushes continue exactly.

        Parameters
        ----------
        window : ndarray, float32 [channels, window_frames, 96]
            The window's mel frames (frames before the stream: the pad frame).
        end_frame : int
            Stream frame after the window's last one, a multiple of 8.

        Returns
        -------
        ndarray, float32 [channels, 512]
            The window's embedding (a view that the next push or restart overwrites).
        """
        if self._exact is None:
            raise EmberdError("streaming encoder: restart needs exact edges")
        if end_frame < 0 or end_frame % COLUMN_FRAMES:
            raise EmberdError(f"streaming encoder: restart at frame {end_frame}, "
                              f"not a multiple of {COLUMN_FRAMES}")  # fmt: skip
        x = np.asarray(window, np.float32)
        if x.shape != (self.channels, self.window_frames, cn.N_MELS) or not np.isfinite(x).all():
            want = (self.channels, self.window_frames, cn.N_MELS)
            raise EmberdError(f"streaming encoder: restart window of shape {x.shape}, "
                              f"expected {want}, finite")  # fmt: skip
        self._exact.restart(np.ascontiguousarray(x.transpose(1, 0, 2)))
        self._frames_in = end_frame
        self._fill = 0
        return self._exact.embedding

    def push(self, frames: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Feed the next mel frames; return one embedding per newly completed step.

        Parameters
        ----------
        frames : ndarray, float32 [channels, n, 96] (or [n, 96] when channels == 1)
            The next ``n >= 0`` scaled mel frames of every channel.

        Returns
        -------
        list of (end_frame, embedding)
            ``end_frame``: a multiple of 8, counted from the stream start. Exact
            edges: the embedding is the reference on frames ``[end_frame - 100,
            end_frame)``. Continuous: it covers ``[end_frame - 96, end_frame)``;
            the matching 100-frame reference window starts at ``end_frame - 96``.
            ``embedding``: float32 ``[channels, 512]``, a view into an internal
            buffer that the next push overwrites; copy it to keep it.

        Raises
        ------
        EmberdError
            On a wrong shape or NaN/Inf values.
        """
        x = np.asarray(frames)
        if x.ndim == 2 and self.channels == 1:
            x = x[None]
        if x.ndim != 3 or x.shape[0] != self.channels or x.shape[2] != cn.N_MELS:
            raise EmberdError(
                f"streaming encoder: frames of shape {x.shape}, expected "
                f"[{self.channels}, n, {cn.N_MELS}]"
            )
        n = x.shape[1]
        if n == 0:
            return []
        # One contiguous channel at a time: a whole-array sum of a strided slice
        # would allocate numpy's 32 KB iterator buffer on every hop.
        for c in range(self.channels):
            if not np.isfinite(x[c].sum()):
                raise EmberdError("streaming encoder: frames contain NaN or Inf")
        # Columns this push can complete, bounded by the frames it moves past the grid.
        most = (self._frames_in + n) // COLUMN_FRAMES - self._frames_in // COLUMN_FRAMES + 1
        if most > self._out.shape[0]:  # only a push longer than hop_frames gets here
            self._out = np.zeros((most, self.channels, self.dim), np.float32)
        if self._exact is not None:
            made = self._push_exact(x)
            last = self._frames_in // COLUMN_FRAMES * COLUMN_FRAMES
            return [(last - (made - 1 - k) * COLUMN_FRAMES, self._out[k]) for k in range(made)]
        made = self._push_onnx(x) if self._onnx is not None else self._push_numpy(x)
        first = self._columns - made
        return [((first + k + 1) * COLUMN_FRAMES, self._out[k]) for k in range(made)]

    # ----------------------------------------------------------------- private

    def _fill_steps(self, x: np.ndarray, dst: np.ndarray) -> Iterator[None]:
        """Copy ``x`` [C, n, 96] into the step buffer ``dst`` [C, 8, 96]; yield at each full one.

        Shared by the exact and ONNX paths, which both run on 8-frame columns.
        """
        start = 0
        n = x.shape[1]
        while start < n:
            take = min(COLUMN_FRAMES - self._fill, n - start)
            dst[:, self._fill : self._fill + take] = x[:, start : start + take]
            self._fill += take
            self._frames_in += take
            start += take
            if self._fill == COLUMN_FRAMES:
                self._fill = 0
                yield

    def _push_exact(self, x: np.ndarray) -> int:
        stack = self._exact
        assert stack is not None
        made = 0
        # The stack's step buffer is time-major [8, C, 96]: fill it through a channel-major view.
        for _ in self._fill_steps(x, stack.frames.transpose(1, 0, 2)):
            stack.step()
            self._out[made] = stack.embedding
            made += 1
        return made

    def _push_onnx(self, x: np.ndarray) -> int:
        stack = self._onnx
        assert stack is not None
        made = 0
        for _ in self._fill_steps(x, stack.frames):
            if stack.run():
                self._add_column(stack.column, made)
                made += 1
        return made

    def _push_numpy(self, x: np.ndarray) -> int:
        stack = self._numpy
        assert stack is not None
        made = 0
        start = 0
        n = x.shape[1]
        while start < n:
            # Stop each call on the chunk grid so per-layer row counts stay in bounds.
            take = min(self.chunk_frames - self._frames_in % self.chunk_frames, n - start)
            cols = stack.feed(x[:, start : start + take])
            self._frames_in += take
            start += take
            for col in cols:
                self._add_column(col, made)
                made += 1
        return made

    def _add_column(self, col: np.ndarray, slot: int) -> None:
        """Put a column into the ring and write the running max to output ``slot``."""
        k = self.window_columns
        self._ring[self._columns % k] = col
        self._columns += 1
        np.max(self._ring[: min(self._columns, k)], axis=0, out=self._out[slot])
