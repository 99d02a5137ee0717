"""Fit the hit ladder's confidence models on tuning kits; measure them on held-out kits.

``emberd/daemon/hits.py`` turns each answer's evidence into a calibrated confidence
with two logistic models: :data:`EXACT_WEIGHTS` (is the best-correlated candidate the
very file played? features ``rho``, ``margin``, ``log_window``) and
:data:`CLASS_WEIGHTS` (is the voted instrument right? ``share``, ``rho``,
``log_window``). This script builds performances like ``bench/hits.py`` (same
generator) from the *tuning* kits -- library hits from ``TUNE_KITS``, held-out hits
from ``HELD_OUT_TUNE`` -- runs the ladder in-process on them, block by block as the
daemon does, fits both models (numpy Newton steps, L2), and then reports calibration
and accuracy on performances from the *test* kits (``TEST_KITS``, ``HELD_OUT_TEST``),
which the bench uses and the fit never sees. ``EXACT_MIN_PROBABILITY`` is kept at 0.5
when no tuning held-out hit reaches it; the script prints the largest P(exact) of a
held-out hit so that a raise can be made by hand.

Usage: ``python bench/fit_hit_confidence.py [--hits 400] [--seeds 2]`` prints the
weights to paste into ``emberd/daemon/hits.py`` and the held-out figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hits as bench

from emberd.daemon import hits as ladder

L2 = 1.0
EXACT_SAFETY = 0.25  # EXACT_MIN_PROBABILITY = the highest tuning held-out P(exact) + this


def offline(lib: Any, audio: np.ndarray, capture: dict[str, Any] | None = None) -> list[Any]:
    """Run the ladder on ``audio`` in 256-sample blocks; return its HitResults."""
    from emberd.library.hitindex import HitIndex

    index = HitIndex.from_library(lib)
    lad = ladder.HitLadder(index, lib.files(), sr=bench.SR, channels=[0], model="offline",
                           time_of=lambda pos: pos / bench.SR)  # fmt: skip
    if capture is not None:
        lad.evidence = capture.setdefault("evidence", [])
    out = []
    for i in range(0, len(audio), bench.BLOCK_FRAMES):
        out += lad.push(0, audio[i : i + bench.BLOCK_FRAMES])
    return out + lad.flush()


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logistic regression (bias first column) by Newton steps with an L2 penalty."""
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        reg = L2 * np.r_[0.0, w[1:]]
        g = x.T @ (p - y) + reg
        h = (x * (p * (1 - p))[:, None]).T @ x + L2 * np.diag(np.r_[0.0, np.ones(len(w) - 1)])
        step = np.linalg.solve(h + 1e-9 * np.eye(len(w)), g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def collect(lib: Any, kits: tuple[str, ...], held: tuple[str, ...], seed: int, n: int,
            copies: dict[str, str], file_class: dict[str, str | None]) -> list[dict[str, Any]]:
    """Evidence rows (one per answer) with their labels."""
    perf = bench.performance(seed, bench.labelled(kits), bench.held_out(lib, held)[0], n)
    cap: dict[str, Any] = {}
    results = offline(lib, perf.audio, cap)
    truth = np.array([t.onset_s for t in perf.hits])
    rows = []
    for ev in cap.get("evidence", []):
        j = int(np.argmin(np.abs(truth - ev["onset_s"])))
        if abs(truth[j] - ev["onset_s"]) > bench.MATCH_TOLERANCE_S:
            continue
        t = perf.hits[j]
        best = ev["best_path"]
        ev["exact_ok"] = t.in_library and copies.get(best, best) == copies.get(t.path, t.path)
        ev["class_ok"] = file_class.get(ev["vote_path"]) == t.cls
        ev["in_library"] = t.in_library
        rows.append(ev)
    del results
    return rows


def features(rows: list[dict[str, Any]], names: tuple[str, ...]) -> np.ndarray:
    return np.array([[1.0, *[float(r[k]) for k in names]] for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--library")
    ap.add_argument("--save", help="also write the evidence rows to this JSON file")
    args = ap.parse_args(argv)

    from emberd.library import Library
    from emberd.library.hitindex import file_class as class_of

    lib_path = bench.library_path(args.library)
    bench.build_library(lib_path)
    with Library.open(lib_path) as lib:
        copies = bench.level_copies(lib)
        file_class = {r.path: class_of(r.path) for r in lib.files().values()}
        tune = [r for s in range(args.seeds) for r in collect(
            lib, bench.TUNE_KITS, bench.HELD_OUT_TUNE, 100 + s, args.hits, copies, file_class)]
        test = collect(lib, bench.TEST_KITS, bench.HELD_OUT_TEST, 200, args.hits, copies,
                       file_class)  # fmt: skip
    if args.save:
        Path(args.save).write_text(json.dumps({"tune": tune, "test": test}))
    ex_names = ("nines", "margin", "log_window")
    cl_names = ("share", "rho_vote", "log_window")
    w_ex = _fit(features(tune, ex_names), np.array([r["exact_ok"] for r in tune], float))
    w_cl = _fit(features(tune, cl_names), np.array([r["class_ok"] for r in tune], float))
    exact_w = {"bias": round(float(w_ex[0]), 4),
               **{k: round(float(v), 4) for k, v in zip(ex_names, w_ex[1:], strict=True)}}
    class_w = {"bias": round(float(w_cl[0]), 4), "share": round(float(w_cl[1]), 4),
               "rho": round(float(w_cl[2]), 4), "log_window": round(float(w_cl[3]), 4)}
    print(f"tuning answers {len(tune)}, test answers {len(test)}")
    held_tune = np.array([not r["in_library"] for r in tune])
    p_tune = 1.0 / (1.0 + np.exp(-np.clip(features(tune, ex_names) @ w_ex, -50, 50)))
    top = float(p_tune[held_tune].max()) if held_tune.any() else 0.0
    print(f"EXACT_MIN_PROBABILITY = {max(0.5, round(top + EXACT_SAFETY, 2))}")
    print(f"EXACT_WEIGHTS = {exact_w}")
    print(f"CLASS_WEIGHTS = {class_w}")

    def p(w: np.ndarray, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))

    for name, rows in (("tuning", tune), ("held-out", test)):
        pe = p(w_ex, features(rows, ex_names))
        pc = p(w_cl, features(rows, cl_names))
        held = np.array([not r["in_library"] for r in rows])
        exact = np.array([ladder.is_exact(float(q), r["rho"], r["margin"])
                          for q, r in zip(pe, rows, strict=True)])  # fmt: skip
        conf = np.where(exact, pe, pc)
        right = np.where(exact, [r["exact_ok"] for r in rows], [r["class_ok"] for r in rows])
        print(f"{name}: ECE {bench.ece(list(zip(conf.tolist(), right.tolist(), strict=True))):.3f}"
              f", exact claims {int(exact.sum())} (precision "
              f"{float(np.mean(right[exact])) if exact.any() else math.nan:.3f}), exact claims "
              f"on held-out-kit hits {int((exact & held).sum())}, max P(exact) held-out hit "
              f"{float(pe[held].max()) if held.any() else math.nan:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
