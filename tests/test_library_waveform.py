"""The waveform stage: snippets, correlation, and explaining a query as one or two files.

A small deterministic library of drum-like sounds (numpy): decaying noise
bursts and pitched thumps, including two "round-robin" hits that differ only
in their noise (band energies alike, waveforms not) and a level copy of one
file (the same recording 6 dB down).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import soxr

from emberd.library import waveform as wf

SR = 44100  # Hz: queries arrive at the models' rate and are resampled to WAVE_SR
N = int(0.6 * SR)  # 600 ms sounds


def hit(seed: int, *, decay_s: float, tone_hz: float = 0.0, delay_s: float = 0.01) -> np.ndarray:
    """A drum-like hit: exponentially decaying noise (plus a decaying tone) after ``delay_s``."""
    rng = np.random.default_rng(seed)
    t = np.arange(N) / SR
    env = np.exp(-np.maximum(t - delay_s, 0.0) / decay_s) * (t >= delay_s)
    y = rng.standard_normal(N) * env * 0.3
    if tone_hz:
        y += np.sin(2 * np.pi * tone_hz * t) * env * 0.7
    return (y / np.max(np.abs(y)) * 0.8).astype(np.float32)


@pytest.fixture(scope="module")
def library() -> dict[int, np.ndarray]:
    """File id -> audio."""
    lib = {
        1: hit(1, decay_s=0.05),  # snare-ish, round robin 1
        2: hit(2, decay_s=0.05),  # round robin 2: same envelope, other noise
        3: hit(3, decay_s=0.15, tone_hz=55.0),  # kick-ish
        4: hit(4, decay_s=0.4),  # cymbal-ish, long
        5: hit(5, decay_s=0.02, tone_hz=800.0),  # click
    }
    lib[6] = lib[3] * np.float32(0.5)  # a level copy of the kick
    return lib


@pytest.fixture(scope="module")
def snippets(library: dict[int, np.ndarray]) -> dict[int, wf.Snippet]:
    return {f: wf.snippet(y, SR) for f, y in library.items()}


def explain(query: np.ndarray, snippets: dict[int, wf.Snippet]) -> wf.Explanation | None:
    ids = sorted(snippets)

    def load(fs: Sequence[int]) -> dict[int, wf.Snippet]:
        return {f: snippets[f] for f in fs if f in snippets}

    def neighbours(_residual: np.ndarray, _sr: int) -> list[int]:
        return ids

    return wf.explain(query, SR, ids, np.zeros(len(ids)), load, neighbours)


def test_snippet_keeps_the_onset_waveform() -> None:
    y = hit(7, decay_s=0.1, delay_s=0.2)
    s = wf.snippet(y, SR)
    assert len(s.data) == 2 * wf.SNIPPET_SAMPLES
    y22 = soxr.resample(y, SR, wf.WAVE_SR, quality="HQ")
    onset = wf.onset_sample(y22)
    assert abs(onset - 0.2 * wf.WAVE_SR) < 0.002 * wf.WAVE_SR  # within 2 ms of the true onset
    start = onset - wf.PRE_ROLL_SAMPLES
    ref = y22[start : start + wf.SNIPPET_SAMPLES]
    # int16 storage: error below one step of the snippet's own peak
    assert np.max(np.abs(s.samples() - ref)) <= 1.01 * s.scale
    assert s.samples().shape == (wf.SNIPPET_SAMPLES,)


def test_snippet_of_silence_and_of_a_tick_is_well_formed() -> None:
    silent = wf.snippet(np.zeros(1000, np.float32), SR)
    assert not np.any(silent.samples()) and np.isfinite(silent.scale)
    tick = wf.snippet(np.ones(20, np.float32), SR)  # shorter than the snippet: zero padded
    assert np.count_nonzero(tick.samples()) > 0


def test_correlate_finds_gain_and_lag_under_noise() -> None:
    rng = np.random.default_rng(0)
    s = hit(8, decay_s=0.08)[: wf.SNIPPET_SAMPLES]
    seg = np.zeros(wf.SNIPPET_SAMPLES + 2 * wf.LAG_SAMPLES, np.float32)
    shift = 700
    seg[shift : shift + wf.SNIPPET_SAMPLES] = 0.5 * s
    seg += rng.standard_normal(len(seg)).astype(np.float32) * 0.01
    other = hit(9, decay_s=0.08)[: wf.SNIPPET_SAMPLES]
    rho, gain, lag = wf.correlate(seg, np.stack([s, other]))
    assert rho[0] > 0.95 and rho[1] < 0.3
    assert lag[0] == shift
    assert gain[0] == pytest.approx(0.5, rel=0.05)


def test_noisy_round_robin_is_told_apart(library: dict, snippets: dict) -> None:
    rng = np.random.default_rng(1)
    for f in (1, 2):
        y = library[f] * 0.5
        y = y + rng.standard_normal(N).astype(np.float32) * 0.05 * np.sqrt(np.mean(y**2))
        ans = explain(y, snippets)
        assert ans is not None and ans.file_id == f and ans.mixed_with is None
        assert ans.gain_db == pytest.approx(-6.0, abs=0.5)


def test_mix_of_two_library_sounds_is_explained_as_a_pair(library: dict, snippets: dict) -> None:
    # The long cymbal 6 dB down (by peak) carries more energy than the short snare hit.
    quiet = library[4] * (np.max(np.abs(library[1])) / np.max(np.abs(library[4]))) * 0.5
    ans = explain(library[1] + quiet, snippets)
    assert ans is not None
    assert ans.file_id == 1 and ans.mixed_with == 4
    ans = explain(library[1] * 0.5 + library[4], snippets)  # now the cymbal is louder
    assert ans is not None and ans.file_id == 4 and ans.mixed_with == 1


def test_mix_whose_louder_sound_starts_later_is_explained_as_a_pair(
    library: dict, snippets: dict
) -> None:
    # The cymbal 6 dB down (by peak) from the start, the snare (louder) 80 ms later: beyond the
    # +-46 ms the first sound is searched over, so only the residual's own onset finds it.
    late = int(0.08 * SR)
    y = library[4] * 0.5
    y[late:] += library[1][: N - late]
    ans = explain(y, snippets)
    assert ans is not None and ans.file_id == 1 and ans.mixed_with == 4


def test_slightly_detuned_query_is_found(library: dict, snippets: dict) -> None:
    # Broadband noise decorrelates within a few samples of drift: only the stretch search finds it.
    for f in (1, 2):
        up = soxr.resample(library[f], SR * 2 ** (30 / 1200), SR).astype(np.float32)  # +30 cents
        ans = explain(up, snippets)
        assert ans is not None and ans.file_id == f


def test_level_copy_nearest_0_db_wins(library: dict, snippets: dict) -> None:
    a = explain(library[3], snippets)
    b = explain(library[6], snippets)
    assert a is not None and a.file_id == 3 and abs(a.gain_db) < 0.5
    assert b is not None and b.file_id == 6 and abs(b.gain_db) < 0.5


def test_abstains_on_an_unrelated_sound(snippets: dict) -> None:
    rng = np.random.default_rng(5)
    t = np.arange(N) / SR
    other = (np.sin(2 * np.pi * 3000 * t) * np.exp(-t / 0.3) + 0.1 * rng.standard_normal(N))
    assert explain(other.astype(np.float32), snippets) is None
    assert explain(np.zeros(N, np.float32), snippets) is None


def test_correlate_equals_the_direct_linear_correlation_at_every_lag() -> None:
    """The FFT correlation (single precision, the shortest fast length) is the linear one:
    a snippet ending near the segment's end must not wrap onto its start."""
    rng = np.random.default_rng(2)
    seg = rng.standard_normal(wf.SNIPPET_SAMPLES + 2 * wf.LAG_SAMPLES).astype(np.float32)
    snip = rng.standard_normal((1, wf.SNIPPET_SAMPLES)).astype(np.float32)
    direct = np.correlate(seg.astype(np.float64), snip[0].astype(np.float64), mode="valid")
    x = wf.irfft(wf.rfft(seg, wf._NFFT)[None] * wf.spectra(snip), wf._NFFT, axis=1)[0]
    assert np.max(np.abs(x[: len(direct)] - direct)) < 1e-4 * np.max(np.abs(direct))


