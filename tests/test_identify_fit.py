"""The identification fit's threshold rule (``bench/fit_identify.py``): ``kind: "exact"`` needs
a confidence at which the tuning answers were >= 99 % right AND no sound in no library was
claimed (issue 13: never a confident wrong "exact" for such a sound)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fit_identify.py"


def _fit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fit_identify", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_exact_threshold_sits_above_every_non_library_answer() -> None:
    fit = _fit_module()
    # 300 right library answers at 0.6..1.0 and one sound in no library at 0.9: precision alone
    # (300/301 > 0.99) would allow 0.6; the non-library rule lifts the threshold above 0.9.
    right = [(float(c), True, True) for c in np.linspace(0.6, 1.0, 300)]
    t = fit.exact_threshold([*right, (0.9, False, False)])
    assert 0.9 < t <= 0.91
    assert fit.exact_threshold(right) == fit.CONF_EXACT_GRID[0]  # without it, the lowest


def test_exact_threshold_keeps_its_margin_over_non_library_answers() -> None:
    fit = _fit_module()
    # A threshold just above the highest sound in no library (0.949 -> 0.95 on kits A) is
    # crossed by the next such sound a little higher: the threshold keeps EXACT_MARGIN.
    right = [(float(c), True, True) for c in np.linspace(0.6, 1.0, 300)]
    scored = [*right, (0.949, False, False)]
    assert fit.exact_threshold(scored, margin=0.0) == 0.95
    assert fit.exact_threshold(scored, margin=0.02) == 0.97
    assert fit.exact_threshold(scored) >= 0.949 + fit.EXACT_MARGIN


def test_exact_threshold_reaches_the_target_precision() -> None:
    fit = _fit_module()
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 2000)
    ok = rng.uniform(0, 1, 2000) < conf  # calibrated answers
    scored = list(zip(conf.tolist(), ok.tolist(), [True] * len(conf), strict=True))
    t = fit.exact_threshold(scored)
    assert np.mean(ok[conf >= t]) >= fit.TARGET_PRECISION
    below = t - 0.05
    assert np.mean(ok[conf >= below]) < fit.TARGET_PRECISION  # and no higher than needed



def _answer(stage: str, rho: float, right: bool, variant: bool, prob: float) -> dict:
    match = {"stage": stage, "rho": rho, **({"semitones": 3.0} if variant else {})}
    return {"match": match, "feats": {"logit": float(np.log(prob / (1 - prob)))}, "right": right}


def test_wave_prob_weight_settles_near_ties_by_the_re_ranker() -> None:
    fit = _fit_module()
    # A short click: its own waveform answer (right, re-ranker 0.55) at 0.617, a resampled
    # variant's chance match (wrong, re-ranker 0.001) at 0.630; a pitched sample: its own
    # answer (wrong, 0.05) at 0.40, the variant's (right, 0.9) at 0.95. By rho alone the click
    # goes wrong; a weight of 0.05 (0.617 + 0.0275 > 0.630) gets both right.
    queries = [
        {"edit": "e", "i": 0, "all": [_answer("waveform", 0.617, True, False, 0.55),
                                      _answer("waveform", 0.630, False, True, 0.001)]},
        {"edit": "e", "i": 1, "all": [_answer("waveform", 0.40, False, False, 0.05),
                                      _answer("waveform", 0.95, True, True, 0.9)]},
    ]
    assert [a["right"] for a in fit.choose(queries, 0.0)] == [False, True]
    assert [a["right"] for a in fit.choose(queries, 0.05)] == [True, True]
    assert fit.wave_prob_weight(queries) == 0.05  # the smallest grid value that does


def _scored(stage: str, right: bool, variant: bool, **measured: float) -> dict:
    from emberd.library import rerank

    match = {"stage": stage, **({"rho": measured["rho"]} if "rho" in measured else {}),
             **({"semitones": 2.0} if variant else {})}
    feats = rerank.answer_features(stage, variant=variant, **measured)
    return {"match": match, "feats": feats, "right": right}


def test_template_answers_weigh_by_their_lead_over_the_runner_up() -> None:
    fit = _fit_module()
    # Kits A, keep+2 (pitch-preserving): a ride's own spectrum ranks many cymbals near the top
    # (wrong answer 0.976, runner-up 0.968); its resampled variant ranks the source alone
    # (0.894, runner-up 0.27), or its waveform correlates (0.462) where the own templates say
    # 0.878 against 0.85. By probability alone the own answers win; by the lead the variant's.
    # A clear own template answer (0.95 against 0.05) still beats a variant's close one.
    queries = [
        {"edit": "keep+2", "i": 0, "all": [
            _scored("template", False, False, prob=0.976, runner_up=0.968),
            _scored("template", True, True, prob=0.894, runner_up=0.27)]},
        {"edit": "keep+2", "i": 1, "all": [
            _scored("template", False, False, prob=0.878, runner_up=0.85),
            _scored("waveform", True, True, rho=0.462, prob=0.3, runner_up=0.2,
                    runner_up_rho=0.29)]},
        {"edit": "keep+2", "i": 2, "all": [
            _scored("template", True, False, prob=0.95, runner_up=0.05),
            _scored("template", False, True, prob=0.97, runner_up=0.9)]},
    ]
    assert [a["right"] for a in fit.choose(queries, 0.1)] == [True, True, True]
