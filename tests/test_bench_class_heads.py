"""The class-head comparison bench (``bench/class_heads.py``) and the mix-down bench's second
protocol split (``bench/mixdown.py``): the heads do what their names say, the grouped
protocol never trains on the group it scores, and the name-less half is a fixed half of
every kit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_balanced_ridge_keeps_a_rare_class() -> None:
    heads = _load("class_heads")
    rng = np.random.default_rng(0)
    # 190 of class 0 and 10 of class 1, overlapping: unweighted least squares leans to 0.
    x = np.concatenate([rng.normal(0.0, 1.0, (190, 2)), rng.normal(1.5, 1.0, (10, 2))])
    y = np.array([0] * 190 + [1] * 10)
    test = np.concatenate([rng.normal(0.0, 1.0, (200, 2)), rng.normal(1.5, 1.0, (200, 2))])
    truth = np.array([0] * 200 + [1] * 200)
    pred = heads.ridge_scores(x, y, test, 2, l2=0.1).argmax(axis=1)
    recall_rare = float(np.mean(pred[truth == 1] == 1))
    assert recall_rare > 0.7
    assert float(np.mean(pred == truth)) > 0.75


def test_rbf_head_learns_what_a_linear_one_cannot() -> None:
    heads = _load("class_heads")
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (400, 2))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)  # XOR: no line separates it
    t = rng.uniform(-1, 1, (400, 2))
    truth = ((t[:, 0] > 0) ^ (t[:, 1] > 0)).astype(int)
    linear = float(np.mean(heads.ridge_scores(x, y, t, 2, l2=0.1).argmax(1) == truth))
    rbf = float(np.mean(heads.rbf_scores(x, y, t, 2, l2=0.01, gamma=4.0).argmax(1) == truth))
    assert linear < 0.7
    assert rbf > 0.9


def test_grouped_protocol_never_trains_on_the_scored_group() -> None:
    heads = _load("class_heads")
    rng = np.random.default_rng(2)
    # Each group is one class nobody else has, and its sounds sit at its own point: a head
    # fitted with the scored group would be always right, one fitted without it never.
    groups = [f"g{i}" for i in range(6) for _ in range(10)]
    y = np.repeat(np.arange(6), 10)
    x = np.repeat(rng.normal(0.0, 5.0, (6, 4)), 10, axis=0) + rng.normal(0, 0.01, (60, 4))
    halves = ["A" if int(g[1:]) % 2 == 0 else "B" for g in groups]
    blocks = {"whole": x, "_nameless": np.zeros(60)}
    blocks["_nameless"][::2] = 1.0  # half of every group name-less
    for split in ("A", "B"):
        acc = heads.grouped_accuracy(blocks, ("whole",), y, groups, halves, heads.ridge_scores,
                                     6, split=split, l2=0.1)  # fmt: skip
        assert acc == 0.0, split
    within = heads.grouped_accuracy(blocks, ("whole",), y, groups, halves, heads.ridge_scores,
                                    6, split="within", l2=0.1)  # fmt: skip
    assert within == 1.0


def test_within_kit_split_is_a_fixed_half_by_file_name() -> None:
    mixdown = _load("mixdown")
    names = [f"/kits/k{k}/sound_{i:03d}.wav" for k in range(4) for i in range(200)]
    split = mixdown.within_kit_split(names)
    assert np.array_equal(split, mixdown.within_kit_split(list(reversed(names)))[::-1])
    for k in range(4):
        share = float(split[k * 200 : (k + 1) * 200].mean())
        assert 0.4 < share < 0.6
    # the same file name in another folder falls on the same side (a copied kit, not new data)
    moved = [n.replace("/kits/", "/copy/") for n in names]
    assert np.array_equal(split, mixdown.within_kit_split(moved))


def test_wide_ridge_dual_form_is_the_primal_solution() -> None:
    heads = _load("class_heads")
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, (80, 5)) + 3.0  # off-centre: the unpenalised bias matters
    y = rng.integers(0, 3, 80)
    x[y == 1] += 1.0
    t = rng.normal(0.0, 1.0, (20, 5)) + 3.0
    target = -np.ones((80, 3))
    target[np.arange(80), y] = 1.0
    w = heads.balanced_weights(y, 3)
    primal = heads.ridge_scores(x, y, t, 3, l2=0.5)  # 80 > 5: the primal solve
    dual = heads._dual_ridge(x, target, w, t, l2=0.5)
    assert np.allclose(primal, dual, atol=1e-8)
    # wider than the training set: ridge_scores takes the dual path and still fits
    wide = np.hstack([x, rng.normal(0.0, 0.01, (80, 200))])
    pred = heads.ridge_scores(wide, y, wide, 3, l2=0.01).argmax(axis=1)
    assert float(np.mean(pred == y)) > 0.9


def _decaying(rng: np.random.Generator, tau_s: float, *, f0: float | None = None) -> np.ndarray:
    sr = 22050
    t = np.arange(int(1.5 * sr)) / sr
    src = np.sin(2 * np.pi * f0 * t) if f0 else rng.normal(0.0, 1.0, len(t))
    return src * np.exp(-t / tau_s)


def test_envelope_features_read_decay_and_pitch_whatever_the_gain() -> None:
    heads = _load("class_heads")
    rng = np.random.default_rng(4)
    short, long = _decaying(rng, 0.02), _decaying(rng, 0.2)
    fs, fl = heads.envelope_features(short), heads.envelope_features(long)
    assert fs.shape == fl.shape == (139,)
    assert np.allclose(fs, heads.envelope_features(0.05 * short), atol=1e-6)  # gain-free
    # broadband time to fall 20 / 40 dB under the peak (log10 s): about 10x apart (tau ratio)
    for drop in (3, 5):
        assert 0.7 < fl[drop] - fs[drop] < 1.3, drop
    tone = heads.envelope_features(_decaying(rng, 0.3, f0=110.0))
    assert abs(tone[133] - np.log2(110.0)) < 0.1  # early pitch (log2 Hz) ...
    assert tone[132] > 0.7  # ... clearly periodic (a biased autocorrelation); noise is not
    assert heads.envelope_features(long)[132] < 0.3


def test_covariance_pool_tells_apart_what_a_mean_cannot() -> None:
    heads = _load("class_heads")
    rng = np.random.default_rng(5)
    # Two channels with the same means per file; correlated in one kind, anti-correlated in
    # the other: mean pooling sees the same file, second-order pooling does not.
    maps = []
    for kind in (1.0, -1.0) * 10:
        a = rng.uniform(0.0, 2.0, 200)
        maps.append(np.stack([a, 2.0 - a if kind < 0 else a.copy()], axis=1) ** 2)
    pooled = heads.covariance_pool(maps, np.ones(20, bool), dims=2)
    assert pooled.shape == (20, 2 + 3)
    assert np.abs(pooled[0::2, :2].mean(0) - pooled[1::2, :2].mean(0)).max() < 0.2
    cov = pooled[:, 2:]
    assert np.abs(cov[0::2].mean(0) - cov[1::2].mean(0)).max() > 0.3


def test_kit_smoothing_and_stacking_do_what_they_say() -> None:
    heads = _load("class_heads")
    # One B kit of three velocity layers of one sound (class 0): the third is called 1 by a
    # small margin; a far sound of class 1 in the same kit stays itself.
    whole = np.array([[1.0, 0.0], [0.99, 0.01], [0.98, 0.02], [0.0, 1.0], [0.5, 0.5]])
    y = np.array([0, 0, 0, 1, 1])
    groups = ["kb"] * 4 + ["ka"]
    halves = ["B"] * 4 + ["A"]
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.45, 0.55], [0.2, 0.8]])
    kw = {"split": "B", "cosine": 0.95}
    assert heads.kit_smoothed_accuracy([p], whole, y, groups, halves, weight=0.0, **kw) == 0.75
    assert heads.kit_smoothed_accuracy([p], whole, y, groups, halves, weight=1.0, **kw) == 1.0
    # the stack's ends are its two heads
    other = np.array([[-1.0, 1.0]] * 4)  # always class 1
    st = {"split": "B", "temperature": 1.0}
    assert heads.stacked_accuracy([p], [other], y, groups, halves, weight=1.0, **st) == 0.75
    assert heads.stacked_accuracy([p], [other], y, groups, halves, weight=0.0, **st) == 0.25


def test_envelope_class_model_names_what_it_was_fitted_on() -> None:
    heads = _load("class_heads")
    from emberd.library.waveform import PRE_ROLL_SAMPLES, SNIPPET_SAMPLES

    rng = np.random.default_rng(6)

    def snip(kind: str, gain: float) -> np.ndarray:
        t = np.arange(SNIPPET_SAMPLES - PRE_ROLL_SAMPLES) / 22050
        if kind == "closed_hat":  # a short noise burst
            body = rng.normal(0.0, 1.0, len(t)) * np.exp(-t / rng.uniform(0.01, 0.02))
        else:  # a low, long tone
            body = np.sin(2 * np.pi * rng.uniform(50, 70) * t) * np.exp(-t / 0.3)
        return np.concatenate([np.zeros(PRE_ROLL_SAMPLES), gain * body])

    kinds = ["closed_hat", "kick"] * 8
    model = heads.EnvelopeClassModel.from_snippets(np.array([snip(k, 1.0) for k in kinds]), kinds)
    assert model is not None
    for kind in ("closed_hat", "kick"):
        cls, p = model.predict(snip(kind, 0.1)[PRE_ROLL_SAMPLES:])
        assert cls == kind and 0.5 < p <= 1.0
    silent = np.zeros((2, SNIPPET_SAMPLES))
    one_class = heads.EnvelopeClassModel.from_snippets(silent, ["kick", None])
    assert one_class is None
