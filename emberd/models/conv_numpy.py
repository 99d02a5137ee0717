"""The aiSFX conv stack in numpy: im2col 3x3 convolution on BLAS, shared by the
streaming encoder and its windowed reference.

Layout is *time-major, channels-last*: ``[time, batch, mel, channels]``. Time
first means that "the first ``n`` rows" of a preallocated buffer is a contiguous
view, so BLAS can write a layer's output straight into the next layer's input
buffer (``np.matmul(..., out=view)``) without a copy.

Network (aiSFX ``EmbeddingNet('max', ks=3, stride=1, 64)``, Ma & Lerch, ISMIR
2022; MIT code, CC BY 4.0 model): the input ``[batch, time, 96]`` is a
one-channel image with time on the H axis and mel on the W axis; four blocks of
(conv3x3 pad 1 -> BatchNorm -> ReLU) x 2 with 64/128/256/512 channels, 2x2 max
pool (floor) after blocks 1-3; then mean over mel and max over time.
BatchNorm arrives already folded into the convolutions (``folded_weights``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emberd.errors import EmberdError

Folded = Sequence[tuple[np.ndarray, np.ndarray]]  # per conv: (W [out, in, 3, 3], b [out])

N_CONVS = 8  # two convs in each of four blocks
POOL_AFTER = (False, True, False, True, False, True, False, False)  # 2x2 max pool follows
TIME_STRIDE_FRAMES = 8  # three 2x time pools: one block-4 column per 8 input frames
N_MELS = 96  # input mel bands (W axis)
KERNEL = 3  # 3x3 convolutions, padding 1


def check_folded(folded: Folded) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate folded conv weights and return them as float32 arrays.

    Parameters
    ----------
    folded : sequence of (W, b)
        Eight ``(W [out, in, 3, 3], b [out])`` pairs, BatchNorm folded in.

    Returns
    -------
    list of (W, b)
        The same weights as C-contiguous float32.

    Raises
    ------
    EmberdError
        If the count or any shape does not fit the aiSFX conv stack.
    """
    if len(folded) != N_CONVS:
        raise EmberdError(f"streaming encoder: expected {N_CONVS} folded convs, got {len(folded)}")
    out: list[tuple[np.ndarray, np.ndarray]] = []
    c_in = 1
    for i, (w, b) in enumerate(folded):
        w = np.ascontiguousarray(w, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        if w.ndim != 4 or w.shape[1:] != (c_in, KERNEL, KERNEL) or b.shape != (w.shape[0],):
            raise EmberdError(
                f"streaming encoder: conv {i} has weight {w.shape} and bias {b.shape}; "
                f"expected [out, {c_in}, 3, 3] and [out]"
            )
        out.append((w, b))
        c_in = w.shape[0]
    return out


def gemm_weights(w: np.ndarray) -> np.ndarray:
    """Reorder ``W [out, in, 3, 3]`` to the im2col GEMM matrix ``[3*3*in, out]``.

    Row order is (time tap, mel tap, input channel), matching :func:`im2col`.
    """
    c_out, c_in = w.shape[:2]
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(KERNEL * KERNEL * c_in, c_out))


def im2col(x: np.ndarray, col: np.ndarray) -> None:
    """Fill ``col [m-2, B, F, 3, 3, C]`` with the 3x3 patches of ``x [m, B, F, C]``.

    Output row ``t`` is centred on input row ``t + 1`` (the caller supplies the
    time context rows). Mel padding is implicit: the patch entries that fall
    outside the mel axis are never written, so ``col`` must be zero-initialised
    once and reused with the same mel width.
    """
    n = x.shape[0] - 2
    f = x.shape[2]
    for dt in range(KERNEL):
        rows = x[dt : dt + n]
        col[:, :, 1:, dt, 0] = rows[:, :, : f - 1]  # left mel neighbour
        col[:, :, :, dt, 1] = rows
        col[:, :, : f - 1, dt, 2] = rows[:, :, 1:]  # right mel neighbour


def conv_rows(x: np.ndarray, wmat: np.ndarray, col: np.ndarray, out: np.ndarray) -> None:
    """3x3 convolution (no bias) of ``x [m, B, F, Cin]`` into ``out [m-2, B, F, Cout]``.

    ``col`` is a zero-initialised scratch buffer with at least ``m - 2`` rows of
    shape ``[B, F, 3, 3, Cin]``; ``out`` must be C-contiguous so BLAS writes it
    in place.
    """
    n = x.shape[0] - 2
    used = col[:n]
    im2col(x, used)
    k = wmat.shape[0]
    np.matmul(used.reshape(-1, k), wmat, out=out.reshape(-1, wmat.shape[1]))


