"""The ONNX Runtime encoder: providers, threads, input checks, the DSP baseline graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emberd.errors import EmberdError
from emberd.models import baseline, runtime
from emberd.models.manifest import ModelManifest, builtin_manifest_dict, parse_manifest
from emberd.models.onnxrt import onnxruntime
from emberd.models.runtime import Encoder


@pytest.fixture(scope="module")
def baseline_manifest(tmp_path_factory: pytest.TempPathFactory) -> ModelManifest:
    folder = tmp_path_factory.mktemp("baseline")
    (folder / "model.onnx").write_bytes(baseline.build_onnx().SerializeToString())
    return parse_manifest(builtin_manifest_dict("dsp-baseline"), folder, where="dsp-baseline")


def test_baseline_graph_matches_numpy(baseline_manifest: ModelManifest) -> None:
    enc = Encoder(baseline_manifest, device="cpu", threads=1)
    x = np.random.default_rng(3).random((5, 100, 96), dtype=np.float32)
    got = enc.embed(x)
    assert got.shape == (5, baseline.DIM) == (5, baseline_manifest.dim)
    np.testing.assert_allclose(got, baseline.reference(x), atol=1e-4)
    short = x[:1, :7]  # dynamic frames
    np.testing.assert_allclose(enc.embed(short), baseline.reference(short), atol=1e-4)


def test_baseline_dct_is_orthonormal_dct2() -> None:
    d = baseline.dct_matrix(n_mels=96, n_mfcc=96).astype(np.float64)
    np.testing.assert_allclose(d.T @ d, np.eye(96), atol=1e-5)
    # A constant frame has energy only in c0.
    c = np.ones(96) @ d
    assert abs(c[0] - np.sqrt(96)) < 1e-4 and np.abs(c[1:]).max() < 1e-4


def test_baseline_separates_timbres(baseline_manifest: ModelManifest) -> None:
    enc = Encoder(baseline_manifest, device="cpu", threads=1)
    low = np.zeros((1, 100, 96), np.float32)
    low[..., :10] = 0.8
    high = np.zeros((1, 100, 96), np.float32)
    high[..., 80:] = 0.8
    noisy_low = low + np.random.default_rng(0).random(low.shape, dtype=np.float32) * 0.02
    e_low, e_high, e_noisy = enc.embed(low)[0], enc.embed(high)[0], enc.embed(noisy_low)[0]
    assert np.linalg.norm(e_low - e_noisy) < np.linalg.norm(e_low - e_high) / 5


def test_provider_and_threads_are_explicit(baseline_manifest: ModelManifest) -> None:
    enc = Encoder(baseline_manifest, device="cpu", threads=1)
    assert enc.provider == "CPUExecutionProvider"
    assert enc.session.get_providers() == ["CPUExecutionProvider"]
    opts = runtime.session_options(3, spinning=True)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    off = runtime.session_options(1, spinning=False)
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(EmberdError, match="threads=0"):
        runtime.session_options(0, spinning=False)


def test_cuda_fallback_is_stated_once(
    baseline_manifest: ModelManifest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if "CUDAExecutionProvider" in onnxruntime().get_available_providers():
        enc = Encoder(baseline_manifest, device="cuda")
        assert enc.provider == "CUDAExecutionProvider"
        x = np.random.default_rng(0).random((3, 100, 96), dtype=np.float32)
        np.testing.assert_allclose(enc.embed(x), baseline.reference(x), atol=1e-4)
        np.testing.assert_allclose(enc.embed(x * 0.5), baseline.reference(x * 0.5), atol=1e-4)
        return
    monkeypatch.setattr(runtime, "_fallback_stated", False)
    with caplog.at_level("WARNING", logger="emberd.models.runtime"):
        first = Encoder(baseline_manifest, device="cuda")
        second = Encoder(baseline_manifest, device="cuda")
    assert first.provider == second.provider == "CPUExecutionProvider"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "running the encoder on CPU" in warnings[0] and "emberd[gpu]" in warnings[0]


def test_auto_without_cuda_is_quiet(
    baseline_manifest: ModelManifest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Where CUDA is present auto picks it, just as quietly: the test runs either way, no skip.
    cuda = "CUDAExecutionProvider" in onnxruntime().get_available_providers()
    monkeypatch.setattr(runtime, "_fallback_stated", False)
    with caplog.at_level("WARNING", logger="emberd.models.runtime"):
        provider = Encoder(baseline_manifest, device="auto").provider
    assert provider == ("CUDAExecutionProvider" if cuda else "CPUExecutionProvider")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((100, 96), r"input shape \(100, 96\)"),
        ((1, 100, 64), r"expected \[batch, frames, 96\]"),
        ((0, 100, 96), "input shape"),
    ],
)
def test_embed_rejects_bad_input(baseline_manifest, shape, message) -> None:
    enc = Encoder(baseline_manifest, device="cpu", warmup=False)
    with pytest.raises(EmberdError, match=message):
        enc.embed(np.zeros(shape, np.float32))


def test_embed_rejects_nan_and_bad_device(baseline_manifest: ModelManifest) -> None:
    enc = Encoder(baseline_manifest, device="cpu", warmup=False)
    x = np.zeros((1, 100, 96), np.float32)
    x[0, 3, 4] = np.nan
    with pytest.raises(EmberdError, match="NaN"):
        enc.embed(x)
    with pytest.raises(EmberdError, match="device 'tpu'"):
        Encoder(baseline_manifest, device="tpu")


def test_aisfx_needs_min_frames(aisfx_manifest_path: Path) -> None:
    from emberd.models.manifest import load_manifest

    enc = Encoder(load_manifest(aisfx_manifest_path), device="cpu", threads=1)
    assert enc.embed(np.zeros((2, 8, 96), np.float32)).shape == (2, 512)
    with pytest.raises(EmberdError, match="7 frames, needs >= 8"):
        enc.embed(np.zeros((1, 7, 96), np.float32))
