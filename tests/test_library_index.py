"""emberd index / query / library info on real files with the real DSP-baseline encoder.

Broken inputs are generated in tmp_path; every run must complete, skip each
broken file with a reason, and keep the good ones searchable.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emberd.cli import main
from emberd.errors import EmberdError
from emberd.library import Library
from emberd.library.indexer import Indexer
from emberd.library.scan import scan
from emberd.testing import smalllib

MODEL = "dsp-baseline"
SR = 44100


def _index(tmp: Path, *dirs: Path, jobs: int = 0) -> int:
    return main(["index", *map(str, dirs), "--library", str(tmp / "lib"), "--model", MODEL,
                 "--jobs", str(jobs), "--quiet"])


def _query_json(capsys: pytest.CaptureFixture[str], lib: Path, *files: Path | str,
                k: int = 3) -> tuple[int, list[dict]]:
    capsys.readouterr()
    rc = main(["query", *map(str, files), "--library", str(lib), "--model", MODEL,
               "--k", str(k), "--json"])
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    return rc, lines


def _tone(path: Path, *, freq: float = 440.0, dur: float = 0.5, sr: int = SR, **kw: object) -> Path:
    t = np.arange(int(dur * sr)) / sr
    y = 0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-3 * t)
    sf.write(path, y.astype(np.float32), sr, **kw)  # type: ignore[arg-type]
    return path


@pytest.fixture()
def sounds(tmp_path: Path) -> Path:
    root = tmp_path / "sounds"
    smalllib.write_sounds(root, per_folder=2)
    return root


def test_index_query_and_summary(sounds: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _index(tmp_path, sounds, jobs=2) == 0
    out = capsys.readouterr().out
    assert "indexed 8, unchanged 0, removed 0, skipped 0" in out
    probe = sounds / "Snares" / "snare_001.wav"
    capsys.readouterr()
    rc = main(["query", str(probe), "missing.wav", str(probe), "--library", str(tmp_path / "lib"),
               "--model", MODEL, "--k", "3", "--json"])
    out, err = capsys.readouterr()
    lines = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    assert rc == 1  # an input failed: the others are answered, the error is on stderr
    assert [ln["query"] for ln in lines] == [str(probe), str(probe)]
    assert "missing.wav" in err and "no such file" in err and "missing.wav" not in out
    best = lines[0]["matches"][0]
    assert best["path"] == str(probe.absolute()) and os.path.isabs(best["path"])
    assert best["tags"] == ["Snares"] and best["name"] == "snare_001.wav"
    assert best["score"] == pytest.approx(1.0, abs=1e-4) and best["distance"] < 0.01
    scores = [m["score"] for m in lines[0]["matches"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert {m["kind"] for m in lines[0]["matches"]} <= {"exact", "similar"}
    # Only errors: exit 1 (some inputs failed), nothing on stdout, one line each on stderr.
    rc, lines = _query_json(capsys, tmp_path / "lib", "nope1.wav", "nope2.wav")
    assert rc == 1 and lines == []


def test_incremental_changed_and_deleted(sounds: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _index(tmp_path, sounds) == 0
    capsys.readouterr()
    lib = tmp_path / "lib"
    (sounds / "Kicks" / "kick_000.wav").unlink()
    changed = sounds / "Pads" / "pad_000.wav"
    y, sr = sf.read(changed)
    sf.write(changed, y[: len(y) // 2], sr)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    new = _tone(sounds / "Pads" / "new_tone.wav")
    assert _index(tmp_path, sounds) == 0
    assert "indexed 2, unchanged 6, removed 1, skipped 0" in capsys.readouterr().out
    with Library.open(lib) as library:
        files = {r.path: r for r in library.files().values()}
        assert str(new) in files and str(sounds / "Kicks" / "kick_000.wav") not in files
        assert files[str(changed)].duration_s == pytest.approx(len(y[: len(y) // 2]) / sr)
    with Library.open(lib) as library:  # an unknown model is a clear error
        with pytest.raises(EmberdError, match="not indexed with model nope"):
            library.search(np.ones((1, 64), np.float32), 1, model="nope")
    # (a second, real model in the same library: tests/test_library_aisfx.py)
    assert _index(tmp_path, sounds) == 0
    assert "indexed 0, unchanged 8" in capsys.readouterr().out


def _exotic_wav(path: Path) -> None:
    """A RIFF/WAVE header with a codec tag libsndfile does not know (0x2222)."""
    data = os.urandom(4000)
    fmt = struct.pack("<HHIIHH", 0x2222, 1, SR, SR * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_bad_inputs_are_skipped_with_reasons(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "bad"
    (root / "ok").mkdir(parents=True)
    good = _tone(root / "ok" / "good.wav")
    _tone(root / "ok" / "really_a_wav.txt", freq=660.0, format="WAV")  # wrong extension: sniffed
    (root / "text_named.wav").write_text("this is not audio\n" * 20)
    (root / "zero.wav").write_bytes(b"")
    full = _tone(root / "trunc_src.flac", freq=300.0, dur=2.0)
    (root / "truncated.flac").write_bytes(full.read_bytes()[:60])
    full.unlink()
    (root / "corrupt.aiff").write_bytes(b"FORM" + os.urandom(500))
    _exotic_wav(root / "exotic.wav")
    sf.write(root / "silent.wav", np.zeros(SR // 2, np.float32), SR)
    tick = root / "tick.wav"
    sf.write(tick, np.hanning(int(0.02 * SR)).astype(np.float32) * 0.8, SR)  # 20 ms
    (root / "loop").symlink_to(root)  # symbolic link loop
    (root / "dangling.wav").symlink_to(root / "gone.wav")
    locked = _tone(root / "locked.wav", freq=500.0)
    locked.chmod(0)
    try:
        rc = _index(tmp_path, root)
    finally:
        locked.chmod(0o644)
    out = capsys.readouterr().out
    assert rc == 0, out
    is_root = os.geteuid() == 0  # root reads a mode-000 file
    # good.wav, really_a_wav.txt, tick.wav (padded), and locked.wav only for root
    assert f"indexed {4 if is_root else 3}," in out, out
    reasons = {Path(ln.split(": ")[0].split("skipped ", 1)[1]).name: ln
               for ln in out.splitlines() if ln.startswith("  skipped ")}
    expected = {"text_named.wav", "zero.wav", "truncated.flac", "corrupt.aiff", "exotic.wav",
                "silent.wav", "loop", "dangling.wav"}
    if not is_root:
        expected.add("locked.wav")
        assert "permission denied" in reasons["locked.wav"]
    assert expected <= set(reasons), out
    assert "empty" in reasons["zero.wav"]
    assert "silent" in reasons["silent.wav"]
    assert "loop" in reasons["loop"]
    assert "broken symbolic link" in reasons["dangling.wav"]
    with Library.open(tmp_path / "lib") as library:
        names = {r.name: r for r in library.files().values()}
        assert set(names) == {"good.wav", "really_a_wav.txt", "tick.wav"} | (
            {"locked.wav"} if is_root else set())
        assert names["tick.wav"].duration_s == pytest.approx(0.02, abs=1e-3)
    rc, lines = _query_json(capsys, tmp_path / "lib", good, k=1)
    assert lines[0]["matches"][0]["path"] == str(good)
    # Nothing indexable at all: exit 1, the summary still lists the reasons.
    empty = tmp_path / "only_bad"
    empty.mkdir()
    (empty / "x.wav").write_bytes(b"junk")
    assert main(["index", str(empty), "--library", str(tmp_path / "lib2"), "--model", MODEL,
                 "--quiet", "--jobs", "0"]) == 1


def test_file_vanishing_between_scan_and_decode(sounds: Path, tmp_path: Path) -> None:
    result = scan([sounds])
    victim = sounds / "Hats" / "hat_000.wav"
    assert str(victim) in {c.path for c in result.candidates}
    victim.unlink()
    indexer = Indexer(tmp_path / "lib", MODEL, jobs=0)
    try:
        summary = indexer.run_scanned(result, [str(sounds)])
    finally:
        indexer.close()
    assert summary.indexed == 7
    assert [(Path(s.path).name, s.reason) for s in summary.skipped] == [
        ("hat_000.wav", "vanished before decoding")
    ]


def test_not_a_library_and_newer_schema_refused(sounds: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["index", str(sounds), "--library", str(other), "--model", MODEL,
                 "--quiet"]) == 2
    assert "not an emberd library" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert _index(tmp_path, sounds) == 0
    db = tmp_path / "lib" / "library.sqlite"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    before = db.read_bytes()
    capsys.readouterr()
    assert _index(tmp_path, sounds) == 2
    assert "newer emberd" in capsys.readouterr().err
    assert db.read_bytes() == before
    with pytest.raises(EmberdError, match="newer emberd"):
        Library.open(tmp_path / "lib")


def test_library_info_reports_recall(sounds: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _index(tmp_path, sounds) == 0
    capsys.readouterr()
    assert main(["library", "info", "--library", str(tmp_path / "lib"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["files"] == 8 and info["fingerprints"] > 0
    entry = info["models"][MODEL]
    assert entry["files"] == 8 and entry["dim"] == 64
    assert entry["annoy"]["recall@10"] == pytest.approx(1.0)  # 8 items: Annoy sees them all
    assert entry["annoy"]["stale"] is False


def test_sigkill_mid_run_then_rerun_completes(tmp_path: Path) -> None:
    sounds = tmp_path / "sounds"
    smalllib.write_sounds(sounds, per_folder=2)
    lib = tmp_path / "lib"
    first = smalllib.index([sounds], lib, "--jobs", "1")
    assert first.returncode == 0, first.stderr
    with Library.open(lib) as library:
        before = {r.path for r in library.files().values()}
    smalllib.write_sounds(sounds, per_folder=40, start=10)  # 160 more files
    proc = subprocess.Popen(smalllib.index_command([sounds], lib, "--jobs", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    # Kill once the run has committed at least one new batch (polling the database).
    deadline = time.monotonic() + 240
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        conn = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True)
        committed = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        conn.close()
        if committed > len(before):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Library.open(lib) as library:
        after_kill = {r.path for r in library.files().values()}
        assert before <= after_kill and len(after_kill) < len(before) + 160
        probe = sorted(before)[0]
        y, sr = sf.read(probe, dtype="float32")
        assert library.query_audio(y, sr, 1, model=MODEL)[0]["path"] == probe
    rerun = smalllib.index([sounds], lib, "--jobs", "1")
    assert rerun.returncode == 0, rerun.stderr
    summary = rerun.stdout.splitlines()[0]
    n_done = len(after_kill)
    assert f"indexed {len(before) + 160 - n_done}, unchanged {n_done}," in summary
