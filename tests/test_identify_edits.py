"""Mechanisms for producers' edits that band energies miss (issue 13): the reversal gate,
the waveform-probed variant and the widened waveform search, on the real drum-kit library
(``identify_library``: hydrogen-drumkits plus distractors, DSP baseline).

Each test fails when its mechanism is broken: the probed variant must find a reversal that
an attack-vector choice is not asked to find, and identify() must answer with it; a played
one-shot must get no reversed variant (the gate); a reversed one-shot followed by silence or
a noise floor must still end loud (the trim), a short played one must not; the widened search
must find a source that was taken out of the candidates, and must not without the widening;
the partial orderings must equal a full sort.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emberd.dsp.resample import mono_at
from emberd.dsp.sources import load_audio
from emberd.library import Library, fingerprint
from emberd.library import query as query_mod
from emberd.testing import drumkits as dk

pytestmark = pytest.mark.timeout(3600)  # the first test of a code version indexes the library

FS = fingerprint.FP_SR
N_SAMPLES = 8  # kit samples spread over every kit
MIN_WIDE_RIGHT = 5  # of 8 (measured 6), source out of the candidates, widened search on
MAX_NARROW_RIGHT = 2  # of 8 (measured 1), widened search off


@pytest.fixture(scope="module")
def kit(identify_library: Path) -> Iterator[dict[str, Any]]:
    lib = Library.open(identify_library)
    by_path = {r.path: r.id for r in lib.files().values()}
    named = sorted(p for p in dk.kit_files() if p in by_path)
    picked = [named[i] for i in np.linspace(0, len(named) - 1, N_SAMPLES).round().astype(int)]
    copies = dk.level_copies(lib)
    yield {
        "lib": lib,
        "paths": picked,
        "audio": [mono_at(load_audio(p, sr=dk.SR)[0], dk.SR, FS) for p in picked],
        "group": lambda f: copies.get(f, f),
        "id": by_path,
    }
    lib.close()


def test_reversed_one_shots_end_loud_and_played_ones_do_not(kit: dict[str, Any]) -> None:
    """The reversal is tried only for a query that ends with an attack."""
    rev = [query_mod.ends_loud(y[::-1], FS) for y in kit["audio"]]
    fwd = [query_mod.ends_loud(y, FS) for y in kit["audio"]]
    assert all(rev)
    assert sum(fwd) <= len(fwd) // 4
    assert not query_mod.ends_loud(np.zeros(FS, np.float32), FS)


def test_played_one_shots_get_no_reversed_variant(kit: dict[str, Any]) -> None:
    """The gate: a played one-shot that does not end loud is scored without a reversed
    variant, its reversal with one (deleting the gate gives every query one)."""
    lib: Library = kit["lib"]
    quiet_end = 0
    for y in kit["audio"]:
        fwd = [b for _s, b, _y, _sc in lib._variant_scores(y)]
        rev = [b for _s, b, _y, _sc in lib._variant_scores(y[::-1].copy())]
        assert any(fwd) == query_mod.ends_loud(y, FS)
        assert sum(rev) == 1
        quiet_end += not any(fwd)
    assert quiet_end >= len(kit["audio"]) - len(kit["audio"]) // 4


def test_identify_answers_with_the_probed_reversal(
    kit: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the attack-vector choice off, only the probe can find a reversed sample's
    reversal: identify() must try it and answer with it (the file, ``reversed``)."""
    lib: Library = kit["lib"]
    monkeypatch.setattr(Library, "best_variant", lambda self, audio, scores=None: None)
    right = 0
    for path, y in zip(kit["paths"], kit["audio"], strict=True):
        got = lib.identify(y[::-1].copy(), FS)
        right += bool(got) and got[0].get("reversed", False) and (
            kit["group"](kit["id"][got[0]["path"]]) == kit["group"](kit["id"][path]))
    print(f"reversed samples answered by the probed reversal: {right}/{len(kit['paths'])}")
    assert right >= len(kit["paths"]) - 1


