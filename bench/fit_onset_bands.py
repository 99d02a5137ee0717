"""Choose the onset detector's split bands on the tuning split (never the test kits).

The detector (:class:`emberd.dsp.onset.OnsetDetector`) looks for a 10-dB rise in broadband
energy, in its second difference and in two wide bands (under 300 Hz, 300-1500 Hz). At 4
channels x 16 hits/s, half the hits start under the sum of the earlier hits' tails; many of
them still stand 10 dB over the rest in a narrower band the tails leave quiet
(``bench/stress_misses.py``: the best of 7 bands). This script adds candidate sets of
narrower bands (BAND_EDGES_HZ after the WIDE_BANDS) to the detector alone (no hit ladder,
nothing subtracted: fast) and counts, for each,

* on the stress generator of ``bench/hits.py`` fed with the *tuning* kits' samples: hits
  found (a detection within MATCH_TOLERANCE_S, one each), extra detections;
* on ``bench/hits.py --offline --tune`` performances (tuning kits, tuning held-out kits),
  seeds ``--seeds``: extra detections in sound and false ones in silence;
* in NOISE_S of -50 dBFS white noise at each of 22.05 and 44.1 kHz: detections.

The candidates include the chosen bands with 0, +6 and +12 dB more floor margin under 300
Hz (BAND_FLOOR_MARGIN_DB): the margin is chosen here too, on the same rule. Every number
comes from the tuning kits (``bench/hits.py`` TUNE_KITS, HELD_OUT_TUNE); the script ends by
comparing its choice with the shipped ``onset.BAND_EDGES_HZ`` / ``onset.BAND_FLOOR_MARGIN_DB``
and exits 1 if they differ.

Rule: the set finding the most stress hits among those with no false hit in silence, no
more detections in noise than the wide bands alone (they fire about once a minute there)
and at most ``--extra-budget`` more extra detections in sound over the tuning performances
than the wide bands alone (an extra onset is a wrong hit message and a hit cut
short; the decay credit of ``bench/fit_onset_decay.py``, chosen by a rule weighing it like a
missed hit, tripled them on held-out performances). Run: ``python bench/fit_onset_bands.py``.

2026-12-02 (README, "Live hits"): see the printed table there and the run's date and load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hits as bench

from emberd.dsp import onset

CANDIDATES: dict[str, tuple[tuple[tuple[float, float], ...], tuple[float, ...]]] = {
    "wide only": ((), ()),
    "150-300, 300-700, 1500-3000": (((150.0, 300.0), (300.0, 700.0), (1500.0, 3000.0)),
                                    (12.0, 0.0, 0.0)),
    "+ 700-1500": (((150.0, 300.0), (300.0, 700.0), (700.0, 1500.0), (1500.0, 3000.0)),
                   (12.0, 0.0, 0.0, 0.0)),
    "0-150, ..., 3000-6000 (6 bands)": (
        ((0.0, 150.0), (150.0, 300.0), (300.0, 700.0), (700.0, 1500.0), (1500.0, 3000.0),
         (3000.0, 6000.0)), (12.0, 12.0, 0.0, 0.0, 0.0, 0.0)),
    "150-300, 300-700, 1500-3000, +6 dB under 300 Hz": (
        ((150.0, 300.0), (300.0, 700.0), (1500.0, 3000.0)), (6.0, 0.0, 0.0)),
    "150-300, 300-700, 1500-3000, no added margin": (
        ((150.0, 300.0), (300.0, 700.0), (1500.0, 3000.0)), (0.0, 0.0, 0.0)),
}  # fmt: skip
NOISE_S = 240.0  # seconds of noise per rate (8 minutes in all)
BLOCK = 256  # samples per push, as the daemon's input delivers them
LOW_BAND_HZ = 300.0  # a band ending here or lower: its 5.8-ms level has few degrees of freedom
DECAY_LOW_MARGIN_DB = 24.0  # onset.DECAY_FLOOR_MARGIN_DB of such a band (12 elsewhere)
SHIPPED = (onset.BAND_EDGES_HZ, onset.BAND_FLOOR_MARGIN_DB, onset.DECAY_FLOOR_MARGIN_DB,
           onset.SPLIT_BANDS)  # fmt: skip


def configure(bands: tuple[tuple[float, float], ...], margins: tuple[float, ...]) -> None:
    """Set the detector module's split bands (read when a detector is built).

    Every per-band array is derived from the band list: BAND_FLOOR_MARGIN_DB (the wide
    bands' entries, then ``margins``) and DECAY_FLOOR_MARGIN_DB (broadband and second
    difference as shipped, then DECAY_LOW_MARGIN_DB for a band ending at LOW_BAND_HZ or lower,
    the shipped second-difference margin elsewhere: the rule of the shipped values), so the
    decay path stays consistent whatever the number of bands.
    """
    if len(margins) != len(bands):
        raise ValueError(f"{len(bands)} bands but {len(margins)} floor margins")
    edges, floor, decay, _ = SHIPPED
    wide = edges[: onset.WIDE_BANDS]
    onset.BAND_EDGES_HZ = (*wide, *bands)
    onset.BAND_FLOOR_MARGIN_DB = (*floor[: onset.WIDE_BANDS], *margins)
    onset.DECAY_FLOOR_MARGIN_DB = (
        *decay[:2],
        *(DECAY_LOW_MARGIN_DB if hi <= LOW_BAND_HZ else decay[1] for _, hi in onset.BAND_EDGES_HZ),
    )
    onset.SPLIT_BANDS = len(bands)
    onset._band_filters.cache_clear()


def detect(x: np.ndarray, sr: int) -> np.ndarray:
    """The detector's onsets (s) on ``x``, fed in BLOCK-sample blocks."""
    det = onset.OnsetDetector(sr=sr)
    out: list[int] = []
    for i in range(0, len(x), BLOCK):
        out += det.push(x[i : i + BLOCK])
    return np.array(out, float) / sr


