"""Choose the onset detector's DECAY_CREDIT_DB on the tuning split (never the test kits).

The detector's reference for a rise is the mean energy of the last 25 ms; where that past
decays (a previous sound's tail nobody identified), the reference may instead be its
newer half extrapolated to the frame (:meth:`emberd.dsp.onset.OnsetDetector._decay_ref_db`),
at most DECAY_CREDIT_DB under the mean. This script runs the whole hit ladder in process
for each value in ``--grid`` on

* the stress generator of ``bench/hits.py`` (4 channels x 16 hits/s) fed with the
  *tuning* kits' samples instead of the test kits': hits detected, extra detections;
* ``bench/hits.py --offline --tune`` performances (tuning kits, tuning held-out kits),
  seeds ``--seeds``: missed, false hits in silence, extra hits in sound;

and picks the value with the most hits found net of extra detections (stress detected
- stress extra - performance missed - performance extra) among those with no false hit in
silence, ties to the smaller credit. Run: ``python bench/fit_onset_decay.py``.

2026-12-02 (README, "Live hits"): grid 0, 4, 8 chose 4 dB (tuning stress 951 -> 998 of
1728, extra onsets in the tuning performances 4 -> 11); measured once on the test seeds
(with the band under 300 Hz also deciding where a prediction is subtracted, since
reverted) it tripled the extra onsets inside sounds and lowered seed 2's final top-1, so
the shipped DECAY_CREDIT_DB stays 0 (off). The rule above weighs an extra onset like a missed hit;
the held-out run says that undervalues them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hits as bench
import live_load

from emberd.dsp import onset


def performance_counts(lib_path: Path, seeds: list[int], n_hits: int) -> dict[str, float]:
    """Missed, false hits in silence and extra hits in sound over the tuning performances
    (and each seed's final top-1, to see what detection costs identification)."""
    from emberd.library import Library
    from emberd.library.hitindex import file_class as class_of

    out: dict[str, float] = {"missed": 0, "false_hits": 0, "extra_hits": 0, "hits": 0}
    samples = bench.labelled(bench.TUNE_KITS)
    with Library.open(lib_path) as lib:
        held, _dups = bench.held_out(lib, bench.HELD_OUT_TUNE)
        copies = bench.level_copies(lib)
        file_class = {r.path: class_of(r.path) for r in lib.files().values()}
    for seed in seeds:
        perf = bench.performance(seed, samples, held, n_hits)
        rec = bench.offline_run(lib_path, perf)
        s = bench.score(perf, rec.hits, [], copies, file_class, 0.0)
        for k in ("missed", "false_hits", "extra_hits", "hits"):
            out[k] += int(s[k])
        out[f"final_top1_seed{seed}"] = round(float(s["final"]["top1"]), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="0,3,6,9", help="DECAY_CREDIT_DB values (dB)")
    ap.add_argument("--seeds", default="0,1", help="tuning performance seeds")
    ap.add_argument("--hits", type=int, default=160)
    ap.add_argument("--no-performance", action="store_true", help="stress only")
    ap.add_argument("--library")
    args = ap.parse_args(argv)
    lib = bench.library_path(args.library)
    bench.build_library(lib)
    audio, onsets = bench.stress_audio(bench.labelled(bench.TUNE_KITS))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(f"bench/fit_onset_decay.py {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
          f"tuning kits {', '.join(bench.TUNE_KITS)}; tuning seeds {seeds}")  # fmt: skip
    rows = []
    for credit in [float(g) for g in args.grid.split(",")]:
        onset.DECAY_CREDIT_DB = credit
        st = live_load.offline_detected(lib, audio, bench.SR, onsets)
        pf = ({"missed": 0.0, "false_hits": 0.0, "extra_hits": 0.0, "hits": 0.0}
              if args.no_performance
              else performance_counts(lib, seeds, args.hits))  # fmt: skip
        net = int(st["detected"] - st["extra"] - pf["missed"] - pf["extra_hits"])
        rows.append((credit, net, pf["false_hits"]))
        print(f"  credit {credit:4.1f} dB: stress {st['detected']} of {st['expected']} "
              f"({st['detected'] / st['expected']:.1%}), {st['extra']} extra; performances "
              f"missed {pf['missed']} of {pf['hits']}, false in silence {pf['false_hits']}, "
              f"extra in sound {pf['extra_hits']}; net {net}; "
              f"{ {k: v for k, v in pf.items() if k.startswith('final')} }; "
              f"load {os.getloadavg()[0]:.1f}",
              flush=True)  # fmt: skip
    ok = [r for r in rows if r[2] == 0]
    if ok:
        best = max(ok, key=lambda r: (r[1], -r[0]))
        print(f"chosen DECAY_CREDIT_DB = {best[0]:g} (net {best[1]})")
    else:
        print("no value without false hits in silence")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
