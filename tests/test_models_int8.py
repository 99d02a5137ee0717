"""aisfx-int8: built from the fp32 graph and the shipped calibration ranges, loads, stays close."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from emberd.models import quantize
from emberd.models.embedding import frame_windows
from emberd.models.manifest import builtin_manifest_dict, load_manifest, parse_manifest
from emberd.models.runtime import Encoder

MIN_COSINE = 0.95  # every window, int8 vs fp32
MEAN_COSINE = 0.98


@pytest.fixture(scope="module")
def int8_folder(aisfx_manifest_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = aisfx_manifest_path.parent.parent / "aisfx-int8"  # beside aisfx, as installed
    quantize.build_int8(aisfx_manifest_path.parent / "model.onnx", folder)
    return folder


def _drum_windows(drumkit_dir: Path, frontend: object) -> np.ndarray:
    from emberd.dsp.frontend import melspectrogram
    from emberd.dsp.sources import load_audio

    out = []
    for f in sorted(drumkit_dir.glob("*/*.wav"))[::23][:12]:
        y, _ = load_audio(f, sr=frontend.sr, mono=True)  # type: ignore[attr-defined]
        w, _ = frame_windows(melspectrogram(y, frontend), window_frames=100, hop_frames=50,
                             tail="pad")  # fmt: skip
        out.append(w)
    return np.concatenate(out)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def test_int8_model_loads_and_is_close_to_fp32(
    aisfx_manifest_path: Path, int8_folder: Path, drumkit_dir: Path
) -> None:
    import onnx

    fp32 = load_manifest(aisfx_manifest_path)
    manifest = parse_manifest(builtin_manifest_dict("aisfx-int8"), int8_folder, where="int8")
    ops = {n.op_type for n in onnx.load(str(manifest.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized
    int8 = Encoder(manifest, device="cpu", threads=2)
    ref = Encoder(fp32, device="cpu", threads=2, skip_silence=False)
    x = _drum_windows(drumkit_dir, fp32.frontend())
    cos = _cosines(int8.embed(x), ref.embed(x))
    assert cos.min() >= MIN_COSINE and cos.mean() >= MEAN_COSINE, (cos.min(), cos.mean())


def test_int8_silence_skipping_equals_int8_full_windows(
    int8_folder: Path, drumkit_dir: Path
) -> None:
    manifest = parse_manifest(builtin_manifest_dict("aisfx-int8"), int8_folder, where="int8")
    skip = Encoder(manifest, device="cpu", threads=2)
    full = Encoder(manifest, device="cpu", threads=2, skip_silence=False)
    assert skip.skipper is not None and full.skipper is None
    x = _drum_windows(drumkit_dir, manifest.frontend())
    x[:4, 30:] = 0.0  # some short sounds, so the cones are used
    assert np.abs(skip.embed(x) - full.embed(x)).max() <= 1e-5
    assert any((int8_folder / "layers").glob("layer*.onnx"))  # quantized layers cached


def test_wrong_calibration_ranges_are_not_close(
    aisfx_manifest_path: Path, drumkit_dir: Path, tmp_path: Path
) -> None:
    """The closeness above comes from the fitted ranges: ranges 50x too wide lose it."""
    data = json.loads(quantize.calibration_path().read_text())
    for entry in data["data"].values():  # ORT's cache: {"lowest": {"data": [...]}, ...}
        for key in ("lowest", "highest"):
            entry[key]["data"] = [50.0 * v for v in entry[key]["data"]]
    cache = tmp_path / "wide.json"
    cache.write_text(json.dumps(data))
    quantize.quantize(aisfx_manifest_path.parent / "model.onnx", tmp_path / "model.onnx",
                      cache=cache)  # fmt: skip
    fp32 = load_manifest(aisfx_manifest_path)
    bad = Encoder(replace(fp32, path=tmp_path / "model.onnx"), device="cpu", skip_silence=False)
    ref = Encoder(fp32, device="cpu", skip_silence=False)
    x = _drum_windows(drumkit_dir, fp32.frontend())
    cos = _cosines(bad.embed(x), ref.embed(x))
    assert cos.mean() < MEAN_COSINE


def test_int8_is_rebuilt_when_the_shipped_ranges_change(int8_folder: Path) -> None:
    assert quantize.is_current(int8_folder)
    stamp = int8_folder / quantize.STAMP_FILE
    good = stamp.read_text()
    stamp.write_text("0" * 64 + "\n")  # built with other ranges
    try:
        assert not quantize.is_current(int8_folder)
    finally:
        stamp.write_text(good)
