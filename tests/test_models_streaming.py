"""StreamingEncoder, both edge modes.

Exact edges (default): every embedding equals the windowed ONNX reference
(:class:`emberd.models.runtime.Encoder`) on the 100 frames ending at the newest
complete step, with no look-ahead; hop-size invariance, channel batching, no
per-hop allocation, and the dirty-row table of the module docstring.

Continuous edges: the reference for exactness is :func:`emberd.models.conv_numpy.forward_columns`
(itself checked against ONNX Runtime here) run on the entire stream at once:
with zero padding only at the stream start, every streaming column must equal
it. The windowed reference (ONNX, 100 frames, zero padding at both window
edges) agrees only where the contexts coincide; see emberd/models/streaming.py.
"""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emberd.errors import EmberdError
from emberd.models import aisfx
from emberd.models import conv_numpy as cn
from emberd.models.streaming import StreamingEncoder

TOL = 1e-4  # absolute, float32 rounding of a different summation order
COLS = 12  # block-4 columns in a 100-frame window
BACKENDS = ("onnx", "numpy")


@pytest.fixture(scope="module")
def folded(aisfx_manifest_path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    from emberd.paths import cache_dir

    state, _ds = aisfx.load_checkpoint(cache_dir() / aisfx.WHEEL_NAME)
    return aisfx.folded_weights(state)


@pytest.fixture(scope="module")
def drum_mel(drumkit_dir: Path) -> np.ndarray:
    """~25 s of real drums: one-shots from several kits with gaps, then a loop."""
    import soundfile as sf
    import soxr

    from emberd.dsp.config import preset
    from emberd.dsp.frontend import melspectrogram

    rng = np.random.default_rng(7)
    files = sorted(drumkit_dir.glob("*/*.wav")) + sorted(drumkit_dir.glob("*/*.flac"))
    assert len(files) > 50
    parts = []
    for i in rng.choice(len(files), 12, replace=False):
        y, sr = sf.read(files[i], dtype="float32", always_2d=True)
        parts.append(soxr.resample(y.mean(axis=1), sr, 44100)[: 44100 * 2])
        parts.append(np.zeros(int(rng.integers(0, 11025)), np.float32))
    loop = np.zeros(44100 * 6, np.float32)
    step = 44100 * 60 // 120 // 4  # 16th notes at 120 bpm
    for start in range(0, loop.size - 44100, step):
        if rng.random() < 0.6:
            hit = parts[2 * int(rng.integers(0, 4))][:44100]
            loop[start : start + hit.size] += hit * rng.uniform(0.3, 1.0)
    return melspectrogram(np.concatenate([*parts, loop]), preset("aisfx"))


def continuous(folded: cn.Folded, **kwargs: Any) -> StreamingEncoder:
    """A continuous-edge encoder (the default is exact edges)."""
    return StreamingEncoder(folded, edges="continuous", **kwargs)


def run(enc: StreamingEncoder, x: np.ndarray, hop: int) -> dict[int, np.ndarray]:
    """Push ``x [C, T, 96]`` in hops; map end_frame -> embedding copy."""
    out: dict[int, np.ndarray] = {}
    for s in range(0, x.shape[1], hop):
        for end, emb in enc.push(x[:, s : s + hop]):
            assert end not in out
            out[end] = emb.copy()
    return out


def running_max(cols: np.ndarray, end: int, width: int = COLS) -> np.ndarray:
    """Embedding from whole-stream columns ``cols [C, n, 512]`` ending at frame ``end``."""
    j = end // 8
    return cols[:, max(0, j - width) : j].max(axis=1)


def test_numpy_reference_matches_onnx_runtime(
    folded: list[tuple[np.ndarray, np.ndarray]], aisfx_manifest_path: Path
) -> None:
    from emberd.models.manifest import load_manifest
    from emberd.models.runtime import Encoder

    x = np.random.default_rng(0).random((2, 100, 96), dtype=np.float32)
    enc = Encoder(load_manifest(aisfx_manifest_path), device="cpu", threads=2)
    assert np.abs(cn.forward(folded, x) - enc.embed(x)).max() <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_embedding_equals_the_whole_stream_network(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, backend: str
) -> None:
    x = drum_mel[None, :600]
    cols = cn.forward_columns(folded, x)
    got = run(continuous(folded, hop_frames=8, backend=backend), x, 8)
    # Everything but the last 32 frames' look-ahead comes out, starting at frame 8.
    assert sorted(got) == list(range(8, 600 - 32 + 1, 8))
    for end, emb in got.items():
        assert np.abs(emb - running_max(cols, end)).max() <= TOL, end


def test_interior_columns_equal_the_windowed_reference(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    # window_frames=8: the "max" runs over one column, so each embedding IS a column.
    x = drum_mel[None, :400]
    got = run(continuous(folded, hop_frames=8, window_frames=8), x, 8)
    checked = 0
    for start in range(0, 400 - 100 - 32, 24):
        window_cols = cn.forward_columns(folded, x[:, start : start + 100])[0]
        # Columns 4..7 see no window edge at any layer: column k needs frames
        # 8k-30 .. 8k+37, inside 0..99 (the neighbours 3 and 8 differ by ~1e-3).
        for k in range(4, 8):
            end = start + 8 * (k + 1)
            assert np.abs(got[end][0] - window_cols[k]).max() <= TOL, (start, k)
            checked += 1
        # ...while the edge columns do differ: the stream has real context there.
        assert np.abs(got[start + 8][0] - window_cols[0]).max() > 10 * TOL or start == 0
    assert checked >= 4 * 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_hop_size_does_not_change_the_sequence(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, backend: str
) -> None:
    x = drum_mel[None, 200:520]
    seqs = {
        hop: run(continuous(folded, hop_frames=hop, backend=backend), x, hop)
        for hop in (1, 3, 8, 13, 16)
    }
    rng = np.random.default_rng(5)  # and an irregular split, empty pushes included
    enc = continuous(folded, hop_frames=8, backend=backend)
    cuts = np.cumsum(rng.integers(0, 20, size=60))
    cuts = np.concatenate([[0], cuts[cuts < x.shape[1]], [x.shape[1]]])
    seqs[-1] = {}
    for a, b in itertools.pairwise(cuts):
        for end, emb in enc.push(x[:, a:b]):
            seqs[-1][end] = emb.copy()
    base = seqs[8]
    assert len(base) >= 30
    for hop, seq in seqs.items():
        common = sorted(set(seq) & set(base))
        assert len(common) >= len(base) - 2, hop  # a coarser last push may stop earlier
        for end in common:
            assert np.abs(seq[end] - base[end]).max() <= 1e-5, (hop, end)


def test_backends_agree(folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray) -> None:
    x = drum_mel[None, :300]
    enc_a = continuous(folded, hop_frames=8, backend="onnx")
    enc_b = continuous(folded, hop_frames=8, backend="numpy")
    assert (enc_a.provider, enc_b.provider) == ("CPUExecutionProvider", "numpy")
    a, b = run(enc_a, x, 8), run(enc_b, x, 8)
    assert set(a) <= set(b)
    for end in a:
        assert np.abs(a[end] - b[end]).max() <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_batch_equals_single_channel_runs(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, backend: str
) -> None:
    rng = np.random.default_rng(3)
    starts = rng.integers(0, drum_mel.shape[0] - 240, size=4)
    x = np.stack([drum_mel[s : s + 240] for s in starts])
    batched = run(continuous(folded, hop_frames=8, channels=4, backend=backend), x, 8)
    for c in range(4):
        single = run(continuous(folded, hop_frames=8, backend=backend), x[c : c + 1], 8)
        assert sorted(single) == sorted(batched)
        for end, emb in single.items():
            assert np.abs(batched[end][c] - emb[0]).max() <= TOL, (c, end)


@pytest.mark.parametrize("backend", BACKENDS)
def test_latency_is_exact(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, backend: str
) -> None:
    enc = continuous(folded, hop_frames=1, backend=backend)
    for t in range(120):
        for end, _emb in enc.push(drum_mel[t : t + 1]):
            # Delivered by the push carrying frame end + latency - 1.
            assert enc.frames_pushed == end + enc.latency_frames
    assert enc.latency_frames == {"onnx": 32, "numpy": 30}[backend]


@pytest.mark.parametrize("edges", ("exact", "continuous"))
def test_reset_starts_a_new_stream(
    edges: str, folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    enc = StreamingEncoder(folded, hop_frames=8, edges=edges)
    first = run(enc, drum_mel[None, :200], 8)
    enc.reset()
    assert enc.frames_pushed == 0
    again = run(enc, drum_mel[None, :200], 8)
    assert sorted(first) == sorted(again)
    for end in first:
        assert np.array_equal(first[end], again[end])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_array_allocation_per_hop(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, backend: str
) -> None:
    x = np.ascontiguousarray(np.stack([drum_mel[:400]] * 8))
    enc = continuous(folded, hop_frames=8, channels=8, backend=backend)
    run(enc, x[:, :80], 8)  # warm-up
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for s in range(80, 400, 8):
            enc.push(x[:, s : s + 8])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # 40 hops; one [8, 512] float32 array is 16 KiB and numpy's ufunc buffer
    # 32 KiB: any per-hop array would exceed this (Python's small objects don't).
    assert peak < 8 * 1024


def test_cosine_to_the_windowed_reference_on_real_drums(
    folded: list[tuple[np.ndarray, np.ndarray]],
    drum_mel: np.ndarray,
    aisfx_manifest_path: Path,
) -> None:
    from emberd.models.manifest import load_manifest
    from emberd.models.runtime import Encoder

    x = drum_mel[None]
    got = run(continuous(folded, hop_frames=8), x, 8)
    ends = [e for e in sorted(got) if e >= 96 and e + 4 <= x.shape[1]]
    windows = np.stack([drum_mel[e - 96 : e + 4] for e in ends])
    ref = Encoder(load_manifest(aisfx_manifest_path), device="cpu", threads=2).embed(windows)
    emb = np.stack([got[e][0] for e in ends])
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    # Measured on this stream: p5 ~0.95, median ~0.98. The gap is the reference's
    # zero padding at both window edges (the stream has real context there), not
    # an error: see test_every_embedding_equals_the_whole_stream_network. The
    # issue's 0.99-at-p5 target is NOT met; these bounds guard against regressions.
    assert len(cos) >= 60
    assert np.percentile(cos, 5) >= 0.92
    assert np.median(cos) >= 0.97


def test_bad_input_is_one_clear_error(folded: list[tuple[np.ndarray, np.ndarray]]) -> None:
    enc = StreamingEncoder(folded, hop_frames=8, channels=2)
    with pytest.raises(EmberdError, match="shape"):
        enc.push(np.zeros((3, 8, 96), np.float32))
    with pytest.raises(EmberdError, match="shape"):
        enc.push(np.zeros((2, 8, 40), np.float32))
    bad = np.zeros((2, 8, 96), np.float32)
    bad[1, 3, 5] = np.nan
    with pytest.raises(EmberdError, match="NaN"):
        enc.push(bad)
    assert enc.push(np.zeros((2, 0, 96), np.float32)) == []
    for kwargs in ({"hop_frames": 0}, {"channels": 0}, {"window_frames": 4}, {"threads": 0}):
        with pytest.raises(EmberdError):
            StreamingEncoder(folded, **{"hop_frames": 8, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(EmberdError, match="backend"):
        StreamingEncoder(folded, hop_frames=8, backend="tpu")
    with pytest.raises(EmberdError, match="folded"):
        StreamingEncoder(folded[:7], hop_frames=8)
    with pytest.raises(EmberdError, match="edges"):
        StreamingEncoder(folded, hop_frames=8, edges="soft")
    with pytest.raises(EmberdError, match="numpy backend only"):
        StreamingEncoder(folded, hop_frames=8, backend="onnx")
    with pytest.raises(EmberdError, match="device"):
        StreamingEncoder(folded, hop_frames=8, device="tpu")
    with pytest.raises(EmberdError, match="pad_frame"):
        StreamingEncoder(folded, hop_frames=8, pad_frame=np.zeros(40, np.float32))


# ------------------------------------------------------------------ exact edges


@pytest.fixture(scope="module")
def reference(aisfx_manifest_path: Path) -> Any:
    from emberd.models.manifest import load_manifest
    from emberd.models.runtime import Encoder

    return Encoder(load_manifest(aisfx_manifest_path), device="cpu", threads=2)


def test_exact_equals_the_windowed_onnx_reference_on_real_drums(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, reference: Any
) -> None:
    # The pad frame stands in for the audio before the stream: the first windows
    # are pad + the frames so far, as the daemon's windowed path builds them.
    pad = drum_mel.min(axis=0)
    x = drum_mel[None, :640]
    got = run(StreamingEncoder(folded, hop_frames=8, pad_frame=pad), x, 8)
    assert sorted(got) == list(range(8, 640 + 1, 8))  # every step, from frame 8 on
    padded = np.concatenate([np.repeat(pad[None], 100, axis=0), x[0]])
    ends = sorted(got)
    windows = np.stack([padded[e : e + 100] for e in ends])  # frames [e - 100, e)
    ref = np.concatenate([reference.embed(windows[i : i + 40]) for i in range(0, len(ends), 40)])
    emb = np.stack([got[e][0] for e in ends])
    err = np.abs(emb - ref).max(axis=1)
    assert err.max() <= TOL, (ends[int(err.argmax())], err.max())
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99999


def test_exact_is_the_reference_for_other_window_lengths(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    # The dirty-row propagation is generic: odd lengths, floors at every pool.
    for window in (8, 27, 64, 101):
        x = drum_mel[None, 100 : 100 + window + 48]
        got = run(StreamingEncoder(folded, hop_frames=8, window_frames=window), x, 8)
        for end in range(window + 8 - window % 8, x.shape[1] + 1, 8):
            ref = cn.forward(folded, x[:, end - window : end])
            assert np.abs(got[end] - ref).max() <= TOL, (window, end)


def test_dirty_rows_match_the_documented_table() -> None:
    from emberd.models.streaming_exact import _ranges, dirty_masks

    convs, pools = dirty_masks(100)
    table = [(1, 9), (2, 10), (2, 6), (3, 7), (3, 5), (4, 6), (3, 4), (4, 5)]
    for mask, (left, right) in zip(convs, table, strict=True):
        assert _ranges(mask) == ((0, left), (mask.size - right, mask.size))
    pooled = [_ranges(m) for m in pools if m is not None]
    assert pooled == [((0, 1), (45, 50)), ((0, 2), (21, 25)), ((0, 2), (9, 12))]


def test_exact_frames_96_to_99_matter_to_the_reference(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    # The third pool drops block-3 row 24, but that row is conv context for row
    # 23: the window really is 100 frames, which is why exact mode ends at 8k + 8.
    w = drum_mel[None, 200:300].copy()
    base = cn.forward(folded, w)
    w[:, 96:] += 1.0
    assert np.abs(cn.forward(folded, w) - base).max() > 100 * TOL


def test_exact_threads_do_not_change_the_embeddings(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    # threads=2: one channel splits each step into its two edges, several channels
    # run in groups; both must give what one thread gives.
    for channels in (1, 4):
        x = np.stack([drum_mel[40 * c : 40 * c + 160] for c in range(channels)])
        one = run(StreamingEncoder(folded, hop_frames=8, channels=channels, threads=1), x, 8)
        two = run(StreamingEncoder(folded, hop_frames=8, channels=channels, threads=2), x, 8)
        assert sorted(one) == sorted(two)
        for end in one:
            assert np.abs(one[end] - two[end]).max() <= TOL, (channels, end)


def test_exact_hop_size_does_not_change_the_sequence(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    x = drum_mel[None, 200:440]
    seqs = {hop: run(StreamingEncoder(folded, hop_frames=hop), x, hop) for hop in (1, 3, 8, 13, 16)}
    base = seqs[8]
    assert sorted(base) == list(range(8, 240 + 1, 8))
    for hop, seq in seqs.items():
        assert sorted(seq) == sorted(base), hop  # zero look-ahead: nothing held back
        for end in base:
            assert np.array_equal(seq[end], base[end]), (hop, end)


def test_exact_channel_batch_equals_single_channel_runs(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    rng = np.random.default_rng(3)
    starts = rng.integers(0, drum_mel.shape[0] - 200, size=3)
    x = np.stack([drum_mel[s : s + 200] for s in starts])
    batched = run(StreamingEncoder(folded, hop_frames=8, channels=3), x, 8)
    for c in range(3):
        single = run(StreamingEncoder(folded, hop_frames=8), x[c : c + 1], 8)
        assert sorted(single) == sorted(batched)
        for end, emb in single.items():
            assert np.abs(batched[end][c] - emb[0]).max() <= TOL, (c, end)


def test_exact_has_zero_look_ahead(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    enc = StreamingEncoder(folded, hop_frames=1)
    assert enc.latency_frames == 0
    ends = []
    for t in range(120):
        for end, _emb in enc.push(drum_mel[t : t + 1]):
            # Returned by the push that carries the window's own last frame.
            assert enc.frames_pushed == end == t + 1
            ends.append(end)
    assert ends == list(range(8, 121, 8))


@pytest.mark.parametrize("threads", [1, 2])  # groups / edges in threads
def test_exact_restart_continues_exactly_as_stepping(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, threads: int
) -> None:
    # A consumer that fell behind jumps to the window ending at frame 160 instead of
    # stepping through 40..160: that window's embedding and every later one are what
    # stepping through every frame gives.
    x = np.ascontiguousarray(np.stack([drum_mel[100:340], drum_mel[400:640]]))
    stepped = run(StreamingEncoder(folded, hop_frames=8, channels=2, threads=threads), x, 8)
    enc = StreamingEncoder(folded, hop_frames=8, channels=2, threads=threads)
    run(enc, x[:, :40], 8)
    emb = enc.restart(x[:, 60:160], 160)
    assert np.abs(emb - stepped[160]).max() <= TOL
    later = run(enc, x[:, 160:], 8)
    assert sorted(later) == list(range(168, 241, 8))
    for end, v in later.items():
        assert np.abs(v - stepped[end]).max() <= TOL, end
    with pytest.raises(EmberdError, match="multiple of 8"):
        enc.restart(x[:, 60:160], 161)
    with pytest.raises(EmberdError, match="restart window"):
        enc.restart(x[:, 60:150], 160)


@pytest.mark.parametrize("channels", [1, 8])  # edge split / channel groups in threads
def test_exact_no_array_allocation_per_hop(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, channels: int
) -> None:
    x = np.ascontiguousarray(np.stack([drum_mel[:240]] * channels))
    enc = StreamingEncoder(folded, hop_frames=8, channels=channels)
    run(enc, x[:, :40], 8)  # warm-up
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for s in range(40, 240, 8):
            enc.push(x[:, s : s + 8])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024  # one [8, 512] float32 array is 16 KiB


def test_cuda_request_falls_back_to_cpu(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    from emberd.models.onnxrt import onnxruntime

    available = onnxruntime().get_available_providers()
    enc = continuous(folded, hop_frames=8, device="cuda")
    if "CUDAExecutionProvider" not in available:
        assert enc.provider == "CPUExecutionProvider"
    cpu = continuous(folded, hop_frames=8, device="cpu")
    a, b = run(enc, drum_mel[None, :120], 8), run(cpu, drum_mel[None, :120], 8)
    assert sorted(a) == sorted(b)
    for end in a:
        assert np.abs(a[end] - b[end]).max() <= TOL
    exact = StreamingEncoder(folded, hop_frames=8, device="cuda")  # numpy: CPU, a warning
    assert exact.provider == "numpy"