def pool2x2(x: np.ndarray, tmp: np.ndarray, out: np.ndarray) -> None:
    """2x2 max pool (floor) of ``x [2q, B, F, C]`` into ``out [q, B, F//2, C]`` via ``tmp``."""
    q, b, f2, c = out.shape
    t = tmp[:q]
    np.maximum(x[0 : 2 * q : 2], x[1 : 2 * q : 2], out=t)
    # Mel pairs as a reduction over a [.., 2, C] view: the equivalent strided
    # np.maximum(t[:, :, 0::2], t[:, :, 1::2]) makes numpy allocate a 64 KB buffer.
    pairs = t[:, :, : 2 * f2].reshape(q * b * f2, 2, c)
    np.maximum.reduce(pairs, axis=1, out=out.reshape(q * b * f2, c))


def forward_columns(folded: Folded, mel: np.ndarray) -> np.ndarray:
    """Run the conv stack on whole inputs with zero padding at every edge.

    Parameters
    ----------
    folded : sequence of (W, b)
        Folded conv weights (see :func:`check_folded`).
    mel : ndarray, float32 [batch, frames, 96]
        Scaled mel frames, ``frames >= 8``.

    Returns
    -------
    ndarray, float32 [batch, frames // 8, 512]
        Block-4 output averaged over mel: one column per 8 frames.
    """
    weights = check_folded(folded)
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 3 or mel.shape[2] != N_MELS or mel.shape[1] < TIME_STRIDE_FRAMES:
        raise EmberdError(f"reference encoder: input shape {mel.shape} is not [batch, >=8, 96]")
    x = np.ascontiguousarray(mel.transpose(1, 0, 2)[..., None])  # [T, B, F, 1]
    for i, (w, b) in enumerate(weights):
        t, bsz, f, c_in = x.shape
        padded = np.zeros((t + 2, bsz, f, c_in), np.float32)  # zero rows = time padding
        padded[1:-1] = x
        col = np.zeros((t, bsz, f, KERNEL, KERNEL, c_in), np.float32)
        y = np.empty((t, bsz, f, w.shape[0]), np.float32)
        conv_rows(padded, gemm_weights(w), col, y)
        y += b
        np.maximum(y, 0.0, out=y)
        if POOL_AFTER[i]:
            pooled = np.empty((t // 2, bsz, f // 2, w.shape[0]), np.float32)
            pool2x2(y, np.empty((t // 2, bsz, f, w.shape[0]), np.float32), pooled)
            y = pooled
        x = y
    return np.ascontiguousarray(x.mean(axis=2).transpose(1, 0, 2))


def forward(folded: Folded, mel: np.ndarray) -> np.ndarray:
    """Windowed embedding: :func:`forward_columns` then max over time -> ``[batch, 512]``."""
    return forward_columns(folded, mel).max(axis=1)


_CONTEXT_ROWS = 2  # a 3x3 conv keeps two input rows of time context
LATENCY_FRAMES = 30  # column j needs frames up to 8j + 37: 30 past its last frame


class _Conv:
    """One conv layer's buffers: input rows (context first), im2col scratch, GEMM weights."""

    def __init__(self, w: np.ndarray, b: np.ndarray, rows: int, channels: int, mel: int) -> None:
        c_in = w.shape[1]
        k = KERNEL * KERNEL * c_in
        # The bias rides in the GEMM as a last row of weights against a column of
        # ones: a broadcast ``y += b`` would make numpy allocate a 32 KB ufunc buffer.
        self.wmat = np.ascontiguousarray(np.vstack([gemm_weights(w), b[None]]))
        self.x = np.zeros((rows + _CONTEXT_ROWS, channels, mel, c_in), np.float32)
        self.col = np.zeros((rows, channels, mel, k + 1), np.float32)
        self.col[..., k] = 1.0
        self.patches = self.col[..., :k].reshape(rows, channels, mel, KERNEL, KERNEL, c_in)
        self.held = 1  # rows at the front of x: starts with the zero row "-1" (padding)

    def reset(self) -> None:
        self.x[0] = 0.0
        self.held = 1


class NumpyStack:
    """Incremental conv stack in numpy: any number of frames per call, 30 frames look-ahead.

    Every conv keeps its last two input rows, the pools keep an unpaired row;
    each call computes only the rows its new input completes, with GEMMs that
    write into the next layer's preallocated buffer.

    Parameters
    ----------
    folded : sequence of (W, b)
        BatchNorm-folded convs.
    channels : int
        Streams per call (they share every GEMM).
    chunk_frames : int
        Most frames per :meth:`feed` (a multiple of 8); sizes the buffers.
    """

    latency_frames = LATENCY_FRAMES

    def __init__(self, folded: Folded, channels: int, chunk_frames: int) -> None:
        weights = check_folded(folded)
        self.chunk_frames = chunk_frames
        self._convs: list[_Conv] = []
        self._pools: list[tuple[np.ndarray, np.ndarray] | None] = []  # (raw rows, scratch)
        mel = N_MELS
        level = 0  # pools passed so far
        for i, (w, b) in enumerate(weights):
            # Rows arriving per chunk at this level: chunk / 2^level plus one pool leftover.
            rows = chunk_frames // 2**level + 1
            self._convs.append(_Conv(w, b, rows, channels, mel))
            if POOL_AFTER[i]:
                raw = np.zeros((rows + 1, channels, mel, w.shape[0]), np.float32)
                self._pools.append((raw, np.empty((rows, channels, mel, w.shape[0]), np.float32)))
                mel //= 2
                level += 1
            else:
                self._pools.append(None)
        self._mel = mel
        rows = chunk_frames // 2**level + 1
        dim = weights[-1][0].shape[0]
        self._y = np.empty((rows, channels, mel, dim), np.float32)  # last conv's output rows
        self._cols = np.empty((rows, channels, dim), np.float32)
        self._pending = [0] * len(weights)  # per pooled conv: an odd row awaiting its pair
        self.reset()

    def reset(self) -> None:
        """Start a new stream (zero padding before row 0 at every layer)."""
        for conv in self._convs:
            conv.reset()
        self._pending = [0] * len(self._convs)

    def feed(self, frames: np.ndarray) -> np.ndarray:
        """Consume ``frames [C, n, 96]`` (``n <= chunk_frames``, not crossing a chunk
        boundary of the stream); return the completed columns ``[k, C, 512]`` (a view)."""
        n = frames.shape[1]
        first = self._convs[0]
        first.x[first.held : first.held + n, :, :, 0] = frames.transpose(1, 0, 2)
        for i, conv in enumerate(self._convs):
            m = conv.held + n
            n_out = max(0, m - _CONTEXT_ROWS)
            pool = self._pools[i]
            nxt = self._convs[i + 1] if i + 1 < len(self._convs) else None
            if n_out:
                if pool is not None:
                    target = pool[0][self._pending[i] : self._pending[i] + n_out]
                elif nxt is not None:
                    target = nxt.x[nxt.held : nxt.held + n_out]
                else:
                    target = self._y[:n_out]
                im2col(conv.x[:m], conv.patches[:n_out])
                k1, c_out = conv.wmat.shape
                np.matmul(
                    conv.col[:n_out].reshape(-1, k1), conv.wmat, out=target.reshape(-1, c_out)
                )
                if pool is None:
                    np.maximum(target, 0.0, out=target)  # pooled layers: after the pool
            keep = min(m, _CONTEXT_ROWS)  # the last input rows are the next call's context
            for r in range(keep):
                conv.x[r] = conv.x[m - keep + r]
            conv.held = keep
            if pool is not None and nxt is not None:
                raw, scratch = pool
                avail = self._pending[i] + n_out
                q = avail // 2
                if q:
                    dst = nxt.x[nxt.held : nxt.held + q]
                    pool2x2(raw[: 2 * q], scratch, dst)
                    np.maximum(dst, 0.0, out=dst)  # ReLU commutes with max: 4x fewer values
                if avail % 2:
                    raw[0] = raw[avail - 1]
                self._pending[i] = avail % 2
                n = q
            else:
                n = n_out
            if n == 0:
                return self._cols[:0]
        cols = self._cols[:n]
        np.add.reduce(self._y[:n], axis=2, out=cols)
        cols *= np.float32(1.0 / self._mel)
        return cols
