"""Which of the stress performance's hits the hit ladder misses, and which no detector can find.

The stress performance (``bench/hits.py``: 4 channels x 16 hits/s of one-shots cut to 0.5 s,
gains -20..0 dB, over a -50 dBFS floor) is rebuilt with every hit's placement; the hit
ladder runs on it in this process, block by block (as ``bench/live_load.py
--offline-only``), and each true onset is marked found (a detection within
MATCH_TOLERANCE_S, one each) or missed. Per hit it also measures, from the hit's own
waveform and the rest of its channel (every other hit plus the noise), over the first
EARLY_S after its true onset:

* ``level_db``: the hit's energy against the rest's (broadband), the "how far the other
  sounds bury it" of the README;
* ``band_db``: the same in each of BAND_EDGES_HZ (Hann-windowed spectrum), and its maximum
  over the bands: where the hit stands out most;
* ``gap_ms``: the time since the previous true onset on its channel.

An **upper bound** of what a detector can find: a hit that does not reach the rest's level
in any band (best band < 0 dB: it adds under 3 dB anywhere) cannot be told from the
rest's own swings by its level, even with a perfect model of the tails; a detector with no
model of the tails needs the hit to rise about RISE_DB over what already sounds. Hits
closer than the detector's refractory time to the previous one are counted too.

Usage: ``python bench/stress_misses.py [--tune] [--split-bands N] [--out FILE.json]``
(``--tune``: the tuning kits, for choosing settings; the default, the test kits, only to
measure; ``--split-bands 0``: the detector before its split bands).
Prints the tables of the README's "Stress detection" paragraph.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hits as bench
import live_load  # bench/live_load.py: the ladder run block by block, the matching

from emberd.dsp import onset as onset_mod

EARLY_S = 0.010  # a hit's first 10 ms: what a detector sees before it must decide
BAND_EDGES_HZ = (0.0, 150.0, 300.0, 700.0, 1500.0, 3000.0, 6000.0, 11025.0)
LEVEL_BINS_DB = (-np.inf, -10.0, -5.0, 0.0, 5.0, 10.0, np.inf)
GAP_BINS_MS = (0.0, 40.0, 55.0, 60.0, 65.0, 70.0, np.inf)


def burial(audio: np.ndarray, plan: list[bench.StressHit], sr: int) -> list[dict[str, Any]]:
    """Per hit: its first EARLY_S against the rest of its channel, broadband and per band."""
    n_early = round(EARLY_S * sr)
    nfft = 1 << int(np.ceil(np.log2(n_early)))
    win = np.hanning(n_early).astype(np.float32)
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    band_of = np.digitize(freqs, BAND_EDGES_HZ[1:-1])
    cache: dict[str, np.ndarray] = {}
    out = []
    for h in plan:
        if h.path not in cache:
            y = bench.load(h.path)[: int(0.5 * sr)]
            cache[h.path] = y / max(float(np.max(np.abs(y))), 1e-9) * np.float32(0.5)
        y = cache[h.path] * np.float32(10 ** (h.gain_db / 20))
        o = round(h.onset_s * sr)
        own = bench.window(y, o - h.start, n_early)
        rest = audio[o : o + n_early, h.channel] - own
        e_own, e_rest = float(np.mean(own**2)), float(np.mean(rest**2))
        s_own = np.abs(np.fft.rfft(own * win, nfft)) ** 2
        s_rest = np.abs(np.fft.rfft(rest * win, nfft)) ** 2
        bands = [
            10 * np.log10(max(s_own[band_of == b].sum(), 1e-20)
                          / max(s_rest[band_of == b].sum(), 1e-20))
            for b in range(len(BAND_EDGES_HZ) - 1)
        ]  # fmt: skip
        out.append({
            "level_db": 10 * np.log10(max(e_own, 1e-20) / max(e_rest, 1e-20)),
            "band_db": [round(float(b), 2) for b in bands],
        })  # fmt: skip
    return out


def table(rows: list[dict[str, Any]], key: str, bins: tuple[float, ...], unit: str) -> None:
    """Hits and share found per bin of ``key``."""
    for lo, hi in itertools.pairwise(bins):
        sel = [r for r in rows if lo <= r[key] < hi]
        if sel:
            found = sum(r["found"] for r in sel)
            print(f"    {key} {lo:g}..{hi:g} {unit}: {len(sel)} hits, found {found} "
                  f"({found / len(sel):.0%})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="the tuning kits (choose settings here)")
    ap.add_argument("--library", help="default: bench/hits.py's cached library")
    ap.add_argument("--out", help="write the per-hit rows here (JSON)")
    ap.add_argument("--no-ladder", action="store_true", help="only the placement analysis")
    ap.add_argument(
        "--split-bands",
        type=int,
        default=onset_mod.SPLIT_BANDS,
        help="the detector's split bands (0: the wide bands alone, as before them)",
    )
    args = ap.parse_args(argv)
    onset_mod.SPLIT_BANDS = args.split_bands  # read when the ladder builds its detectors
    lib = bench.library_path(args.library)
    bench.build_library(lib)
    plan: list[bench.StressHit] = []
    samples = bench.labelled(bench.TUNE_KITS if args.tune else bench.TEST_KITS)
    audio, _ = bench.stress_audio(samples, plan)
    sr = bench.SR
    rows = [{**asdict(h), **b} for h, b in zip(plan, burial(audio, plan, sr), strict=True)]
    for c in range(bench.STRESS_CHANNELS):
        ch = [r for r in rows if r["channel"] == c]
        for prev, r in zip([None, *ch[:-1]], ch, strict=True):
            r["gap_ms"] = 1000.0 * (r["onset_s"] - prev["onset_s"]) if prev else 1e9
    for r in rows:
        r["best_band_db"] = max(r["band_db"])
    extra = 0
    cpu = float("nan")
    if not args.no_ladder:
        seen, cpu = live_load.ladder_onsets(lib, audio, sr)
        for c in range(bench.STRESS_CHANNELS):
            ch = [r for r in rows if r["channel"] == c]
            found, x = live_load.match(np.array([r["onset_s"] for r in ch]), seen[c])
            extra += x
            for r, f in zip(ch, found, strict=True):
                r["found"] = bool(f)
    else:
        for r in rows:
            r["found"] = False
    n = len(rows)
    found = sum(r["found"] for r in rows)
    gaps = np.array([r["gap_ms"] for r in rows if r["gap_ms"] < 1e8])
    refr = 1000 * onset_mod.REFRACTORY_S
    print(f"stress ({'tuning' if args.tune else 'test'} kits, split bands {args.split_bands}, "
          f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC): {n} hits, found {found} "
          f"({found / n:.1%}), {extra} extra, ladder {cpu:.3f} CPU-s per audio s "
          f"(load {os.getloadavg()[0]:.1f})")  # fmt: skip
    print(f"  gaps to the previous onset: min {gaps.min():.1f} ms, p1 "
          f"{np.percentile(gaps, 1):.1f}, p50 {np.median(gaps):.1f}, max {gaps.max():.1f}; "
          f"under the {refr:.0f}-ms refractory time {int((gaps < refr).sum())}, under 5 ms "
          f"{int((gaps < 5).sum())}")  # fmt: skip
    best = np.array([r["best_band_db"] for r in rows])
    level = np.array([r["level_db"] for r in rows])
    print(f"  upper bounds: best band >= 0 dB (a perfect tail model could see it) "
          f"{int((best >= 0).sum())} ({(best >= 0).mean():.1%}); >= {onset_mod.RISE_DB:g} dB "
          f"(a rise detector without one) {int((best >= onset_mod.RISE_DB).sum())} "
          f"({(best >= onset_mod.RISE_DB).mean():.1%}); broadband >= 0 dB "
          f"{int((level >= 0).sum())}")  # fmt: skip
    print("  found by broadband level against the rest (first 10 ms):")
    table(rows, "level_db", LEVEL_BINS_DB, "dB")
    print("  found by the best band's level against the rest:")
    table(rows, "best_band_db", LEVEL_BINS_DB, "dB")
    print("  found by gap to the previous onset:")
    table(rows, "gap_ms", GAP_BINS_MS, "ms")
    print("  found by instrument:")
    for cls in sorted({r["cls"] for r in rows}):
        sel = [r for r in rows if r["cls"] == cls]
        f = sum(r["found"] for r in sel)
        nb = sum(r["best_band_db"] >= 0 for r in sel)
        print(f"    {cls}: {len(sel)} hits, found {f} ({f / len(sel):.0%}), best band >= 0 dB "
              f"{nb}, median level {np.median([r['level_db'] for r in sel]):.1f} dB")  # fmt: skip
    missed_visible = sum((not r["found"]) and r["best_band_db"] >= 0 for r in rows)
    print(f"  missed although a band stands >= 0 dB over the rest: {missed_visible}")
    over = [r for r in rows if r["best_band_db"] >= onset_mod.RISE_DB]
    lost = [r for r in over if not r["found"]]
    print(f"  {len(over)} hits stand >= {onset_mod.RISE_DB:g} dB over the rest in a band, found "
          f"{len(over) - len(lost)}; the missed ones by their best band:")  # fmt: skip
    for b, (lo, hi) in enumerate(itertools.pairwise(BAND_EDGES_HZ)):
        k = sum(int(np.argmax(r["band_db"])) == b for r in lost)
        print(f"    {lo:g}-{hi:g} Hz: {k}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows))
    print(f"stress_found={found} expected={n} extra={extra} cpu_per_s={cpu:.3f} "
          f"bound_perfect_model={int((best >= 0).sum())}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
