"""Silence is never a match: silent, DC-only and noise-floor audio are not stored or matched.

Real DSP-baseline library of synthetic one-shots; ``emberd query`` answers such a
query with exit 0, an empty match list and the reason; a zero query vector
matches nothing; the indexer skips a silent or DC-only file with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emberd.cli import main
from emberd.dsp.silence import QUERY_FLOOR_DBFS, no_sound_reason
from emberd.library import Library
from emberd.testing import smalllib

MODEL = "dsp-baseline"
SR = 44100


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("silence")
    sounds = smalllib.write_sounds(root / "sounds", per_folder=2)
    # A DC-only file and a silent one in the library folder: both skipped, never stored.
    sf.write(root / "sounds" / "dc_only.wav", np.full(SR // 2, 0.25, np.float32), SR)
    sf.write(root / "sounds" / "zeros.wav", np.zeros(SR // 2, np.float32), SR)
    assert main(["index", str(root / "sounds"), "--library", str(root / "lib"), "--model", MODEL,
                 "--jobs", "0", "--quiet"]) == 0
    return root / "lib", sounds


def _queries(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    floor = 10 ** ((QUERY_FLOOR_DBFS - 10) / 20)  # white noise peaking 10 dB under the floor
    audio = {
        "silence": np.zeros(SR, np.float32),
        "dc": np.full(SR, -0.4, np.float32),
        "noise_floor": (rng.uniform(-1, 1, SR) * floor).astype(np.float32),
        "dc_and_floor": (0.3 + rng.uniform(-1, 1, SR) * floor).astype(np.float32),
    }
    out = {}
    for name, y in audio.items():
        out[name] = tmp / f"{name}.wav"
        sf.write(out[name], y, SR, subtype="FLOAT")
    return out


def test_no_sound_queries_answer_no_match_with_a_reason(
    lib: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib_path, sounds = lib
    queries = _queries(tmp_path)
    capsys.readouterr()
    rc = main(["query", *map(str, queries.values()), str(sounds[0]), "--library", str(lib_path),
               "--model", MODEL, "--k", "3", "--json"])
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert rc == 0 and len(lines) == len(queries) + 1
    reasons = {Path(ln["query"]).stem: ln.get("reason", "") for ln in lines}
    for name in queries:
        line = lines[list(queries).index(name)]
        assert line["matches"] == [] and line["reason"].startswith("no sound: "), line
    assert "digital silence" in reasons["silence"]
    assert "DC offset" in reasons["dc"] and "DC offset" in reasons["dc_and_floor"]
    assert "noise floor" in reasons["noise_floor"]
    assert lines[-1]["matches"] and "reason" not in lines[-1]  # a real sound still matches
    # The library API says the same, whoever calls it (daemon capture, per-hit identification).
    with Library.open(lib_path) as library:
        for path in queries.values():
            y, _ = sf.read(path, dtype="float32")
            assert library.query_audio(y, SR, 3, model=MODEL) == []
            assert library.identify(y, SR) == []


def test_a_zero_vector_matches_nothing(lib: tuple[Path, list[Path]]) -> None:
    lib_path, _ = lib
    with Library.open(lib_path) as library:
        dim = library.models()[MODEL][1]
        vecs = np.zeros((2, dim), np.float32)
        vecs[1, 0] = 1.0  # a real vector beside it still gets its neighbours
        got = library.search(vecs, 3, model=MODEL)
    assert got[0] == [] and len(got[1]) == 3


def test_silent_and_dc_only_files_are_never_stored(lib: tuple[Path, list[Path]]) -> None:
    lib_path, sounds = lib
    with Library.open(lib_path) as library:
        names = {r.name for r in library.files().values()}
    assert names == {p.name for p in sounds}


@pytest.mark.parametrize(
    ("signal", "expect"),
    [(np.zeros(100), "digital silence"), (np.array([]), "empty"),
     (np.full(100, 0.5), "DC offset"), (np.full((100, 2), -0.5), "DC offset"),
     (np.r_[np.zeros(99), 1e-4], "noise floor"),  # -80 dBFS click: below the -60 dBFS floor
     (np.r_[np.zeros(99), 0.01], None)],  # -40 dBFS click: a sound
)
def test_no_sound_reason(signal: np.ndarray, expect: str | None) -> None:
    got = no_sound_reason(signal, floor_dbfs=QUERY_FLOOR_DBFS)
    assert (got is None) if expect is None else (got is not None and expect in got), got
