"""StreamingEncoder: exactness against the network on the whole stream, hop-size
independence, channel batching, latency, and agreement with the windowed aiSFX
reference on real drums.

The reference for exactness is :func:`emberd.models.conv_numpy.forward_columns`
(itself checked against ONNX Runtime here) run on the entire stream at once:
with zero padding only at the stream start, every streaming column must equal
it. The windowed reference (ONNX, 100 frames, zero padding at both window
edges) agrees only where the contexts coincide; see emberd/models/streaming.py.
"""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

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
    got = run(StreamingEncoder(folded, hop_frames=8, backend=backend), x, 8)
    # Everything but the last 32 frames' look-ahead comes out, starting at frame 8.
    assert sorted(got) == list(range(8, 600 - 32 + 1, 8))
    for end, emb in got.items():
        assert np.abs(emb - running_max(cols, end)).max() <= TOL, end


def test_interior_columns_equal_the_windowed_reference(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    # window_frames=8: the "max" runs over one column, so each embedding IS a column.
    x = drum_mel[None, :400]
    got = run(StreamingEncoder(folded, hop_frames=8, window_frames=8), x, 8)
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
        hop: run(StreamingEncoder(folded, hop_frames=hop, backend=backend), x, hop)
        for hop in (1, 3, 8, 13, 16)
    }
    rng = np.random.default_rng(5)  # and an irregular split, empty pushes included
    enc = StreamingEncoder(folded, hop_frames=8, backend=backend)
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
    enc_a = StreamingEncoder(folded, hop_frames=8, backend="onnx")
    enc_b = StreamingEncoder(folded, hop_frames=8, backend="numpy")
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
    batched = run(StreamingEncoder(folded, hop_frames=8, channels=4, backend=backend), x, 8)
    for c in range(4):
        single = run(StreamingEncoder(folded, hop_frames=8, backend=backend), x[c : c + 1], 8)
        assert sorted(single) == sorted(batched)
        for end, emb in single.items():
            assert np.abs(batched[end][c] - emb[0]).max() <= TOL, (c, end)


@pytest.mark.parametrize("backend", BACKENDS)
def test_latency_is_exact(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray, backend: str
) -> None:
    enc = StreamingEncoder(folded, hop_frames=1, backend=backend)
    for t in range(120):
        for end, _emb in enc.push(drum_mel[t : t + 1]):
            # Delivered by the push carrying frame end + latency - 1.
            assert enc.frames_pushed == end + enc.latency_frames
    assert enc.latency_frames == {"onnx": 32, "numpy": 30}[backend]


def test_reset_starts_a_new_stream(
    folded: list[tuple[np.ndarray, np.ndarray]], drum_mel: np.ndarray
) -> None:
    enc = StreamingEncoder(folded, hop_frames=8)
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
    enc = StreamingEncoder(folded, hop_frames=8, channels=8, backend=backend)
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
    got = run(StreamingEncoder(folded, hop_frames=8), x, 8)
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
