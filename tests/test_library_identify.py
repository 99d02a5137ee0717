"""Identification on a library larger than every candidate budget, and each stage's share.

The library (``identify_library`` in conftest) holds all of Debian's
hydrogen-drumkits plus synthetic distractors, indexed with the DSP baseline:
more files than the embedding, landmark, attack-vector and residual candidate
budgets together, so no stage is handed the answer by taking everything.

Each stage has a test that fails when that stage is broken, and each such test
also runs the pipeline with the stage broken (embeddings randomised, landmarks
or waveform stage disabled) and asserts the figure then falls below the bound:
the bound is proven to tell a working stage from a broken one in every run.
Measured figures are in the comments (dsp-baseline, seed 0, this query set).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emberd.dsp.sources import load_audio
from emberd.library import Library, fingerprint, waveform
from emberd.library import query as query_mod
from emberd.library.indexer import Indexer
from emberd.testing import drumkits as dk
from emberd.testing import edits as ed

# The first test of a code version indexes the 1 152-file library (~2 min alone, far more on
# a loaded CI machine) inside its fixture: allow for it.
pytestmark = pytest.mark.timeout(3600)

MODEL = "dsp-baseline"
SR = dk.SR
N_QUERIES = 24  # kit samples spread over every kit
SEED = 0  # transform seed (the fit uses dk.FIT_SEED, the bench dk.EVAL_SEED)
# Measured with the shipped fit (dsp-baseline, seed 0, these 24 queries, 1152-file library):
# gain_noise 24/24, detune_lowpass 21/24, reverb 23/24, mix 22/24 (without the waveform
# stage 15/24); an unaltered file finds itself 24/24 (randomised encoder 0/24); windows
# inside long files 13/16 (without landmarks 0/16). Bounds sit 2-3 queries below.
MIN_TOP1 = {"gain_noise": 0.9, "detune_lowpass": 0.79, "reverb": 0.875, "mix": 0.79}
MIN_SELF_TOP1 = 0.9  # an unaltered file is its own nearest embedding
MIN_WINDOW_TOP1 = 0.75  # a window from inside a loop or long file
N_WINDOWS = 16


@pytest.fixture(scope="module")
def kit(identify_library: Path) -> Iterator[dict[str, Any]]:
    """The open library, its level-copy groups and the query samples."""
    lib = Library.open(identify_library)
    named = sorted(p for p in dk.kit_files() if p in {r.path for r in lib.files().values()})
    picked = [named[i] for i in np.linspace(0, len(named) - 1, N_QUERIES).round().astype(int)]
    by_path = {r.path: r.id for r in lib.files().values()}
    copies = dk.level_copies(lib)
    yield {
        "lib": lib,
        "paths": picked,
        "audio": [load_audio(p, sr=SR)[0] for p in picked],
        "group": lambda path: copies.get(by_path[path], by_path[path]),
    }
    lib.close()


@contextmanager
def broken(stage: str | None) -> Iterator[None]:
    """Break one identification stage for the duration (``None``: nothing broken)."""
    mp = pytest.MonkeyPatch()
    if stage == "encoder":  # random query embeddings, as a randomised encoder gives
        rng = np.random.default_rng(0)
        real = query_mod.query_vector
        mp.setattr(query_mod, "query_vector",
                   lambda y, sr, model: rng.standard_normal(real(y, sr, model).shape)
                   .astype(np.float32))  # fmt: skip
    elif stage == "landmarks":
        mp.setattr(fingerprint.FingerprintIndex, "match", lambda self, y, sr, top=5: [])
    elif stage == "waveform":
        mp.setattr(waveform, "explain", lambda *a, **kw: None)
    elif stage == "variants":  # no resampled or reversed copy of the query is tried
        mp.setattr(Library, "best_variant", lambda self, audio, scores=None: None)
        mp.setattr(Library, "probed_variant", lambda self, audio, floor_rho, scores=None: None)
    try:
        yield
    finally:
        mp.undo()


def top1(kit: dict[str, Any], transform: str, stage: str | None = None,
         every: int = 1) -> float:
    """Share of queries (every ``every``-th) whose first ``query_audio`` match is the source
    (or a level copy); ``transform`` is any of :data:`emberd.testing.edits.EDITS`."""
    lib: Library = kit["lib"]
    tf = ed.edits(kit["audio"], SEED)[transform]
    with broken(stage):
        hits = []
        for i, (path, y) in enumerate(zip(kit["paths"], kit["audio"], strict=True)):
            if i % every:
                continue
            best = lib.query_audio(tf(y, i), SR, 5, model=MODEL)
            hits.append(bool(best) and kit["group"](best[0]["path"]) == kit["group"](path))
    return float(np.mean(hits))


def test_library_is_larger_than_every_candidate_budget(kit: dict[str, Any]) -> None:
    budget = (query_mod.IDENTIFY_CANDIDATES + query_mod.LANDMARK_CANDIDATES
              + query_mod.ATTACK_CANDIDATES + query_mod.RESIDUAL_CANDIDATES)  # fmt: skip
    assert len(kit["lib"].files()) > 3 * budget


@pytest.mark.parametrize("transform", dk.TRANSFORMS)
def test_identifies_transformed_real_samples(kit: dict[str, Any], transform: str) -> None:
    got = top1(kit, transform)
    print(f"{transform}: top-1 {got:.3f}")
    assert got >= MIN_TOP1[transform], f"{transform}: top-1 {got:.3f}"


def test_mixes_need_the_waveform_stage(kit: dict[str, Any]) -> None:
    """Without the waveform stage mixes fall below the bound the working pipeline clears."""
    with_stage, without = top1(kit, "mix"), top1(kit, "mix", "waveform")
    print(f"mix top-1 {with_stage:.3f}, without the waveform stage {without:.3f}")
    assert with_stage >= MIN_TOP1["mix"] > without


def _self_top1(kit: dict[str, Any]) -> float:
    """An unaltered sample's nearest file by embedding alone is itself (or a level copy)."""
    lib: Library = kit["lib"]
    hits = []
    for path, y in zip(kit["paths"], kit["audio"], strict=True):
        vec = query_mod.query_vector(y, SR, MODEL)
        best = lib.search(vec[None, :], 1, model=MODEL)[0]
        hits.append(bool(best) and kit["group"](best[0]["path"]) == kit["group"](path))
    return float(np.mean(hits))