def _decaying_burst(seconds: float, decay_db: float) -> np.ndarray:
    """White noise (seed 0) decaying ``decay_db`` over ``seconds`` at the fingerprint rate."""
    n = int(seconds * FS)
    env = 10 ** (-decay_db / 20 * np.arange(n) / n)
    return (0.5 * env * np.random.default_rng(0).standard_normal(n)).astype(np.float32)


def test_what_follows_a_reversed_one_shot_is_trimmed(kit: dict[str, Any]) -> None:
    """A reversed one-shot followed by 0.3 s of digital silence (an export), or by a noise
    floor 60 dB under its peak (a live window), still ends loud, and identify() finds its
    reversal; a short played one-shot (50 ms, under REVERSED_END_S) does not end loud,
    reversed it does."""
    lib: Library = kit["lib"]
    rng = np.random.default_rng(1)
    right = 0
    for path, y in zip(kit["paths"], kit["audio"], strict=True):
        rev = y[::-1].astype(np.float32)
        peak = float(np.abs(rev).max())
        silent = np.concatenate([rev, np.zeros(int(0.3 * FS), np.float32)])
        noise = peak * 1e-3 * rng.standard_normal(len(silent)).astype(np.float32)
        for kind, q in {"silence": silent, "noise": silent + noise}.items():
            assert query_mod.ends_loud(q, FS), kind
            assert query_mod.sounding_end(q, FS) <= len(rev) + int(query_mod.END_FRAME_S * FS)
        got = lib.identify(silent, FS)
        right += bool(got) and got[0].get("reversed", False) and (
            kit["group"](kit["id"][got[0]["path"]]) == kit["group"](kit["id"][path]))
    print(f"reversed samples + 0.3 s silence answered reversed: {right}/{len(kit['paths'])}")
    assert right >= len(kit["paths"]) - 1
    burst = _decaying_burst(0.05, 60.0)
    assert not query_mod.ends_loud(burst, FS)
    assert query_mod.ends_loud(burst[::-1], FS)
    assert not query_mod.ends_loud(np.concatenate([burst, np.zeros(FS, np.float32)]), FS)


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_top_indices_is_a_stable_full_sort(n: int) -> None:
    """The partial ordering equals ``argsort(-x, kind="stable")[:k]``: ties (rounded scores,
    level copies' equal attacks) in index order, NaN last."""
    rng = np.random.default_rng(n)
    for trial in range(20):
        x = np.round(rng.standard_normal(n), 1).astype(np.float32)
        if trial % 4 == 3:
            x[rng.integers(0, n, max(1, n // 10))] = np.nan
        for k in (0, 1, 2, n // 2, n - 1, n, n + 5):
            want = np.argsort(-x, kind="stable")[: max(k, 0)]
            np.testing.assert_array_equal(query_mod.top_indices(x, k), want)


def test_candidates_and_widening_match_a_full_sort(kit: dict[str, Any]) -> None:
    """On real queries: the attack candidates and the widened search's order are those of a
    full sort of the attack scores."""
    lib: Library = kit["lib"]
    ids = lib._templates()[0]
    files = lib.files()
    unstable = 0  # queries whose default (unstable) argsort orders ties otherwise
    for y in kit["audio"]:
        ev = lib.evidence(y, FS)
        assert ev is not None and ev.attack_scores is not None
        order = ids[np.argsort(-ev.attack_scores, kind="stable")].tolist()
        unstable += order != ids[np.argsort(-ev.attack_scores)].tolist()
        near = order[: query_mod.ATTACK_CANDIDATES]
        stored = set(order)
        want = [f for f in dict.fromkeys([*ev.counts, *ev.cosine, *near])
                if f in files and f in stored]
        assert ev.candidates == want
        have = set(ev.candidates)
        wide = [f for f in order if f not in have and f in files][: query_mod.WIDE_CANDIDATES]
        seen: list[list[int]] = []
        real = lib.snippet_loader

        def spy(file_ids: Any, real: Any = real, seen: list[list[int]] = seen) -> Any:
            seen.append(list(file_ids))
            return real(file_ids)

        lib.snippet_loader = spy  # type: ignore[method-assign]
        try:
            lib._widen(ev, 2.0)  # above every correlation: adds nothing, asks for the order
        finally:
            del lib.snippet_loader
        assert seen and seen[0] == wide
    print(f"default argsort orders ties otherwise on {unstable}/{len(kit['audio'])} queries")


def test_probed_variant_finds_the_reversal(kit: dict[str, Any]) -> None:
    """A reversed sample's reversed variant correlates with the sample's own snippet: the
    probe picks it; above any correlation (floor 1.01) it picks nothing."""
    lib: Library = kit["lib"]
    found = 0
    for y in kit["audio"]:
        var = lib.probed_variant(y[::-1].copy(), 0.0)
        assert lib.probed_variant(y[::-1].copy(), 1.01) is None
        found += int(var is not None and var[1] and var[0] == 0.0)
    print(f"reversal found by the probe: {found}/{len(kit['paths'])}")
    assert found >= len(kit["paths"]) - 1


def answers_without_source(kit: dict[str, Any]) -> list[bool]:
    """Per sample (1 % noise added): is its answer right when the cheap stages are made to
    miss it (the source and its level copies taken out of the candidates)?"""
    lib: Library = kit["lib"]
    group = kit["group"]
    rng = np.random.default_rng(0)
    right = []
    for path, y in zip(kit["paths"], kit["audio"], strict=True):
        q = y + 0.01 * float(np.std(y)) * rng.standard_normal(len(y)).astype(np.float32)
        ev = lib.evidence(q, FS)
        assert ev is not None and not ev.inside_file
        truth = group(kit["id"][path])
        ev.candidates = [f for f in ev.candidates if group(f) != truth]
        lib._featurize(ev)
        match, _probs, _feats = lib._answer(ev)
        right.append(match is not None and group(kit["id"][match["path"]]) == truth)
    return right


def test_widened_search_finds_a_source_the_candidates_missed(
    kit: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waveform search beyond the candidates finds the source; without it, nothing can."""
    wide = answers_without_source(kit)
    monkeypatch.setattr(query_mod, "WIDE_CANDIDATES", 0)
    narrow = answers_without_source(kit)
    print(f"source out of the candidates: right {sum(wide)}/{len(wide)} with the widened "
          f"search, {sum(narrow)}/{len(narrow)} without")
    # Measured (dsp-baseline, these 8 samples): 6/8 with, 1/8 without (a sibling recording
    # that correlates above WIDE_BELOW_RHO keeps the widening off for the others).
    assert sum(wide) >= MIN_WIDE_RIGHT > MAX_NARROW_RIGHT >= sum(narrow)


def test_probed_variant_needs_the_waveform_floor(
    kit: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sounds in no library get a template answer (no rho): their probed variant is run only
    when it correlates at least the waveform stage's floor, not whenever it correlates at all
    (a second pipeline for nothing); a reversed sample's reversal still is run."""
    from emberd.library import waveform
    from emberd.testing import edits as ed

    lib: Library = kit["lib"]
    floors: list[float] = []
    real = lib.probed_variant

    def spy(audio: np.ndarray, floor_rho: float, **kw: Any) -> Any:
        floors.append(floor_rho)
        return real(audio, floor_rho, **kw)

    monkeypatch.setattr(lib, "probed_variant", spy)
    for y in ed.non_library(4, dk.EVAL_SEED):
        lib.answers(y, dk.SR)
    assert floors and min(floors) >= waveform.THRESHOLDS.wave_min_rho
    reversed_right = 0
    for path, y in zip(kit["paths"], kit["audio"], strict=True):
        got = lib.identify(y[::-1].copy(), FS)
        group = kit["group"]
        truth = group(kit["id"][path])
        reversed_right += int(bool(got) and group(kit["id"][got[0]["path"]]) == truth)
    assert reversed_right >= len(kit["paths"]) - 1
