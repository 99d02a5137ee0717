"""End to end with the real aiSFX model on real drum samples, next to the DSP baseline.

aiSFX: Alison Bernice Ma and Alexander Lerch, "Representation Learning for the
Automatic Indexing of Sound Effects Libraries", ISMIR 2022 (MIT code, CC BY 4.0 model).
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

KIT = "Audiophob"  # the smallest kit: 14 samples


def _emberd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emberd", *args], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_aisfx_and_baseline_in_one_library(aisfx_manifest_path: Path, drumkit_dir: Path,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setenv("EMBERD_DATA_DIR", str(tmp_path / "data"))  # children inherit it
    shutil.copytree(aisfx_manifest_path.parent, tmp_path / "data" / "models" / "aisfx")
    kit = tmp_path / "Drums" / KIT
    shutil.copytree(drumkit_dir / KIT, kit)
    lib = tmp_path / "lib"
    first = _emberd("index", str(tmp_path / "Drums"), "--library", str(lib), "--jobs", "2")
    assert first.returncode == 0, first.stderr[-2000:]  # default model: aiSFX
    assert "indexed 14," in first.stdout
    second = _emberd("index", str(tmp_path / "Drums"), "--library", str(lib), "--model",
                     "dsp-baseline", "--jobs", "2")
    assert second.returncode == 0 and "indexed 14," in second.stdout, second.stderr[-2000:]
    again = _emberd("index", str(tmp_path / "Drums"), "--library", str(lib))
    assert "indexed 0, unchanged 14," in again.stdout

    info = _emberd("library", "info", "--library", str(lib), "--json")
    models = json.loads(info.stdout)["models"]
    assert models["aisfx"]["dim"] == 512 and models["dsp-baseline"]["dim"] == 64
    assert models["aisfx"]["files"] == models["dsp-baseline"]["files"] == 14

    # A noisy, quieter copy of one sample is found as that sample, with its folder tags: the
    # CLI, both models and the tags end to end. 14 files are fewer than every candidate budget,
    # so this says nothing about identification quality: tests/test_library_identify.py does.
    source = sorted(kit.glob("*.wav"))[0]
    y, sr = sf.read(source, dtype="float32", always_2d=True)
    rng = np.random.default_rng(0)
    noisy = 0.5 * y + 0.01 * rng.standard_normal(y.shape).astype(np.float32)
    query = tmp_path / "query.wav"
    sf.write(query, noisy, sr)
    for model in ("aisfx", "dsp-baseline"):
        q = _emberd("query", str(query), str(tmp_path / "nope.wav"), "--library", str(lib),
                    "--model", model, "--k", "5", "--json")
        # one input failed: the good one is answered on stdout, the bad one is one line on
        # stderr, and the exit status says that not every input was answered
        assert q.returncode == 1, q.stderr[-2000:]
        (first_line,) = (json.loads(ln) for ln in q.stdout.splitlines())
        best = first_line["matches"][0]
        assert best["path"] == str(source) and best["tags"] == [KIT]
        assert len(first_line["matches"]) == 5
        assert q.stderr.strip().splitlines() == [
            f"emberd query: {tmp_path / 'nope.wav'}: no such file"]
