"""Mechanisms for producers' edits that band energies miss (issue 13): the reversal gate,
the waveform-probed variant and the widened waveform search, on the real drum-kit library
(``identify_library``: hydrogen-drumkits plus distractors, DSP baseline).

Each test fails when its mechanism is broken: the probed variant must find a reversal that
an attack-vector choice is not asked to find; the widened search must find a source that
was taken out of the candidates, and must not without the widening.
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
