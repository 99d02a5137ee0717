"""The ring's tap: a second reader that never consumes and never holds a live producer."""

from __future__ import annotations

import numpy as np

from emberd.dsp.ring import SampleRing


def _ramp(a: int, b: int) -> np.ndarray:
    return np.arange(a, b, dtype=np.float32).reshape(-1, 1)


def test_peek_reads_without_consuming() -> None:
    ring = SampleRing(16, 1)
    ring.write(_ramp(0, 10))
    out = np.zeros((8, 1), np.float32)
    first, n = ring.peek(2, out)
    assert (first, n) == (2, 8) and out[:, 0].tolist() == list(range(2, 10))
    assert ring.available == 10  # the consumer still has every frame
    first, n = ring.peek(10, out)
    assert (first, n) == (10, 0)


def test_a_lapped_tap_skips_what_was_overwritten_and_never_blocks_a_live_producer() -> None:
    ring = SampleRing(16, 1)
    consumed = np.zeros((16, 1), np.float32)
    for a in range(0, 40, 8):  # the consumer keeps up, the tap (at 0) does not
        assert ring.write(_ramp(a, a + 8))
        ring.read(consumed)
    assert ring.overflow_frames == 0
    out = np.zeros((32, 1), np.float32)
    first, n = ring.peek(0, out)
    assert first == 40 - 16 and n == 16  # the oldest frames still held
    assert out[:n, 0].tolist() == list(range(24, 40))


def test_peek_never_returns_slots_a_write_in_progress_is_overwriting() -> None:
    """The producer copies a block before it publishes ``_written``; numpy releases the
    GIL during the copy, so a lagging tap can read slots being overwritten. ``write``
    announces them first (``_writing``): this freezes a write half-way, as a concurrent
    tap would see it."""
    ring = SampleRing(16, 1)
    consumed = np.zeros((16, 1), np.float32)
    ring.write(_ramp(0, 16))
    ring.read(consumed)
    # A write of frames 16..23 is under way: announced, slots 0..7 half rewritten,
    # not yet published.
    ring._writing = ring.total_written + 8
    ring._buf[:4] = -1.0
    out = np.zeros((16, 1), np.float32)
    first, n = ring.peek(0, out)
    assert first == 8 and n == 8  # frames 0..7 count as lost, never as torn audio
    assert out[:n, 0].tolist() == list(range(8, 16))


def test_held_tap_counts_in_free_space() -> None:
    ring = SampleRing(16, 1)
    ring.write(_ramp(0, 12))
    ring.read(np.zeros((12, 1), np.float32))
    assert ring.free == 16
    ring.hold_tap = True  # fast file input: the paced producer waits for the tap too
    ring.tapped = 4
    assert ring.free == 8