def count(
    seen: np.ndarray, truth: list[float], silent: list[tuple[float, float]]
) -> tuple[int, int, int]:
    """Found, extra in sound, false in silence (bench/hits.py's matching)."""
    t = np.array(truth)
    used = np.zeros(len(t), bool)
    extra = false = 0
    for s in np.sort(seen):
        free = np.nonzero(~used & (np.abs(t - s) <= bench.MATCH_TOLERANCE_S))[0]
        if len(free):
            used[free[np.argmin(np.abs(t[free] - s))]] = True
        elif any(a <= s <= b for a, b in silent):
            false += 1
        else:
            extra += 1
    return int(used.sum()), extra, false


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1", help="tuning performances (--tune kits)")
    ap.add_argument("--extra-budget", type=int, default=2)
    args = ap.parse_args(argv)
    import soxr

    print(f"bench/fit_onset_bands.py {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
          f"tuning split only (kits {', '.join(bench.TUNE_KITS)}; --tune seeds {args.seeds}), "
          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip

    from emberd.library import Library

    samples = bench.labelled(bench.TUNE_KITS)
    audio, onsets = bench.stress_audio(samples)
    lib_path = bench.library_path(None)
    bench.build_library(lib_path)
    with Library.open(lib_path) as lib:
        held, _ = bench.held_out(lib, bench.HELD_OUT_TUNE)
    perfs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        p = bench.performance(seed, samples, held, 160)
        y = np.asarray(soxr.resample(p.audio, bench.SR, bench.DAEMON_SR), np.float32)
        perfs.append((y, [h.onset_s for h in p.hits], p.silent))
    rng = np.random.default_rng(11)
    noise = {sr: (rng.standard_normal(int(NOISE_S * sr)) * 10 ** (bench.NOISE_DBFS / 20)).astype(
        np.float32) for sr in (bench.SR, bench.DAEMON_SR)}  # fmt: skip
    rows = {}
    for name, (bands, margins) in CANDIDATES.items():
        configure(bands, margins)
        found = extra = 0
        for c in range(bench.STRESS_CHANNELS):
            f, e, _ = count(detect(audio[:, c], bench.SR), onsets[c], [])
            found, extra = found + f, extra + e
        p_extra = p_false = 0
        for y, truth, silent in perfs:
            _, e, fl = count(detect(y, bench.DAEMON_SR), truth, silent)
            p_extra, p_false = p_extra + e, p_false + fl
        in_noise = sum(len(detect(x, sr)) for sr, x in noise.items())
        rows[name] = (found, extra, p_extra, p_false, in_noise)
        print(f"{name}: stress (tuning kits) {found} of {sum(map(len, onsets))}, extra {extra}; "
              f"performances {args.seeds}: extra in sound {p_extra}, false in silence {p_false}; "
              f"in {NOISE_S:g} s of noise at 22.05 + 44.1 kHz: {in_noise} "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    base = rows["wide only"]
    ok = {k: r for k, r in rows.items()
          if r[3] == 0 and r[4] <= base[4] and r[2] <= base[2] + args.extra_budget}  # fmt: skip
    best = max(ok, key=lambda k: ok[k][0])
    configure(*CANDIDATES[best])
    chosen = (onset.BAND_EDGES_HZ, onset.BAND_FLOOR_MARGIN_DB, onset.DECAY_FLOOR_MARGIN_DB,
              onset.SPLIT_BANDS)  # fmt: skip
    configure(SHIPPED[0][onset.WIDE_BANDS :], SHIPPED[1][onset.WIDE_BANDS :])
    same = chosen == SHIPPED
    print(
        f"chosen: {best}; equals the shipped BAND_EDGES_HZ {SHIPPED[0]}, "
        f"BAND_FLOOR_MARGIN_DB {SHIPPED[1]}: {'yes' if same else 'NO'} "
        f"({time.strftime('%H:%M', time.gmtime())} UTC, load {os.getloadavg()[0]:.1f})"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
