"""Exact-edge streaming: the windowed aiSFX reference, recomputing only what a hop changes.

The state is the reference network's own activations for the current window
(every conv's input rows and the pre-pool rows, at each layer's resolution),
held in per-layer ring buffers in *window coordinates*. One step slides the
window by 8 frames: level ``l`` (after ``l`` pools) shifts by ``8 >> l`` rows,
and a row is recomputed only if one of its inputs changed. By induction every
kept row equals the reference's row, so every step's embedding is the windowed
reference on the newest window (float32 rounding aside).

Dirty rows
----------
An output row ``r`` of a 3x3 conv (pad 1) at a level with ``n`` rows and shift
``s`` must be recomputed when

* ``r >= n - s``: it is new (its absolute position was outside the old window);
* input row ``r - 1``, ``r`` or ``r + 1`` changed, where input row ``-1`` always
  counts as changed: it is the reference's zero padding now, a real row before.

A pooled row ``p`` changes when pre-pool row ``2p`` or ``2p + 1`` changed or it
is new. Propagated through the aiSFX stack for the 100-frame window (levels of
100 / 50 / 25 / 12 rows, shifts 8 / 4 / 2 / 1), this gives, per conv output,
the rows ``[0, L)`` at the left edge and ``[n - R, n)`` at the right edge:

==========  ====  ==  ===========================================
layer       n     L   R (= shift + rows the zero padding reaches)
==========  ====  ==  ===========================================
conv 1.1    100   1   9  = 8 + 1
conv 1.2    100   2   10 = 8 + 2  -> pool: L 1, R 5 = 4 + 1
conv 2.1    50    2   6  = 4 + 2
conv 2.2    50    3   7  = 4 + 3  -> pool: L 2, R 4 = 2 + 2
conv 3.1    25    3   5  = 2 + 3
conv 3.2    25    4   6  = 2 + 4  -> pool: L 2, R 3 = 1 + 2
conv 4.1    12    3   4  = 1 + 3
conv 4.2    12    4   5  = 1 + 4  -> columns 0-3 and 7-11 recomputed
==========  ====  ==  ===========================================

The third pool floors 25 rows to 12 and drops pre-pool row 24 (frames 96-99),
but frames 96-99 still reach the output: level-2 row 24 is the time context
of conv 3.1/3.2 row 23, which lands in column 11. So the reference depends on
all 100 frames, and the exact window is simply the last 100 frames: the step
that completes frame ``8k + 7`` (0-based) emits the window ``[8k + 8 - 100,
8k + 8)``: no look-ahead. The left/right cones cost about 1.7x the continuous
hop each (the right one includes the continuous hop's new rows), about a third
of the full window in multiply-adds.

Before 100 frames exist the window is padded on the left with ``pad_frame``
(default zeros; the daemon passes the front end's silence frame, as its
windowed path does), so embeddings flow from the first 8 frames on.

Compute is numpy im2col on BLAS (:mod:`emberd.models.conv_numpy`): all ranges of
one conv go through one GEMM. Rings are indexed modulo their row count, and
every range is gathered into / scattered from small scratch blocks, so nothing
is shifted or allocated per step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from emberd.errors import EmberdError
from emberd.models import conv_numpy as cn

STEP_FRAMES = cn.TIME_STRIDE_FRAMES  # frames per step (the window slides by one column)

Ranges = tuple[tuple[int, int], ...]


def _ranges(mask: np.ndarray) -> Ranges:
    """Contiguous ``[a, b)`` runs of True in a 1-d boolean mask."""
    out = []
    r = 0
    n = mask.size
    while r < n:
        if mask[r]:
            a = r
            while r < n and mask[r]:
                r += 1
            out.append((a, r))
        else:
            r += 1
    return tuple(out)


def dirty_masks(window_frames: int) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Rows each step must recompute: per conv output, and per pool output (None: no pool).

    Parameters
    ----------
    window_frames : int
        Reference window length (>= 8).
    """
    conv_masks: list[np.ndarray] = []
    pool_masks: list[np.ndarray | None] = []
    n = window_frames
    shift = STEP_FRAMES
    changed = np.arange(n) >= n - shift  # new input frames
    for i in range(cn.N_CONVS):
        rows = np.arange(n)
        padded = np.concatenate([[True], changed, [True]])  # index -1 and n: padding
        out = (rows >= n - shift) | padded[:-2] | padded[1:-1] | padded[2:]
        conv_masks.append(out)
        if cn.POOL_AFTER[i]:
            n_p = n // 2
            p = np.arange(n_p)
            pooled = out[0 : 2 * n_p : 2] | out[1 : 2 * n_p : 2] | (p >= n_p - shift // 2)
            pool_masks.append(pooled)
            n, shift, changed = n_p, shift // 2, pooled
        else:
            pool_masks.append(None)
            changed = out
    return conv_masks, pool_masks


def _batches(ranges: Ranges, cap: int) -> list[Ranges]:
    """Split ranges into groups of at most ``cap`` rows (long ranges cut into pieces)."""
    pieces = [(a, min(a + cap, b)) for a, b in ranges for a in range(a, b, cap)]
    groups: list[list[tuple[int, int]]] = [[]]
    used = 0
    for a, b in pieces:
        if used + b - a > cap:
            groups.append([])
            used = 0
        groups[-1].append((a, b))
        used += b - a
    return [tuple(g) for g in groups if g]


def _gather(ring: np.ndarray, base: int, a: int, b: int, dst: np.ndarray) -> None:
    """Copy window rows ``[a, b)`` (``0 <= a <= b <= n``) of a ring into ``dst[: b - a]``."""
    n = ring.shape[0]
    s = (base + a) % n
    k = min(b - a, n - s)
    dst[:k] = ring[s : s + k]
    if k < b - a:
        dst[k : b - a] = ring[: b - a - k]


def _scatter(ring: np.ndarray, base: int, a: int, src: np.ndarray) -> None:
    """Write ``src`` to window rows ``[a, a + len(src))`` of a ring."""
    n = ring.shape[0]
    m = src.shape[0]
    s = (base + a) % n
    k = min(m, n - s)
    ring[s : s + k] = src[:k]
    if k < m:
        ring[: m - k] = src[k:]


class _Layer:
    """One conv: its input ring, its GEMM matrix (bias folded in), scratch, row plans."""

    def __init__(
        self, w: np.ndarray, b: np.ndarray, n: int, channels: int, mel: int, cap: int
    ) -> None:
        c_in, c_out = w.shape[1], w.shape[0]
        k = cn.KERNEL * cn.KERNEL * c_in
        self.wmat = np.ascontiguousarray(np.vstack([cn.gemm_weights(w), b[None]]))
        self.x = np.zeros((n, channels, mel, c_in), np.float32)  # input ring
        # Input segments: each range of r rows needs r + 2 input rows (time context).
        self.xin = np.zeros((2 * cap + 4, channels, mel, c_in), np.float32)
        self.col = np.zeros((cap, channels, mel, k + 1), np.float32)
        self.col[..., k] = 1.0  # the bias row of wmat multiplies this
        self.patches = self.col[..., :k].reshape(cap, channels, mel, cn.KERNEL, cn.KERNEL, c_in)
        self.y = np.zeros((cap, channels, mel, c_out), np.float32)
        self.n = n
        self.cap = cap


class ExactStack:
    """The windowed aiSFX conv stack, updated per 8-frame step (see module docstring).

    Parameters
    ----------
    folded : sequence of (W, b)
        BatchNorm-folded convs.
    channels : int
        Streams per step (they share every GEMM).
    window_frames : int
        Reference window length in frames (>= 8).
    pad_frame : ndarray, float32 [96], optional
        The frame the window holds before the stream starts (default zeros).
    executor : concurrent.futures.Executor, optional
        Given, a step runs the right-edge rows of every layer on it while the
        caller runs the left-edge rows: the two cones share no row (for windows
        where every layer has one range at each edge, as for 100 frames).
    """

    def __init__(
        self,
        folded: cn.Folded,
        channels: int,
        window_frames: int,
        pad_frame: np.ndarray | None = None,
        executor: Executor | None = None,
    ) -> None:
        weights = cn.check_folded(folded)
        if window_frames < STEP_FRAMES:
            raise EmberdError(f"streaming encoder: window_frames must be >= {STEP_FRAMES}")
        pad = np.zeros(cn.N_MELS, np.float32) if pad_frame is None else np.asarray(pad_frame)
        if pad.shape != (cn.N_MELS,) or not np.isfinite(pad).all():
            raise EmberdError(f"streaming encoder: pad_frame must be {cn.N_MELS} finite values")
        self._pad = pad.astype(np.float32)
        self.channels = channels
        conv_masks, pool_masks = dirty_masks(window_frames)
        self._layers: list[_Layer] = []
        self._conv_plan: list[list[Ranges]] = []  # per conv: batches of output ranges
        self._conv_all: list[list[Ranges]] = []  # the same for a full recompute (reset)
        self._pool_plan: list[Ranges | None] = []
        self._pool_all: list[Ranges | None] = []
        self._pre: list[np.ndarray | None] = []  # pre-pool rings
        Tmp = tuple[np.ndarray, np.ndarray, np.ndarray]
        self._pool_tmp: list[tuple[Tmp, ...] | None] = []
        self._level: list[int] = []  # pools before each conv
        n, mel, level = window_frames, cn.N_MELS, 0
        for i, (w, b) in enumerate(weights):
            hop = _ranges(conv_masks[i])
            cap = sum(b_ - a_ for a_, b_ in hop)
            self._layers.append(_Layer(w, b, n, channels, mel, cap))
            self._conv_plan.append(_batches(hop, cap))
            self._conv_all.append(_batches(((0, n),), cap))
            self._level.append(level)
            pm = pool_masks[i]
            if pm is not None:
                c = w.shape[0]
                self._pre.append(np.zeros((n, channels, mel, c), np.float32))
                hop_p = _ranges(pm)
                cap_p = max(b_ - a_ for a_, b_ in hop_p)
                self._pool_plan.append(hop_p)
                self._pool_all.append(
                    tuple(r for g in _batches(((0, n // 2),), cap_p) for r in g)
                )
                self._pool_tmp.append(tuple(  # one set per edge (they may run concurrently)
                    (np.zeros((2 * cap_p, channels, mel, c), np.float32),
                     np.zeros((cap_p, channels, mel, c), np.float32),
                     np.zeros((cap_p, channels, mel // 2, c), np.float32))
                    for _side in range(2)
                ))  # fmt: skip
                n, mel, level = n // 2, mel // 2, level + 1
            else:
                self._pre.append(None)
                self._pool_plan.append(None)
                self._pool_all.append(None)
                self._pool_tmp.append(None)
        self._levels = level + 1
        self._n = [window_frames]  # rows per level (floor pools)
        for _ in range(level):
            self._n.append(self._n[-1] // 2)
        self.dim = int(weights[-1][0].shape[0])
        self.columns = np.zeros((n, channels, self.dim), np.float32)  # ring, level 3
        self.embedding = np.zeros((channels, self.dim), np.float32)
        self.frames = np.zeros((STEP_FRAMES, channels, cn.N_MELS), np.float32)  # next step
        self._cols_tmp = np.zeros((self._layers[-1].cap, channels, self.dim), np.float32)
        self._inv_mel = np.float32(1.0 / mel)
        self._base = [0] * self._levels
        # Edge split: per conv the left range (scratch rows from 0) and the right
        # range (scratch rows after the left's), per pool its left and right range.
        two = all(len(p) == 1 and len(p[0]) == 2 for p in self._conv_plan) and all(
            p is None or len(p) == 2 for p in self._pool_plan
        )
        self._executor = executor if two else None
        self._sides: list[tuple[list[list[Ranges]], list[Ranges | None], list[int]]] = []
        if two:
            for side in range(2):
                convs: list[list[Ranges]] = [[(p[0][side],)] for p in self._conv_plan]
                pools: list[Ranges | None] = [
                    None if p is None else (p[side],) for p in self._pool_plan
                ]
                starts = [0 if side == 0 else p[0][0][1] - p[0][0][0] for p in self._conv_plan]
                self._sides.append((convs, pools, starts))
        self._zero = [0] * cn.N_CONVS
        self.reset()

    def reset(self) -> None:
        """Fill the window with ``pad_frame`` and compute it in full."""
        self._layers[0].x[...] = self._pad[None, None, :, None]
        self._full_pass()

    def restart(self, window: np.ndarray) -> None:
        """Hold ``window`` (float32 ``[window_frames, channels, 96]``) and compute it in full.

        A jump: the state becomes the reference's activations on that window, exactly as
        if the stream had been stepped up to it (the same full pass as :meth:`reset`), at
        the cost of one full window instead of one step per 8 frames skipped.
        """
        first = self._layers[0]
        if window.shape != first.x.shape[:3]:
            raise EmberdError(f"streaming encoder: restart window {window.shape}, "
                              f"expected {first.x.shape[:3]}")  # fmt: skip
        first.x[..., 0] = window
        self._full_pass()

    def _full_pass(self) -> None:
        """Compute the window now held in the first layer in full (reset, restart)."""
        self._base = [0] * self._levels
        self._pass(self._conv_all, self._pool_all, self._zero, 0)
        np.max(self.columns, axis=0, out=self.embedding)

    def step(self) -> None:
        """Slide the window by :attr:`frames` (8 frames) and update :attr:`embedding`."""
        for lv in range(self._levels):
            self._base[lv] = (self._base[lv] + (STEP_FRAMES >> lv)) % self._n[lv]
        first = self._layers[0]
        _scatter(first.x, self._base[0], first.n - STEP_FRAMES, self.frames[..., None])
        if self._executor is None:
            self._pass(self._conv_plan, self._pool_plan, self._zero, 0)
        else:
            right = self._executor.submit(self._pass, *self._sides[1], 1)
            self._pass(*self._sides[0], 0)
            right.result()  # re-raises the right edge's exception here
        np.max(self.columns, axis=0, out=self.embedding)

    # ----------------------------------------------------------------- private

    def _pass(
        self,
        conv_plans: list[list[Ranges]],
        pool_plans: list[Ranges | None],
        starts: list[int],
        side: int,
    ) -> None:
        """Recompute the planned rows of every layer in order (one edge, or all)."""
        last = cn.N_CONVS - 1
        for i, layer in enumerate(self._layers):
            base = self._base[self._level[i]]
            for ranges in conv_plans[i]:
                self._conv(layer, base, ranges, starts[i])
                pre = self._pre[i]
                if pre is not None:
                    target = pre
                elif i < last:
                    target = self._layers[i + 1].x
                else:
                    target = None
                off = starts[i]
                for a, b in ranges:
                    y = layer.y[off : off + b - a]
                    if target is not None:
                        _scatter(target, base, a, y)
                    else:  # last conv: mean over mel -> the column ring
                        cols = self._cols_tmp[off : off + b - a]
                        np.add.reduce(y, axis=2, out=cols)
                        cols *= self._inv_mel
                        _scatter(self.columns, base, a, cols)
                    off += b - a
            pool = pool_plans[i]
            if pool is not None:
                self._pool(i, pool, side)

    def _conv(self, layer: _Layer, base: int, ranges: Ranges, start: int) -> None:
        """Recompute output rows ``ranges`` of one conv into ``layer.y[start:]`` (stacked)."""
        n = layer.n
        off = start  # rows of col / y used
        seg = start + 2 if start else 0  # rows of xin used (each range has 2 context rows)
        for a, b in ranges:
            m = b - a + 2
            xin = layer.xin[seg : seg + m]
            lo, hi = max(a - 1, 0), min(b + 1, n)  # input rows inside the window
            if a - 1 < 0:
                xin[0] = 0.0  # the reference's zero padding
            if b + 1 > n:
                xin[m - 1] = 0.0
            _gather(layer.x, base, lo, hi, xin[lo - (a - 1) :])
            cn.im2col(xin, layer.patches[off : off + b - a])
            off += b - a
            seg += m
        k1, c_out = layer.wmat.shape
        y = layer.y[start:off]
        np.matmul(layer.col[start:off].reshape(-1, k1), layer.wmat, out=y.reshape(-1, c_out))
        np.maximum(y, 0.0, out=y)  # ReLU (commutes with the max pool that may follow)

    def _pool(self, i: int, ranges: Ranges, side: int) -> None:
        """Recompute pooled rows ``ranges`` of the pool after conv ``i``."""
        pre = self._pre[i]
        tmp = self._pool_tmp[i]
        assert pre is not None and tmp is not None
        raw, half, out = tmp[side]
        src_base = self._base[self._level[i]]
        dst = self._layers[i + 1].x
        dst_base = self._base[self._level[i] + 1]
        for p, q in ranges:
            k = q - p
            _gather(pre, src_base, 2 * p, 2 * q, raw)
            cn.pool2x2(raw[: 2 * k], half, out[:k])
            _scatter(dst, dst_base, p, out[:k])


class ExactGroups:
    """:class:`ExactStack` over channel groups, stepped in parallel threads.

    With ``workers`` > 1 the channels are split into up to ``workers`` contiguous
    groups, each its own stack; a step runs group 0 on the calling thread and the
    others on a small thread pool (numpy releases the GIL in the GEMMs and
    copies), so C channels use up to ``workers`` cores at 1 BLAS thread each. A
    single channel instead splits each step into its left- and right-edge rows
    (:class:`ExactStack` ``executor``). Same interface as ExactStack.

    Parameters
    ----------
    folded, channels, window_frames, pad_frame
        As :class:`ExactStack`.
    workers : int
        Threads a step may use (the caller's included).
    """

    def __init__(
        self,
        folded: cn.Folded,
        channels: int,
        window_frames: int,
        pad_frame: np.ndarray | None = None,
        workers: int = 1,
    ) -> None:
        import weakref
        from concurrent.futures import ThreadPoolExecutor

        groups = max(1, min(workers, channels))
        self._pool: ThreadPoolExecutor | None = None
        if workers > 1:
            self._pool = ThreadPoolExecutor(max(1, groups - 1), thread_name_prefix="emberd-exact")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        bounds = np.linspace(0, channels, groups + 1).round().astype(int)
        self._slices = [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        edge_pool = self._pool if groups == 1 else None  # one group: split its edges instead
        self._stacks = [
            ExactStack(folded, b - a, window_frames, pad_frame, edge_pool) for a, b in self._slices
        ]
        self.dim = self._stacks[0].dim
        self.frames = np.zeros((STEP_FRAMES, channels, cn.N_MELS), np.float32)
        self.embedding = np.zeros((channels, self.dim), np.float32)

    def reset(self) -> None:
        """Reset every group (see :meth:`ExactStack.reset`)."""
        for stack in self._stacks:
            stack.reset()

    def restart(self, window: np.ndarray) -> None:
        """Restart every group on its channels of ``window`` (see :meth:`ExactStack.restart`)."""
        self._each_group(lambda g: self._restart_group(g, window))

    def _restart_group(self, g: int, window: np.ndarray) -> None:
        a, b = self._slices[g]
        self._stacks[g].restart(window[:, a:b])
        self.embedding[a:b] = self._stacks[g].embedding

    def step(self) -> None:
        """Step every group on its slice of :attr:`frames`; fill :attr:`embedding`."""
        self._each_group(self._step_group)

    def _each_group(self, run: Callable[[int], None]) -> None:
        """``run(g)`` for every group: group 0 on this thread, the others on the pool
        (there is a pool whenever there is more than one group)."""
        if self._pool is None or len(self._stacks) == 1:
            run(0)
            return
        futures = [self._pool.submit(run, g) for g in range(1, len(self._stacks))]
        run(0)
        for f in futures:
            f.result()  # re-raises a group's exception here

    def _step_group(self, g: int) -> None:
        a, b = self._slices[g]
        stack = self._stacks[g]
        stack.frames[...] = self.frames[:, a:b]
        stack.step()
        self.embedding[a:b] = stack.embedding
