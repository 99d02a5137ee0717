"""DeviceSource callback and consumer, driven directly (no PortAudio device needed)."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
from conftest import require

from emberd.errors import EmberdError


def sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError:
        require(False, "PortAudio (libportaudio2)")
    return sd


def time_info(sd: Any, adc: float) -> Any:
    """A real PaStreamCallbackTimeInfo struct, as PortAudio hands to the callback."""
    info = sd._ffi.new("PaStreamCallbackTimeInfo*")
    info.inputBufferAdcTime = adc
    info.currentTime = adc + 0.005
    return info


def make_source(**kwargs: Any) -> Any:
    from emberd.dsp.device import DeviceSource

    return DeviceSource("unused", sr=1000, channels=2, block_size=4, **kwargs)


def test_callback_copies_counts_and_zeroes_nonfinite() -> None:
    sd = sounddevice()
    src = make_source()
    ok, overflow = sd.CallbackFlags(), sd.CallbackFlags(2)  # paInputOverflow = 0x2
    assert overflow.input_overflow and not ok.input_overflow
    blocks = [np.arange(8, dtype=np.float32).reshape(4, 2) + 8 * i for i in range(3)]
    blocks[1][2, 1] = np.nan
    blocks[2][0, 0] = -np.inf
    src._callback(blocks[0], 4, time_info(sd, 10.0), ok)
    src._callback(blocks[1], 4, time_info(sd, 10.004), overflow)
    src._callback(blocks[2], 4, time_info(sd, 10.008), ok)
    assert src.stats() == {
        "callbacks": 3, "input_overflows": 1, "ring_overflow_frames": 0, "nonfinite_samples": 2,
    }
    src.close()  # a closed source drains what was captured
    got = list(src)
    assert [b.start_sample for b in got] == [0, 4, 8]
    data = np.concatenate([b.data for b in got])
    expect = np.concatenate(blocks)
    expect[~np.isfinite(expect)] = 0.0
    assert np.array_equal(data, expect) and np.isfinite(data).all()
    # One timing mechanism: arrival marks in the source's clock, not PortAudio's ADC
    # clock (which says 10 s here): 4 samples at 1 kHz apart, ending about now.
    times = np.array([b.capture_time for b in got])
    assert np.allclose(np.diff(times), 0.004, atol=1e-6)
    assert abs(times[-1] + 0.004 - time.time()) < 1.0, times
    assert [src.clock.time_of(b.start_sample) for b in got] == list(times)
    assert not hasattr(src, "_ts_adc") and not hasattr(src, "_unix_minus_stream")


def test_ring_overflow_is_counted_not_blocking() -> None:
    sd = sounddevice()
    src = make_source(ring_seconds=0.008)  # 8 frames
    block = np.ones((4, 2), dtype=np.float32)
    for i in range(5):
        src._callback(block, 4, time_info(sd, i * 0.004), sd.CallbackFlags())
    assert src.ring.available == 8 and src.stats()["ring_overflow_frames"] == 12
    src.close()
    assert sum(b.data.shape[0] for b in src) == 8


def test_callback_allocates_nothing() -> None:
    sd = sounddevice()
    src = make_source(ring_seconds=10.0)
    block = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    flags, info = sd.CallbackFlags(), time_info(sd, 1.0)
    src._callback(block, 4, info, flags)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(500):
            src._callback(block, 4, info, flags)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert src.callbacks == 501
    assert peak < 2048, peak


def test_unknown_device_name_is_one_line_error() -> None:
    sounddevice()
    from emberd.dsp.device import DeviceInfo, list_devices, resolve_input_device

    devices = list_devices()
    assert all(isinstance(d, DeviceInfo) for d in devices)
    with pytest.raises(EmberdError, match="no input device with that name") as info:
        resolve_input_device("emberd-no-such-device-xyz")
    assert "\n" not in str(info.value)
    with pytest.raises(EmberdError, match="no device with that index"):
        resolve_input_device(10_000)


def test_bad_parameters() -> None:
    from emberd.dsp.device import DeviceSource

    with pytest.raises(EmberdError, match="sample rate 0"):
        DeviceSource(None, sr=0)
    with pytest.raises(EmberdError, match="block size 0"):
        DeviceSource(None, block_size=0)
    with pytest.raises(EmberdError, match="channels"):
        DeviceSource(None, channels=0)
