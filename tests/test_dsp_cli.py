"""``emberd features`` and ``emberd devices``, including every bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import require, wav_bytes

from emberd.cli import main
from emberd.dsp.config import preset
from emberd.dsp.frontend import melspectrogram
from emberd.dsp.sources import load_audio, synth_signal


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(path, synth_signal("mix", 0, 48000 * 2, sr=48000, seed=5), 48000, subtype="FLOAT")
    return path


@pytest.mark.parametrize(("name", "block"), [("aisfx", None), ("librosa", 1000)])
def test_features_writes_streaming_frames(
    clip: Path, tmp_path: Path, name: str, block: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "frames.npy"
    argv = ["features", str(clip), "--preset", name, "--out", str(out)]
    if block:
        argv += ["--block-size", str(block)]
    assert main(argv) == 0
    frames = np.load(out)
    config = preset(name)
    y, _ = load_audio(clip, sr=config.sr)
    ref = melspectrogram(y, config)
    assert frames.dtype == np.float32 and frames.shape == ref.shape
    assert np.max(np.abs(frames - ref)) / np.max(np.abs(ref)) <= 1e-5
    assert f"{ref.shape[0]} frames x {config.n_mels} bands" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left



def sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError:
        require(False, "PortAudio (libportaudio2)")
    return sd


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00garbage" * 100)
    one = tmp_path / "one.wav"
    sf.write(one, np.zeros(1), 44100)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1, 0.2]), 44100, subtype="FLOAT")
    sr0 = tmp_path / "sr0.wav"
    sr0.write_bytes(wav_bytes(0, np.zeros(64)))
    return {
        "missing": (tmp_path / "missing.wav", "no such file"),
        "empty": (empty, "empty file"),
        "unreadable": (garbage, "cannot read audio"),
        "one sample": (one, "only one sample"),
        "nan": (nan, "NaN/Inf"),
        "sample rate 0": (sr0, "sample rate is 0"),
    }


def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.npy"
    cases = [
        (["features", str(path), "--out", str(out)], msg)
        for path, msg in _bad_files(tmp_path).values()
    ]
    cases.append((["features", str(clip), "--block-size", "0", "--out", str(out)], "block size 0"))
    cases.append(
        (["features", str(clip), "--out", str(tmp_path / "nope" / "x.npy")], "does not exist")
    )
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("emberd: error: ") and msg in err, err
        assert "Traceback" not in err
    assert not out.exists()


def test_unknown_device_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    sounddevice()
    assert main(["devices", "emberd-no-such-device-xyz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no input device with that name" in err


def test_devices_lists_every_device(capsys: pytest.CaptureFixture[str]) -> None:
    sd = sounddevice()
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for dev in sd.query_devices():
        assert dev["name"] in out


def test_subprocess_bad_input(tmp_path: Path) -> None:
    """The real console entry: exit 2, one line on stderr, no traceback."""
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "emberd", "features", str(bad), "--out", str(tmp_path / "o.npy")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"emberd: error: {bad}: empty file\n"


def test_devices_without_portaudio_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With sounddevice unimportable, ``emberd devices`` names the missing component."""
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import now raises ImportError
    assert main(["devices"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sounddevice: not installed" in err
