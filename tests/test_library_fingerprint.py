"""Unit tests of the identification building blocks: landmark hashes and offset voting
(:mod:`emberd.library.fingerprint`), re-ranking features and the logistic rule
(:mod:`emberd.library.rerank`)."""

from __future__ import annotations

import numpy as np
import pytest

from emberd.library import fingerprint as fp
from emberd.library import rerank
from emberd.testing import drumkits, smalllib

SR = fp.FP_SR
HOP_S = fp.FP_HOP / fp.FP_SR
LOW_BITS = fp._DP_BITS + fp._DT_BITS


def _sound(i: int, seconds: float = 1.5) -> np.ndarray:
    """A distinct synthetic hit sequence (several onsets: many landmarks)."""
    rng = np.random.default_rng([7, i])
    out = np.zeros(int(seconds * SR), np.float32)
    n_hits = int(4 * seconds)
    for k in range(n_hits):
        hit = drumkits._one_shot(drumkits.DISTRACTOR_FAMILIES[(i + k) % 8], rng)[: SR // 3]
        at = int(k * seconds / n_hits * SR)
        out[at : at + len(hit)] += hit[: len(out) - at]
    return out


def test_hash_packing_round_trips_and_separates_fields() -> None:
    rng = np.random.default_rng(0)
    band = rng.integers(0, 80, 500)
    dp = rng.integers(0, 1 << fp._DP_BITS, 500)
    dt = rng.integers(0, fp.MAX_DT_HOPS + 1, 500)
    h = fp._pack(band, dp, dt)
    assert np.array_equal(h >> LOW_BITS, band)
    assert np.array_equal((h >> fp._DT_BITS) & ((1 << fp._DP_BITS) - 1), dp)
    assert np.array_equal(h & ((1 << fp._DT_BITS) - 1), dt)
    triples = {(a, b, c) for a, b, c in zip(band.tolist(), dp.tolist(), dt.tolist(), strict=True)}
    assert len(set(h.tolist())) == len(triples)  # distinct triples, distinct hashes
    assert fp.MAX_DT_HOPS < 1 << fp._DT_BITS  # the target zone fits its field


def test_landmarks_are_shift_invariant_and_carry_their_band() -> None:
    y = _sound(0)
    h, t, band = fp.landmarks(y, SR)
    assert len(h) > 100 and np.array_equal(h >> LOW_BITS, band)
    assert np.all((h & ((1 << fp._DT_BITS) - 1)) <= fp.MAX_DT_HOPS)
    shift = 37  # hops
    h2, t2, _ = fp.landmarks(np.r_[np.zeros(shift * fp.FP_HOP, np.float32), y], SR)
    same = set(zip(h.tolist(), (t + shift).tolist(), strict=True))
    moved = set(zip(h2.tolist(), t2.tolist(), strict=True))
    assert len(same & moved) >= 0.9 * len(same)  # same pairs, anchor times shifted


def _index(entries: dict[int, tuple[np.ndarray, np.ndarray]], n_files: int) -> fp.FingerprintIndex:
    hashes = np.concatenate([h for h, _ in entries.values()])
    times = np.concatenate([t for _, t in entries.values()])
    fids = np.concatenate([np.full(len(h), f) for f, (h, _) in entries.items()])
    return fp.FingerprintIndex(hashes, fids, times, n_files)


def test_offset_voting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashes that agree on one time offset outvote the same hashes at scattered offsets;
    +-1 hop of jitter still agrees; a neighbouring anchor band still matches."""
    rng = np.random.default_rng(1)
    n = 24
    band = rng.integers(5, 60, n)
    qh = fp._pack(band, rng.integers(0, 256, n), rng.integers(1, 40, n))
    qt = np.sort(rng.integers(0, 200, n))
    monkeypatch.setattr(fp, "landmarks", lambda y, sr: (qh, qt, band))
    aligned = (qh, qt + 30)  # file 1: the query 30 hops into it
    scattered = (qh, rng.integers(0, 400, n))  # file 2: same hashes, no common offset
    jitter = (qh, qt + 80 + (np.arange(n) % 2))  # file 3: offsets 80 or 81 hops
    bumped = (fp._pack(band + 1, (qh >> fp._DT_BITS) & 255, qh & 63), qt + 5)  # file 4
    index = _index({1: aligned, 2: scattered, 3: jitter, 4: bumped}, n_files=100)
    got = {f: (c, off) for f, c, off in index.match(np.zeros(1), SR, top=10)}
    assert got[1][0] == n and got[1][1] == pytest.approx(30 * HOP_S)
    assert got[3][0] == n and got[3][1] == pytest.approx(80 * HOP_S, abs=HOP_S)
    assert got[4][0] == n  # band +-1 lookup: a slight detune moves the anchor band
    assert got.get(2, (0, 0))[0] <= 4
    ranked = index.match(np.zeros(1), SR, top=10)
    assert ranked[-1][0] == 2 or 2 not in got  # the scattered file ranks last
    assert not fp.is_identified(ranked)  # three files tie: no margin


def test_common_hashes_carry_no_vote(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hash stored in more than MAX_HASH_FILES_FRACTION of the files is ignored."""
    qh = np.arange(1, 13, dtype=np.int64) * 5 << LOW_BITS  # bands 5 apart: no +-1 overlap
    qt = np.arange(12)
    monkeypatch.setattr(fp, "landmarks", lambda y, sr: (qh, qt, qh >> LOW_BITS))
    n_files = 100
    common = {f: (qh, qt + 3) for f in range(n_files // 4)}  # in 25 % of the files
    assert fp.FingerprintIndex(*_arrays(common), n_files).match(np.zeros(1), SR) == []
    rare = {f: (qh, qt + 3) for f in range(10)}  # in 10 %: counted
    assert fp.FingerprintIndex(*_arrays(rare), n_files).match(np.zeros(1), SR)[0][1] == 12


def _arrays(entries: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    hashes = np.concatenate([h for h, _ in entries.values()])
    fids = np.concatenate([np.full(len(h), f) for f, (h, _) in entries.items()])
    times = np.concatenate([t for _, t in entries.values()])
    return hashes, fids, times


def test_is_identified_needs_count_and_margin() -> None:
    assert fp.is_identified([(1, fp.MIN_MATCHES, 0.0)])
    assert not fp.is_identified([(1, fp.MIN_MATCHES - 1, 0.0)])
    strong = int(fp.MIN_MATCHES * fp.MIN_MARGIN)
    assert fp.is_identified([(1, strong, 0.0), (2, fp.MIN_MATCHES, 0.0)])
    assert not fp.is_identified([(1, strong - 1, 0.0), (2, fp.MIN_MATCHES, 0.0)])
    assert not fp.is_identified([])


def test_real_audio_window_is_found_at_its_offset() -> None:
    sounds = [_sound(i, 4.0) for i in range(6)]
    entries = {}
    for f, y in enumerate(sounds):
        h, t, _ = fp.landmarks(y, SR)
        entries[f] = (h, t)
    index = _index(entries, len(sounds))
    start = int(1.5 * SR)
    rng = np.random.default_rng(0)
    window = sounds[3][start : start + 2 * SR]
    window = window + 0.05 * np.std(window) * rng.standard_normal(len(window)).astype(np.float32)
    ranked = index.match(window, SR, top=3)
    assert ranked[0][0] == 3 and fp.is_identified(ranked)
    assert ranked[0][2] == pytest.approx(1.5, abs=2 * HOP_S)


# --- rerank ------------------------------------------------------------------------------


def _templates(sounds: list[np.ndarray]) -> np.ndarray:
    return np.stack([fp.template(y, SR) for y in sounds])


def test_features_of_the_source_and_of_a_mix() -> None:
    sounds = [smalllib._sound(f, i, np.random.default_rng(i)) for f in ("Kicks", "Snares", "Hats")
              for i in range(3)]  # fmt: skip
    tpl = _templates(sounds)
    f = rerank.features(rerank.QueryPatch(0.5 * sounds[4], SR), tpl)
    assert int(np.argmax(f["ncc"])) == 4 and f["ncc"][4] > 0.99
    assert f["cont"][4] > 0.95 and abs(f["gain"][4]) < 1.0  # a gain change is no evidence
    n = max(len(sounds[1]), len(sounds[7]))
    mix = np.pad(sounds[1], (0, n - len(sounds[1]))) + 0.25 * np.pad(
        sounds[7], (0, n - len(sounds[7])))  # the second sound 12 dB down
    f = rerank.features(rerank.QueryPatch(mix, SR), tpl)
    assert f["gain"][7] < f["gain"][1] - 6.0  # the quieter sound sits below in the gain fit
    assert f["cont"][1] > 0.8 and f["cont"][7] > 0.5  # both are contained in the mix


def test_feature_matrix_relative_columns() -> None:
    base = {k: np.array([0.1, 0.7, 0.4]) * (i + 1) for i, k in enumerate(rerank.BASE_FEATURES)}
    x = rerank.feature_matrix(base)
    nb = len(rerank.BASE_FEATURES)
    assert x.shape == (3, 2 * nb)
    assert np.allclose(x[:, :nb], np.stack([base[k] for k in rerank.BASE_FEATURES], axis=1))
    assert np.allclose(x[:, nb:].max(axis=0), 0.0) and np.all(x[1, nb:] == 0.0)


def test_logistic_rule_is_the_fitted_one() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, len(rerank.FEATURES)))
    w = np.array([rerank.WEIGHTS[f] for f in rerank.FEATURES])
    expect = 1.0 / (1.0 + np.exp(-(x @ w + rerank.BIAS)))
    assert np.allclose(rerank.probabilities(x), expect)
    assert set(rerank.WEIGHTS) == set(rerank.FEATURES)


def test_the_rule_ranks_the_source_first() -> None:
    rng = np.random.default_rng(3)
    sounds = [drumkits._one_shot(drumkits.DISTRACTOR_FAMILIES[i % 8], np.random.default_rng(i))
              for i in range(24)]  # fmt: skip
    tpl = _templates(sounds)
    wins = 0
    for i in range(0, 24, 3):
        y = sounds[i]
        noisy = 0.5 * y + 0.05 * float(np.std(y)) * rng.standard_normal(len(y)).astype(np.float32)
        patch = rerank.QueryPatch(noisy, SR)
        feats = rerank.features(patch, tpl)
        tv = rerank.attack_vectors(tpl) @ patch.attack_vector()
        feats.update(cos=np.zeros(len(tpl)), llm=np.zeros(len(tpl)), tv=tv,
                     cur=fp.template_scores(fp.template(noisy, SR), tpl))
        wins += int(np.argmax(rerank.probabilities(rerank.feature_matrix(feats))) == i)
    assert wins == 8


def test_attack_vectors_are_unit_and_centred() -> None:
    tpl = _templates([_sound(i) for i in range(3)])
    v = rerank.attack_vectors(tpl)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert np.allclose(v.mean(axis=1), 0.0, atol=1e-6)