def test_runner_up_leaves_out_level_copies(library: dict, snippets: dict) -> None:
    """A file's runner-up is the best *other recording*: its level copy correlates as well
    and is no rival; an unrelated file is far below."""
    ans = explain(library[3], snippets)  # the kick; file 6 is it 6 dB down
    assert ans is not None and ans.file_id == 3 and ans.rho > 0.99
    assert ans.runner_up_rho < 0.5
    ans = explain(library[1], snippets)  # a snare, its round robin 2 a different recording
    assert ans is not None and ans.file_id == 1
    assert 0.0 < ans.runner_up_rho < ans.rho - 0.3


def test_attack_cut_off_a_fast_decaying_hit_still_correlates() -> None:
    # A hit that has lost 99 % of its snippet's energy 55 ms in: the query is only what is
    # left after the first 55 ms (a sampler's chopped attack). The rest of the snippet still
    # holds ~0.5 % of its energy and correlates sample for sample with the query.
    y = hit(12, decay_s=0.022)
    y22 = np.asarray(soxr.resample(y, SR, wf.WAVE_SR), np.float32)
    s = wf.snippet(y, SR)
    cut = wf.onset_sample(y22) + int(0.055 * wf.WAVE_SR)
    query = y22[cut:]
    power = s.samples().astype(np.float64) ** 2
    left = power[cut - (wf.onset_sample(y22) - wf.PRE_ROLL_SAMPLES) :].sum() / power.sum()
    assert wf.MIN_OVERLAP_ENERGY < left < 0.02  # refused by the old 2 % floor
    seg, start = wf._segment(query)
    other = wf.snippet(hit(13, decay_s=0.022), SR).samples()
    rho, _gain, _lag = wf.correlate(seg, np.stack([s.samples(), other]), None, start)
    assert rho[0] > 0.95 and rho[1] < 0.5


def test_probe_correlates_a_query_with_a_few_snippets(library: dict, snippets: dict) -> None:
    """``probe``: the source's snippet correlates (noise on top), a round robin does not,
    silence gives zeros."""
    rng = np.random.default_rng(3)
    y = soxr.resample(library[1] * 0.5, SR, wf.WAVE_SR).astype(np.float32)
    y = y + rng.standard_normal(len(y)).astype(np.float32) * 0.02 * float(np.std(y))
    mat = np.stack([snippets[f].samples() for f in (1, 2, 4)])
    rho = wf.probe(y, mat)
    assert rho[0] > 0.95 and rho[1] < 0.5 and rho[2] < 0.5
    assert not np.any(wf.probe(np.zeros(len(y), np.float32), mat))
