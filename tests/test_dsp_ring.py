"""SampleRing (SPSC, callback-safe) and FrameRing."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emberd.dsp.ring import FrameRing, SampleRing
from emberd.errors import EmberdError


def test_write_read_wraps_around() -> None:
    ring = SampleRing(10, 2)
    out = np.zeros((7, 2), dtype=np.float32)
    data = np.arange(40, dtype=np.float32).reshape(20, 2)
    assert ring.write(data[:7])
    assert ring.read(out) == 7 and np.array_equal(out, data[:7])
    assert ring.write(data[7:15])  # wraps: 3 at the end, 5 at the start
    assert ring.available == 8
    assert ring.read(out) == 7 and np.array_equal(out, data[7:14])
    assert ring.read(out) == 1 and np.array_equal(out[:1], data[14:15])
    assert ring.read(out) == 0


def test_overflow_counts_dropped_frames() -> None:
    ring = SampleRing(8, 1)
    assert ring.write(np.ones(5, dtype=np.float32))
    assert not ring.write(np.full(5, 2.0, dtype=np.float32))  # only 3 fit
    assert ring.overflow_frames == 2 and ring.available == 8
    out = np.zeros(8, dtype=np.float32)
    assert ring.read(out) == 8
    assert np.array_equal(out, [1, 1, 1, 1, 1, 2, 2, 2])


def test_nonfinite_zeroed_and_counted() -> None:
    ring = SampleRing(16, 2)
    block = np.ones((4, 2), dtype=np.float32)
    block[1, 0] = np.nan
    block[2, 1] = np.inf
    block[3, 0] = -np.inf
    ring.write(block)
    out = np.zeros((4, 2), dtype=np.float32)
    ring.read(out)
    assert ring.nonfinite_samples == 3
    assert np.isfinite(out).all()
    assert out[1, 0] == 0 and out[2, 1] == 0 and out[3, 0] == 0 and out[0, 0] == 1


def test_write_allocates_nothing() -> None:
    ring = SampleRing(1024, 2)
    block = np.random.default_rng(0).standard_normal((256, 2)).astype(np.float32)
    block[0, 0] = np.nan
    out = np.zeros((256, 2), dtype=np.float32)
    ring.write(block)
    ring.read(out)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(200):
            ring.write(block)
            ring.read(out)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 2048  # one 256x2 float32 block would be 2048 bytes


def test_bad_sizes() -> None:
    with pytest.raises(EmberdError):
        SampleRing(0, 1)
    with pytest.raises(EmberdError):
        FrameRing(4, 0)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 40),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=40),
)
def test_matches_a_queue_model(capacity: int, ops: list[tuple[bool, int]]) -> None:
    """Random write/read sequences equal a plain FIFO that drops what does not fit."""
    ring = SampleRing(capacity, 1)
    model: list[float] = []
    counter = 0.0
    dropped = 0
    for is_write, n in ops:
        if is_write:
            block = np.arange(counter, counter + n, dtype=np.float32)
            counter += n
            fit = min(n, capacity - len(model))
            model.extend(block[:fit].tolist())
            dropped += n - fit
            assert ring.write(block) == (fit == n)
        else:
            out = np.zeros(n, dtype=np.float32)
            got = ring.read(out)
            assert out[:got].tolist() == model[:got]
            assert got == min(n, len(model))
            del model[:got]
    assert ring.available == len(model) and ring.overflow_frames == dropped


def test_spsc_threads_preserve_order() -> None:
    """A writer thread and a reader thread: every accepted sample arrives, in order."""
    ring = SampleRing(300, 1)
    total = 30_000
    got: list[np.ndarray] = []

    def writer() -> None:
        pos = 0
        while pos < total:
            n = min(97, total - pos)
            if ring.free >= n:  # behave like a producer that never overflows
                ring.write(np.arange(pos, pos + n, dtype=np.float32))
                pos += n

    t = threading.Thread(target=writer)
    t.start()
    out = np.zeros(64, dtype=np.float32)
    received = 0
    while received < total:
        n = ring.read(out)
        if n:
            got.append(out[:n].copy())
            received += n
    t.join()
    assert np.array_equal(np.concatenate(got), np.arange(total, dtype=np.float32))
    assert ring.overflow_frames == 0


def test_frame_ring_latest_and_ranges() -> None:
    fr = FrameRing(5, 3)
    frames = np.arange(24, dtype=np.float32).reshape(8, 3)
    fr.write(frames[:3])
    out = np.zeros((5, 3), dtype=np.float32)
    assert fr.latest(5, out) == 3 and np.array_equal(out[:3], frames[:3])
    fr.write(frames[3:8])  # wraps, frames 0..2 overwritten
    assert fr.total == 8 and fr.available == 5
    assert fr.latest(2, out) == 2 and np.array_equal(out[:2], frames[6:8])
    window = np.zeros((4, 3), dtype=np.float32)
    fr.copy_range(3, window)
    assert np.array_equal(window, frames[3:7])
    with pytest.raises(IndexError):
        fr.copy_range(2, window)  # frame 2 is gone
    with pytest.raises(IndexError):
        fr.copy_range(5, window)  # frame 8 does not exist yet
    assert np.array_equal(fr.to_array(), frames[3:8])
    fr.write(np.arange(30, dtype=np.float32).reshape(10, 3))  # more than capacity at once
    assert fr.total == 18 and np.array_equal(fr.to_array()[-1], [27, 28, 29])
