"""Exact silence skipping: cone-only windows equal full windows; eligibility is opt-in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from emberd.errors import EmberdError
from emberd.models import baseline, silence_skip
from emberd.models.embedding import frame_windows
from emberd.models.manifest import builtin_manifest_dict, load_manifest, parse_manifest
from emberd.models.runtime import Encoder

TOL = 1e-5  # max abs difference to the full window (the bound)
WINDOW = 100  # aiSFX frames


@pytest.fixture(scope="module")
def encoders(aisfx_manifest_path: Path) -> tuple[Encoder, Encoder]:
    manifest = load_manifest(aisfx_manifest_path)
    plain = Encoder(manifest, device="cpu", threads=2, skip_silence=False)
    skip = Encoder(manifest, device="cpu", threads=2)
    return plain, skip


def _calls(enc: Encoder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch size of every full-graph call of ``enc``."""
    seen: list[int] = []
    run = enc._run_full

    def spy(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape[0])
        return run(x)

    monkeypatch.setattr(enc, "_run_full", spy)
    return seen


def test_aisfx_skips_by_default_and_plain_on_request(encoders: tuple[Encoder, Encoder]) -> None:
    plain, skip = encoders
    assert plain.skipper is None
    assert skip.skipper is not None


def _synthetic(spans: list[tuple[int, int]], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((len(spans), WINDOW, 96), np.float32)
    for w, (a, b) in enumerate(spans):
        x[w, a:b] = rng.random((b - a, 96), dtype=np.float32)
        if b - a > 2:
            x[w, a + 1, :40] = 0.0  # zeros inside a span are sound rows too
    return x


SPANS = [
    (0, 1), (99, 100), (0, 8), (92, 100), (96, 100), (0, 13), (87, 100),  # window edges
    (1, 2), (7, 9), (15, 16), (23, 26), (31, 33), (47, 60), (50, 63), (95, 99),  # pool parities
    (10, 40), (30, 90), (0, 100), (5, 95),  # long: some go to the full graph
]  # fmt: skip


def test_synthetic_spans_equal_full_window(
    encoders: tuple[Encoder, Encoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, skip = encoders
    x = _synthetic(SPANS)
    full_calls = _calls(skip, monkeypatch)
    got = skip.embed(x)
    want = plain.embed(x)
    assert np.abs(got - want).max() <= TOL
    # Most of these windows went through the cones, not the full graph.
    assert sum(full_calls) <= 4


def test_each_span_alone_equals_full_window(encoders: tuple[Encoder, Encoder]) -> None:
    plain, skip = encoders
    for a, b in SPANS[:15]:
        x = _synthetic([(a, b)], seed=a * 100 + b)
        diff = np.abs(skip.embed(x) - plain.embed(x)).max()
        assert diff <= TOL, (a, b, diff)


def test_silent_window_is_the_full_graphs_silence_without_running_it(
    encoders: tuple[Encoder, Encoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, skip = encoders
    x = np.zeros((3, WINDOW, 96), np.float32)
    full_calls = _calls(skip, monkeypatch)
    got = skip.embed(x)
    assert full_calls == []
    np.testing.assert_allclose(got, plain.embed(x), atol=TOL, rtol=0)
    # A silent window never looks like a sound: it is far from every drum in the test below.
    assert skip.skipper is not None
    np.testing.assert_array_equal(got[0], skip.skipper.silent_embedding)


def _drum_windows(drumkit_dir: Path, frontend: object) -> np.ndarray:
    from emberd.dsp.frontend import melspectrogram
    from emberd.dsp.sources import load_audio

    files = sorted(drumkit_dir.glob("*/*.flac"))[::97][:8] + sorted(drumkit_dir.glob("*/*.wav"))[:4]
    assert len(files) >= 6
    out = []
    for f in files:
        y, _ = load_audio(f, sr=frontend.sr, mono=True)  # type: ignore[attr-defined]
        mel = melspectrogram(y, frontend)
        windows, _ = frame_windows(mel, window_frames=WINDOW, hop_frames=50, tail="pad")
        out.append(windows)
        # The onset-aligned window of a live hit: the hit starts late in the window.
        late = np.zeros((1, WINDOW, mel.shape[1]), np.float32)
        k = min(mel.shape[0], 40)
        late[0, WINDOW - k :] = mel[:k]
        out.append(late)
    return np.concatenate(out)


def test_real_drums_equal_full_window(
    encoders: tuple[Encoder, Encoder], drumkit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, skip = encoders
    x = _drum_windows(drumkit_dir, plain.manifest.frontend())
    assert skip.skipper is not None
    costs = [
        skip.skipper.cost_ratio((int(a), int(b)))
        for a, b in silence_skip.spans(x)
        if b > a
    ]
    assert sum(c <= silence_skip.MAX_COST_RATIO for c in costs) >= len(x) // 3
    want = plain.embed(x)
    got = skip.embed(x)
    assert np.abs(got - want).max() <= TOL
    # Every drum is far from silence, so silence can never be its nearest match.
    sil = skip.skipper.silent_embedding
    assert np.min(np.linalg.norm(got - sil, axis=1)) > 1e-3 * np.linalg.norm(sil)


def test_other_window_lengths_run_the_full_graph(encoders: tuple[Encoder, Encoder]) -> None:
    plain, skip = encoders
    x = np.zeros((1, 40, 96), np.float32)
    x[0, 5:9] = 0.5
    np.testing.assert_allclose(skip.embed(x), plain.embed(x), atol=TOL, rtol=0)


def test_manifest_without_the_flag_refuses(aisfx_manifest_path: Path, tmp_path: Path) -> None:
    data = json.loads(aisfx_manifest_path.read_text())
    data.pop(silence_skip.MANIFEST_KEY)
    shutil.copy(aisfx_manifest_path.parent / "model.onnx", tmp_path / "model.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    manifest = load_manifest(tmp_path / "manifest.json")
    assert Encoder(manifest, device="cpu", threads=1).skipper is None  # default: plain graph
    with pytest.raises(EmberdError, match="does not declare"):
        Encoder(manifest, device="cpu", threads=1, skip_silence=True)


def test_flag_on_a_graph_that_is_not_a_conv_stack_refuses(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(baseline.build_onnx().SerializeToString())
    data = builtin_manifest_dict("dsp-baseline")
    data[silence_skip.MANIFEST_KEY] = True
    manifest = parse_manifest(data, tmp_path, where="flagged baseline")
    with pytest.raises(EmberdError, match="not a conv stack"):
        Encoder(manifest, device="cpu", threads=1)


def test_parse_reads_the_aisfx_layers(aisfx_manifest_path: Path) -> None:
    import onnx

    stack = silence_skip.parse_conv_stack(onnx.load(str(aisfx_manifest_path.parent / "model.onnx")))
    assert [w.shape[0] for w, _ in stack.weights] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert stack.pool_after == [False, True, False, True, False, True, False, False]


def test_cones_grow_one_row_per_conv_and_halve_at_pools(aisfx_manifest_path: Path) -> None:
    enc = Encoder(load_manifest(aisfx_manifest_path), device="cpu", threads=1, warmup=False)
    assert enc.skipper is not None
    cones = enc.skipper.cones((40, 48))
    # Level 0: 39-49, 38-50; pooled 19-25 -> 18-26, 17-27 (even: 16-28); pooled 8-14 ...
    assert cones[:4] == [(39, 49), (38, 50), (18, 26), (16, 28)]
    assert cones[-1][1] - cones[-1][0] < 12  # block 4 skips some columns
    assert enc.skipper.cost_ratio((40, 48)) < 0.5
    assert enc.skipper.cost_ratio((0, 100)) > 0.95
