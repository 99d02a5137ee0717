"""Windowing, pooling, signal/file embedding and ``emberd embed``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emberd.cli import main
from emberd.errors import EmberdError
from emberd.models import baseline, embedding
from emberd.models.manifest import ModelManifest, builtin_manifest_dict, parse_manifest
from emberd.models.runtime import Encoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    folder = tmp_path_factory.mktemp("baseline")
    (folder / "model.onnx").write_bytes(baseline.build_onnx().SerializeToString())
    manifest: ModelManifest = parse_manifest(
        builtin_manifest_dict("dsp-baseline"), folder, where="dsp-baseline"
    )
    return Encoder(manifest, device="cpu", threads=1)


@pytest.mark.parametrize(
    ("n", "tail", "want"),
    [
        (1, "drop", [0]),
        (100, "drop", [0]),
        (149, "drop", [0]),
        (150, "drop", [0, 50]),
        (149, "pad", [0, 50]),
        (250, "pad", [0, 50, 100, 150]),
        (251, "pad", [0, 50, 100, 150, 200]),
    ],
)
def test_window_starts(n: int, tail: str, want: list[int]) -> None:
    got = embedding.window_starts(n, window_frames=100, hop_frames=50, tail=tail)
    assert got.tolist() == want


def test_frame_windows_content_and_padding() -> None:
    mel = np.arange(130 * 4, dtype=np.float32).reshape(130, 4)
    windows, starts = embedding.frame_windows(mel, window_frames=100, hop_frames=20, tail="pad")
    assert starts.tolist() == [0, 20, 40]
    assert windows.shape == (3, 100, 4)
    np.testing.assert_array_equal(windows[1], mel[20:120])
    np.testing.assert_array_equal(windows[2, :90], mel[40:130])
    assert not windows[2, 90:].any()  # zero padding past the end
    short, _ = embedding.frame_windows(mel[:5], window_frames=100, hop_frames=50)
    assert short.shape == (1, 100, 4) and not short[0, 5:].any()
    with pytest.raises(EmberdError, match="tail='x'"):
        embedding.window_starts(5, window_frames=4, hop_frames=2, tail="x")


def test_pooling() -> None:
    emb = np.array([[1.0, 0.0], [3.0, 4.0]], np.float32)
    np.testing.assert_allclose(embedding.pool(emb, "mean"), [2.0, 2.0])
    np.testing.assert_allclose(embedding.pool(emb, "max"), [3.0, 4.0])
    np.testing.assert_allclose(embedding.pool(emb, "energy", np.array([3.0, 1.0])), [1.5, 1.0])
    np.testing.assert_allclose(embedding.pool(emb, "energy", np.zeros(2)), [2.0, 2.0])
    with pytest.raises(EmberdError, match="one weight per window"):
        embedding.pool(emb, "energy")
    with pytest.raises(EmberdError, match="pool='median'"):
        embedding.pool(emb, "median")


def test_window_energy() -> None:
    y = np.concatenate([np.zeros(100), np.ones(100)])
    e = embedding.window_energy(y, np.array([0.0, 1.0, 1.5]), sr=100, window_s=0.5)
    np.testing.assert_allclose(e, [0.0, 1.0, 1.0])


def test_embed_signal_times_and_rows(encoder: Encoder) -> None:
    sr = 44100
    t = np.arange(int(5.0 * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    emb, starts = embedding.embed_signal(y, encoder)
    config = encoder.manifest.frontend()
    assert emb.shape[1] == 64 and emb.shape[0] == len(starts) >= 2
    np.testing.assert_allclose(np.diff(starts), 50 * config.hop_seconds)
    # The windows embedded are exactly the frames the front end gives.
    from emberd.dsp.frontend import melspectrogram

    mel = melspectrogram(y, config)
    np.testing.assert_allclose(emb[1], baseline.reference(mel[None, 50:150])[0], atol=1e-4)


def _drums(drumkit_dir: Path) -> list[Path]:
    kit = drumkit_dir / "ForzeeStereo"
    return [kit / "Kick-0.wav", kit / "Ride-0.wav", kit / "Kick-1.wav"]


def test_cli_embed_pooled_rows_in_argument_order(
    drumkit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBERD_DATA_DIR", str(tmp_path / "data"))
    files = [p for p in _drums(drumkit_dir) if p.is_file()]
    assert len(files) == 3
    out = tmp_path / "e.npy"
    args = ["embed", *map(str, files), "--model", "dsp-baseline", "--out", str(out)]
    assert main([*args, "--pool", "energy", "--device", "cpu"]) == 0
    pooled = np.load(out)
    assert pooled.shape == (3, 64) and pooled.dtype == np.float32
    kick0, ride, kick1 = pooled
    # Two kicks are closer to each other than a kick to a ride cymbal.
    assert np.linalg.norm(kick0 - kick1) < np.linalg.norm(kick0 - ride)
    assert main([*args, "--frames"]) == 0
    frames = np.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [Path(f["path"]).name for f in meta["files"]] == [p.name for p in files]
    assert meta["files"][-1]["rows"][1] == frames.shape[0] >= 3
    ride_rows = slice(*meta["files"][1]["rows"])
    assert len(meta["files"][1]["start_s"]) == ride_rows.stop - ride_rows.start > 1


def test_cli_embed_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    out = tmp_path / "e.npy"
    assert main(["embed", str(bad), "--model", "dsp-baseline", "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists()
    assert main(["embed", str(bad), "--model", "dsp-baseline", "--out", str(tmp_path / "e")]) == 2
    assert "--out must end in .npy" in capsys.readouterr().err


def test_cli_embed_with_aisfx(
    aisfx_manifest_path: Path, drumkit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.setenv("EMBERD_DATA_DIR", str(tmp_path / "data"))
    shutil.copytree(aisfx_manifest_path.parent, tmp_path / "data" / "models" / "aisfx")
    out = tmp_path / "a.npy"
    files = list(map(str, _drums(drumkit_dir)))
    assert main(["embed", *files, "--out", str(out), "--device", "cpu"]) == 0  # default: aisfx
    kick0, ride, kick1 = np.load(out)
    assert kick0.shape == (512,)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(kick0, kick1) > cos(kick0, ride)