def test_similarity_needs_the_encoder(kit: dict[str, Any]) -> None:
    """The query path embeds as the indexer did: a file finds itself; random vectors do not."""
    good = _self_top1(kit)
    with broken("encoder"):
        bad = _self_top1(kit)
    print(f"self top-1 by embedding {good:.3f}, randomised encoder {bad:.3f}")
    assert good >= MIN_SELF_TOP1 > bad


def _windows(kit: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """1.5 s windows from 1 s into the longest library files (loops, long cymbals), with noise."""
    lib: Library = kit["lib"]
    longest = sorted(lib.files().values(), key=lambda r: -r.duration_s)[:N_WINDOWS]
    rng = np.random.default_rng(SEED)
    out = []
    for rec in longest:
        y, _ = load_audio(rec.path, sr=SR, mono=True)
        w = y[SR : SR + 3 * SR // 2]
        rms = float(np.sqrt(np.mean(w**2)))
        out.append((rec.path, w + 0.1 * rms * rng.standard_normal(len(w)).astype(np.float32)))
    return out


def _window_top1(kit: dict[str, Any], windows: list[tuple[str, np.ndarray]]) -> float:
    lib: Library = kit["lib"]
    hits = []
    for path, w in windows:
        best = lib.query_audio(w, SR, 5, model=MODEL)
        hits.append(bool(best) and kit["group"](best[0]["path"]) == kit["group"](path))
    return float(np.mean(hits))


def test_windows_inside_long_files_need_the_landmarks(kit: dict[str, Any]) -> None:
    """Templates and snippets cover a file's start: a window inside a loop is the landmarks'."""
    windows = _windows(kit)
    good = _window_top1(kit, windows)
    with broken("landmarks"):
        bad = _window_top1(kit, windows)
    print(f"window top-1 {good:.3f}, without landmarks {bad:.3f}")
    assert good >= MIN_WINDOW_TOP1 > bad


def test_each_field_means_one_thing(kit: dict[str, Any]) -> None:
    """score/distance only when an embedding cosine was measured; rho and landmarks apart."""
    lib: Library = kit["lib"]
    y = kit["audio"][0]
    bare = lib.identify(y, SR)  # no embeddings handed in: no score, no distance
    assert bare and bare[0]["stage"] == "waveform"
    assert "score" not in bare[0] and "distance" not in bare[0] and 0.9 < bare[0]["rho"] <= 1.0
    full = lib.query_audio(y, SR, 5, model=MODEL)[0]
    vec = query_mod.query_vector(y, SR, MODEL)
    fid = next(f for f, r in lib.files().items() if r.path == full["path"])
    assert full["score"] == pytest.approx(lib.file_cosine(vec, fid, model=MODEL), abs=1e-5)
    assert full["distance"] == pytest.approx(np.sqrt(2 - 2 * min(full["score"], 1.0)), abs=1e-5)
    path, w = _windows(kit)[0]
    lm = lib.identify(w, SR)[0]
    assert lm["stage"] == "landmarks" and lm["path"] == path
    assert lm["landmarks"] >= fingerprint.MIN_MATCHES and "score" not in lm and "rho" not in lm
    assert lm["segment_start_s"] == pytest.approx(1.0, abs=0.05)


def test_library_without_snippets_answers_from_templates(
    drumkit_dir: Path, tmp_path: Path
) -> None:
    """A library last indexed before snippets existed still identifies (template stage), and
    the next index run adds the snippets without re-embedding anything (a small library:
    this is about the migration, not about identification quality)."""
    named = sorted(dk.kit_files(drumkit_dir))
    picked = [Path(named[i]) for i in np.linspace(0, len(named) - 1, 8).round().astype(int)]
    root = tmp_path / "Drums"
    files = []
    for k, src in enumerate(picked):
        dst = root / f"{k:02d}_{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        files.append(dst)
    old = tmp_path / "lib"
    ix = Indexer(old, MODEL, jobs=0)
    try:
        ix.run([str(root)])
    finally:
        ix.close()
    con = sqlite3.connect(old / "library.sqlite")
    with con:
        con.execute("DROP TABLE snippets")
        con.execute("UPDATE fingerprinted SET params = 'v3 old'")
    con.close()
    y, _ = load_audio(files[0], sr=SR)
    with Library.open(old) as lib:
        best = lib.query_audio(y, SR, 3, model=MODEL)[0]
    assert best["path"] == str(files[0].absolute()) and best["stage"] == "template"
    ix = Indexer(old, MODEL, jobs=0)
    try:
        summary = ix.run([str(root)])
    finally:
        ix.close()
    assert summary.indexed == 0 and summary.unchanged == len(files)
    with Library.open(old) as lib:
        best = lib.query_audio(y, SR, 3, model=MODEL)[0]
        assert len(lib.store.snippets(lib.files())) == len(files)
    assert best["path"] == str(files[0].absolute()) and best["stage"] == "waveform"


# --- producers' edits (issue 13) ---------------------------------------------------------------
EDIT_EVERY = 2  # 12 of the 24 queries per edit: keeps the added test time small
MAX_NON_LIBRARY_EXACT = 1  # of 8: measured 0 with the out-of-fold exact threshold (was 3)
NOISY = {dk.DISTRACTOR_FAMILIES.index(f) for f in ("snare", "hat", "clap", "bell", "cymbal")}
MIN_TRIM_HAT_TOP1 = 0.66
# Measured (dsp-baseline, seed 0, 12 queries): pitch+2 12/12 (without variants 3/12), reverse
# 11/12 (without 1/12); 30-ms trimmed hats 6/6. Bounds sit 2-3 queries below. The trimmed-hat
# test checks behaviour only: with the waveform stage's trim search off these hats still pass
# (6/6 at 30 ms, 5/6 at 50 ms: the template stage names them on this library).
MIN_VARIANT_TOP1 = {"pitch+2": 0.75, "reverse": 0.75}


@pytest.mark.parametrize("edit", sorted(MIN_VARIANT_TOP1))
def test_pitched_and_reversed_samples_need_the_variants(kit: dict[str, Any], edit: str) -> None:
    """A one-shot pitched +2 semitones by resampling, or reversed, is identified; without the
    query's speed/direction variants it is not."""
    good = top1(kit, edit, every=EDIT_EVERY)
    bad = top1(kit, edit, "variants", every=EDIT_EVERY)
    print(f"{edit}: top-1 {good:.3f}, without variants {bad:.3f}")
    assert good >= MIN_VARIANT_TOP1[edit] > bad


def test_attack_trimmed_hat_is_identified(kit: dict[str, Any]) -> None:
    """Hi-hats with the first 30 ms after the attack cut off (no fade) are still named."""
    lib: Library = kit["lib"]
    hats = [p for p in sorted(dk.kit_files()) if "hat" in Path(p).name.lower()
            and p in {r.path for r in lib.files().values()}][::9][:6]
    assert len(hats) >= 4
    hits = []
    for path in hats:
        y, _ = load_audio(path, sr=SR)
        cut = y[ed.attack_start(y) + int(0.030 * SR):]
        best = lib.query_audio(cut, SR, 5, model=MODEL)
        hits.append(bool(best) and kit["group"](best[0]["path"]) == kit["group"](path))
        print(Path(path).name, best[0]["path"] == path if best else None,
              best[0].get("stage") if best else None)
    assert np.mean(hits) >= MIN_TRIM_HAT_TOP1, hits


def test_sounds_not_in_the_library_are_rarely_exact(kit: dict[str, Any]) -> None:
    """Synthetic sounds of another seed than the library's distractors: few are claimed
    ``exact``, each exact claim has at least EXACT_CONFIDENCE, and every other is "similar"
    below it. The issue's goal is 0 claims (measured 0; the bound allows one)."""
    from emberd.library import rerank

    lib: Library = kit["lib"]
    # Noise-based and inharmonic families (snare, hat, clap, bell, cymbal): a synthetic kick,
    # tom or pluck has so few parameters that one of another seed is a near copy of a
    # library distractor.
    sounds = ed.non_library(16, seed=7)
    claimed = 0
    for y in [y for i, y in enumerate(sounds) if i % len(dk.DISTRACTOR_FAMILIES) in NOISY][:8]:
        got = lib.query_audio(y, SR, 5, model=MODEL)
        assert got, "a sound always has similar sounds"
        assert all(m["kind"] == "similar" for m in got[1:])
        exact = got[0]["kind"] == "exact"
        assert exact == (got[0]["confidence"] >= rerank.EXACT_CONFIDENCE)
        claimed += exact
        print("non-library:", got[0]["kind"], got[0]["confidence"], got[0].get("stage"))
    print(f"exact claims for sounds not in the library: {claimed}/8")
    assert claimed <= MAX_NON_LIBRARY_EXACT


def test_every_match_has_a_confidence_and_the_list_follows_it(kit: dict[str, Any]) -> None:
    """confidence in [0, 1] on every match, non-increasing down the list; the identified file
    is first and holds the highest; an exact answer is at least EXACT_CONFIDENCE sure."""
    from emberd.library import rerank

    lib: Library = kit["lib"]
    tfs = ed.edits(kit["audio"], SEED)
    for i in range(0, len(kit["audio"]), 6):
        for edit in ("gain_noise", "pitch-1", "reverb"):
            got = lib.query_audio(tfs[edit](kit["audio"][i], i), SR, 8, model=MODEL)
            conf = [m["confidence"] for m in got]
            assert all(0.0 <= c <= 1.0 for c in conf)
            assert conf == sorted(conf, reverse=True), (edit, conf)
            assert "stage" in got[0] and all("stage" not in m for m in got[1:])
            assert (got[0]["kind"] == "exact") == (conf[0] >= rerank.EXACT_CONFIDENCE)
