"""``emberd query TRACK --timeline``: every library sample in a track, where, how loud, how fast.

A small real library (hydrogen one-shots and a loop made of them, DSP baseline) and
short deterministic tracks built from it with :mod:`emberd.testing.beats`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emberd.cli import main
from emberd.library import Library
from emberd.library.timeline import WAVE_SR, Timeline
from emberd.testing import beats
from emberd.testing import drumkits as dk

KIT = "ColomboAcousticDrumkit"
OUTSIDER_KIT = "HardElectro1"  # not in the library
N_FILES = 10
START_TOL_S = 0.025
SPEED_TOL = 0.01
LONG_PIECES = 15  # x 20 s: a 5-minute track for the memory test


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, drumkit_dir: Path) -> dict:
    root = tmp_path_factory.mktemp("timeline")
    files = sorted(p for p in dk.kit_files(drumkit_dir) if Path(p).parent.name == KIT)
    sounds = root / "sounds"
    sounds.mkdir()
    picked = []
    for p in files[:: max(1, len(files) // N_FILES)][:N_FILES]:
        picked.append(sounds / Path(p).name)
        shutil.copy(p, picked[-1])
    # A one-bar loop at 120 bpm starting on its loudest hit: kick, hat, snare, hat, kick.
    loop = sounds / "loop120.wav"
    step = beats.SR // 8  # one 8th note
    y = np.zeros(8 * step, np.float32)
    for k, (i, gain) in enumerate([(0, 1.0), (5, 0.5), (9, 0.7), (5, 0.4), (0, 0.8)]):
        hit = beats.load_mono(picked[i])[: 8 * step - 2 * k * step] * np.float32(gain)
        y[2 * k * step : 2 * k * step + len(hit)] += hit if k < 4 else 0
    sf.write(loop, y / max(1.0, float(np.abs(y).max()) / 0.9), beats.SR, subtype="PCM_16")
    assert main(["index", str(sounds), "--library", str(root / "lib"), "--model",
                 "dsp-baseline", "--jobs", "0", "--quiet"]) == 0
    outsider = sorted(p for p in dk.kit_files(drumkit_dir) if Path(p).parent.name == OUTSIDER_KIT)
    return {"root": root, "lib": root / "lib", "sounds": picked, "loop": loop,
            "outsider": outsider[0]}


def _track(path: Path, parts: list[tuple[np.ndarray, float, float, float]], dur_s: float) -> None:
    y = np.zeros(int(dur_s * beats.SR), np.float32)
    for sound, start, speed, gain_db in parts:
        beats._add(y, beats.at_speed(sound, speed), start, gain_db)
    sf.write(path, y, beats.SR, subtype="FLOAT")


def test_a_beat_gives_its_samples_with_start_speed_and_gain(lib: dict, tmp_path: Path) -> None:
    s = lib["sounds"]
    truth = [  # (file, start s, speed, gain dB)
        (s[0], 0.30, 1.0, -3.0),
        (s[5], 1.10, 0.92, -6.0),
        (s[7], 2.00, 1.08, -9.0),
        (lib["loop"], 3.00, 0.95, -4.0),
        (s[3], 7.00, 1.0, 0.0),  # a loud crash ...
        (s[6], 7.30, 1.03, -14.0),  # ... and a quiet hat under its tail: found in the residual
        (s[9], 9.00, 1.05, 0.0),
    ]
    rng = np.random.default_rng(0)
    others = [(beats.load_mono(lib["outsider"]), 1.6, 1.0, -3.0),
              (beats.synth_distractor(rng), 2.6, 1.0, -3.0)]
    track = tmp_path / "beat.wav"
    _track(track, [(beats.load_mono(p), t, v, g) for p, t, v, g in truth] + others, 10.5)
    with Library.open(lib["lib"]) as library:
        res = Timeline(library).run(track)
    exact = [e for e in res.entries if e.kind == "exact"]
    got = [(Path(e.path).name, e.start_s, e.speed, e.gain_db) for e in exact]
    assert len(exact) == len(truth), got
    for (path, start, speed, gain), e in zip(truth, exact, strict=True):
        assert Path(e.path).name == Path(path).name, got
        assert abs(e.start_s - start) <= START_TOL_S, got
        assert abs(e.speed / speed - 1) <= SPEED_TOL, got
        assert abs(e.gain_db - gain) <= 1.5, got
        assert 0.5 < e.confidence <= 1.0


def test_non_library_sounds_give_no_entry(lib: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    track = tmp_path / "others.wav"
    _track(track, [(beats.load_mono(lib["outsider"]), 0.5, 1.0, -2.0),
                   (beats.synth_distractor(rng), 1.5, 1.0, -2.0),
                   (beats.synth_distractor(rng), 2.5, 1.0, -2.0)], 4.0)
    with Library.open(lib["lib"]) as library:
        res = Timeline(library).run(track)
    assert res.onsets >= 3  # the sounds were heard ...
    assert [e for e in res.entries if e.kind == "exact"] == []  # ... and claimed as nothing


def _peak_rss_mb(library: Path, track: Path) -> tuple[float, int]:
    """Run the timeline on ``track`` in a fresh process: its peak RSS (MB) and entries."""
    code = (
        "import resource, sys\n"
        "from emberd.library import Library\n"
        "from emberd.library.timeline import Timeline\n"
        "with Library.open(sys.argv[1]) as lib:\n"
        "    res = Timeline(lib).run(sys.argv[2])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(res.entries))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(library), str(track)], check=True,
                         capture_output=True, text=True, timeout=1200).stdout.split()
    return float(out[0]), int(out[1])


def _sparse_track(path: Path, hit: np.ndarray, pieces: int) -> None:
    """``pieces`` x 20 s: a quiet noise floor and one library hit per piece, written in
    pieces so the test never holds the whole file either."""
    rng = np.random.default_rng(2)
    with sf.SoundFile(path, "w", beats.SR, 1, subtype="PCM_16") as f:
        for _ in range(pieces):
            y = (rng.standard_normal(20 * beats.SR) * 1e-4).astype(np.float32)
            y[beats.SR : beats.SR + len(hit)] += hit * np.float32(0.5)
            f.write(y)


def test_a_long_file_streams_in_bounded_memory(lib: dict, tmp_path: Path) -> None:
    hit = beats.load_mono(lib["sounds"][2])
    _sparse_track(tmp_path / "short.wav", hit, 1)
    _sparse_track(tmp_path / "long.wav", hit, LONG_PIECES)
    short_mb, n_short = _peak_rss_mb(lib["lib"], tmp_path / "short.wav")
    long_mb, n_long = _peak_rss_mb(lib["lib"], tmp_path / "long.wav")
    assert (n_short, n_long) == (1, LONG_PIECES)
    # The whole file decoded at the engine's rate would be 26 MB (float32), twice that as
    # read: the peak must not grow by anything near it.
    full_mb = LONG_PIECES * 20 * WAVE_SR * 4 / 2**20
    assert long_mb - short_mb < full_mb / 3, (short_mb, long_mb)


def test_bad_file_is_one_line_and_exit_2(lib: dict, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    capsys.readouterr()
    rc = main(["query", str(bad), "--timeline", "--library", str(lib["lib"])])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "Traceback" not in err


def test_silence_gives_an_empty_timeline_with_a_reason(
    lib: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = tmp_path / "silence.wav"
    sf.write(quiet, np.zeros(3 * beats.SR, np.float32), beats.SR)
    dc = tmp_path / "dc.wav"
    sf.write(dc, np.full(3 * beats.SR, 0.3, np.float32), beats.SR, subtype="FLOAT")
    capsys.readouterr()
    rc = main(["query", str(quiet), str(dc), "--timeline", "--json", "--library",
               str(lib["lib"])])
    out, _err = capsys.readouterr()
    assert rc == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["timeline"] for r in records] == [[], []]
    assert "digital silence" in records[0]["reason"]
    assert "DC offset" in records[1]["reason"]
