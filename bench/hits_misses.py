"""Which hits of bench/hits.py's performance the ladder misses or names wrongly, and why.

The performance of ``bench/hits.py`` (one channel, 160 hits, gaps 80 ms-1.6 s, gains
-20..0 dB over a -50 dBFS floor) runs through the hit ladder in this process, block by block
(as ``bench/hits.py --offline``), while every block's prediction of the ringing sounds
(what the detector subtracts, and where) is recorded. Per missed hit and per wrong final
answer it prints:

* the instrument, gain, the gap to the previous true onset, the previous hits still
  sounding (instrument, gain, age) and whether the ladder was subtracting each of them
  (a ringing prediction of that recording, or a level copy of it, at the onset);
* ``level``: the hit's first EARLY_S against the rest of the channel (broadband), and its
  best band (BAND_EDGES_HZ): how far the other sounds bury it;
* ``rise``: the broadband and second-difference rise of the 1.45-ms detection frames in
  the hit's first EARLY_S over their mean in the detector's look-back, in what the
  detector saw (the residual where a prediction covered it, else the input): how close
  to RISE_DB the detector came;
* for a miss, the nearest detection (ms from the true onset): a detection outside the
  scoring tolerance is a hit found late or early, none near is a hit not found;
* for a wrong final, every stage's top answer.

Usage: ``python bench/hits_misses.py --tune --seeds 0 1 2`` (the tuning split: choose
mechanisms here; without ``--tune`` the test split, only to measure).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hits as bench

from emberd.dsp import onset as onset_mod
from emberd.library import waveform

EARLY_S = 0.010  # a hit's first 10 ms: what the detector sees before it must decide
RINGING_DB = -40.0  # an earlier hit whose level at the onset is within this of its peak rings
AROUND_S = (0.02, 0.06)  # --dump: the audio before and after a detected onset kept per hit
LAG_MS = 1000.0 * 96 / 22050  # hitindex.LAG_SAMPLES: the correlations' lag search
BAND_EDGES_HZ = (0.0, 150.0, 300.0, 700.0, 1500.0, 3000.0, 6000.0, 11025.0)


def own_waveform(t: bench.Truth) -> tuple[np.ndarray, int]:
    """The hit's gained one-shot as the performance placed it, and its first sample (SR)."""
    y = bench.load(t.path)[: int(bench.MAX_SAMPLE_S * bench.SR)]
    fade = min(len(y), int(bench.FADE_S * bench.SR))
    if len(y) == int(bench.MAX_SAMPLE_S * bench.SR):
        y[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    peak = max(float(np.max(np.abs(y))), 1e-9)
    y = y / peak * np.float32(10 ** (bench.PEAK_DBFS / 20)) * np.float32(10 ** (t.gain_db / 20))
    onset = round(t.onset_s * bench.SR)
    return y, onset - waveform.onset_sample(y)


def band_db(own: np.ndarray, rest: np.ndarray, sr: int) -> list[float]:
    nfft = 1 << int(np.ceil(np.log2(len(own))))
    win = np.hanning(len(own)).astype(np.float32)
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    band_of = np.digitize(freqs, BAND_EDGES_HZ[1:-1])
    so = np.abs(np.fft.rfft(own * win, nfft)) ** 2
    sr_ = np.abs(np.fft.rfft(rest * win, nfft)) ** 2
    out = []
    for b in range(len(BAND_EDGES_HZ) - 1):
        own, other = max(so[band_of == b].sum(), 1e-20), max(sr_[band_of == b].sum(), 1e-20)
        out.append(float(10 * np.log10(own / other)))
    return out


def rise_db(seen: np.ndarray, at: int, sr: int) -> tuple[float, float]:
    """Broadband and second-difference rise (dB) of the detector's frames in the hit's first
    EARLY_S over their mean in its look-back (``seen``: what the detector saw)."""
    frame = max(8, round(onset_mod.FRAME_S * sr))
    look = round(onset_mod.LOOKBACK_S * sr / frame)
    span = round(onset_mod.RISE_SPAN_S * sr / frame)
    a0 = at - (look + span + 1) * frame
    n_after = round(EARLY_S * sr / frame)
    x = seen[max(a0, 0) : at + n_after * frame]
    d2 = np.diff(x, 2, prepend=x[:2])
    out = []
    for sig in (x, d2):
        fr = sig[: len(sig) // frame * frame].reshape(-1, frame)
        lev = 10 * np.log10(np.mean(fr.astype(np.float64) ** 2, axis=1) + 1e-30)
        best = -np.inf
        for i in range(look + span, len(lev)):
            ref = 10 * np.log10(np.mean(10 ** (lev[i - span - look : i - span] / 10)) + 1e-30)
            best = max(best, lev[i] - ref)
        out.append(float(best))
    return out[0], out[1]


def run(seed: int, tune: bool, n_hits: int) -> dict[str, Any]:
    import soxr

    from emberd.daemon.hits import HitLadder
    from emberd.library import Library
    from emberd.library.hitindex import HitIndex
    from emberd.library.hitindex import file_class as class_of

    lib_path = bench.library_path(None)
    bench.build_library(lib_path)
    samples = bench.labelled(bench.TUNE_KITS if tune else bench.TEST_KITS)
    with Library.open(lib_path) as lib:
        held, _ = bench.held_out(lib, bench.HELD_OUT_TUNE if tune else bench.HELD_OUT_TEST)
        copies = bench.level_copies(lib)
        files = lib.files()
        index = HitIndex.from_library(lib)
    perf = bench.performance(seed, samples, held, n_hits)
    file_class = {r.path: class_of(r.path) for r in files.values()}
    y = np.asarray(soxr.resample(perf.audio, bench.SR, bench.DAEMON_SR), np.float32)
    lad = HitLadder(index, files, sr=bench.DAEMON_SR, channels=[0], model="offline",
                    time_of=lambda pos: pos / bench.DAEMON_SR)  # fmt: skip
    sr = lad.sr
    total = len(perf.audio) + sr
    seen = np.zeros(total, np.float32)  # what the detector saw (residual where covered)
    ringing: dict[int, set[str]] = {}  # block start -> paths predicted there
    orig = lad._known

    def known(ch: Any, start: int, n: int) -> tuple[Any, Any]:
        k, c = orig(ch, start, n)
        x = ch.history.get(start, n)
        if start + n <= total:
            seen[start : start + n] = x - k * c if k is not None else x
        ringing[start] = {lad._path(index, s.row) for s in ch.sounding
                          if s.start <= start < s.end}  # fmt: skip
        return k, c

    lad._known = known  # type: ignore[method-assign]
    anchors: dict[int, int] = {}  # detected onset -> the later stages' anchor (the last)
    orig_anchor = lad._anchor

    around: dict[int, np.ndarray] = {}  # detected onset -> what the anchor searches, wider
    wide = round(AROUND_S[0] * sr), round(AROUND_S[1] * sr)

    def anchor(ch: Any, hit: Any, window: int) -> int:
        a = orig_anchor(ch, hit, window)
        anchors[hit.onset] = a
        around[hit.onset] = lad._query(ch, hit, hit.onset - wide[0], sum(wide))
        return a

    lad._anchor = anchor  # type: ignore[method-assign]
    results = []
    for i in range(0, len(y), bench.BLOCK_FRAMES):
        results += lad.push(0, y[i : i + bench.BLOCK_FRAMES])
    results += lad.flush()
    hits = [
        {"channel": r.channel, "hit": r.hit, "stage": r.stage, "onset_s": r.onset_s,
         "latency_ms": 0.0, "matches": r.matches}
        for r in results
    ]  # fmt: skip
    summary = bench.score(perf, hits, [], copies, file_class, 0.0)
    block_starts = np.array(sorted(ringing))
    # Every detection's stages, by onset.
    by_hit: dict[int, dict[str, dict[str, Any]]] = {}
    for h in hits:
        st = by_hit.setdefault(int(h["hit"]), {})
        st[bench.stage_key(h, st)] = h
    det = sorted(by_hit.values(), key=lambda st: float(next(iter(st.values()))["onset_s"]))
    det_on = np.array([float(next(iter(st.values()))["onset_s"]) for st in det])
    used = np.zeros(len(det), bool)
    rows = []
    dump: list[tuple[Any, ...]] = []
    placed = [own_waveform(t) for t in perf.hits]
    for k, t in enumerate(perf.hits):
        own, first = placed[k]
        o = round(t.onset_s * bench.SR)
        n_early = round(EARLY_S * bench.SR)
        own_e = bench.window(own, o - first, n_early)
        rest = bench.window(perf.audio, o, n_early) - own_e
        bands = band_db(own_e, rest, bench.SR)
        level = 10 * np.log10(max(float(np.mean(own_e**2)), 1e-20)
                              / max(float(np.mean(rest**2)), 1e-20))  # fmt: skip
        ring = []
        b = block_starts[max(0, np.searchsorted(block_starts, o, "right") - 1)]
        predicted = {copies.get(p, p) for p in ringing.get(int(b), set())}
        for j in range(k - 1, -1, -1):
            yj, fj = placed[j]
            if o - fj >= len(yj):
                continue
            seg = bench.window(yj, o - fj - n_early, n_early)
            lv = 10 * np.log10(max(float(np.mean(seg**2)), 1e-20))
            pk = 20 * np.log10(float(np.max(np.abs(yj))) + 1e-12)
            if lv - pk < RINGING_DB:
                continue
            tj = perf.hits[j]
            sub = copies.get(tj.path, tj.path) in predicted
            ring.append(f"{tj.cls}{'' if tj.in_library else '*'} {tj.gain_db:+.0f}dB "
                        f"{1000 * (t.onset_s - tj.onset_s):.0f}ms lvl{lv:.0f}"
                        f"{' SUB' if sub else ''}")  # fmt: skip
        free = np.nonzero(~used & (np.abs(det_on - t.onset_s) <= bench.MATCH_TOLERANCE_S))[0]
        pair = None
        if len(free):
            j = int(free[np.argmin(np.abs(det_on[free] - t.onset_s))])
            used[j] = True
            pair = det[j]
        near = float(np.min(np.abs(det_on - t.onset_s))) * 1000 if len(det_on) else np.inf
        anchor_ms = np.nan
        if pair is not None:
            d_on = round(float(next(iter(pair.values()))["onset_s"]) * sr)
            if d_on in anchors:
                anchor_ms = 1000 * (anchors[d_on] / sr - t.onset_s)
                dump.append((seed, k, t.in_library, d_on, anchors[d_on], t.onset_s * sr,
                             around[d_on]))
            near = 1000 * (d_on / sr - t.onset_s)
        r_bb, r_d2 = rise_db(seen, o, sr)
        gap = 1000 * (t.onset_s - perf.hits[k - 1].onset_s) if k else np.inf
        row = {"k": k, "cls": t.cls, "lib": t.in_library, "gain": t.gain_db, "gap_ms": gap,
               "level_db": level, "best_band_db": max(bands),
               "best_band": int(np.argmax(bands)), "rise_bb": r_bb, "rise_d2": r_d2,
               "ringing": ring, "missed": pair is None, "near_ms": near,
               "anchor_ms": anchor_ms,
               "name": Path(t.path).stem, "path": t.path}  # fmt: skip
        if pair is not None and t.in_library:
            stages = {}
            for st in bench.STAGES:
                h = pair.get(st)
                if h and h["matches"]:
                    m = h["matches"][0]
                    ok = copies.get(m["path"], m["path"]) == copies.get(t.path, t.path)
                    stages[st] = (Path(m["path"]).stem, m["class"], m["kind"], m["rho"], ok)
            row["stages"] = stages
            row["wrong_final"] = "final" in stages and not stages["final"][4]
        rows.append(row)
    return {"summary": summary, "rows": rows, "dump": dump}


def show(seed: int, res: dict[str, Any]) -> None:
    s = res["summary"]
    print(f"seed {seed}: final {s['final']['top1']:.3f} missed {s['missed']} false "
          f"{s['false_hits']} extra {s['extra_hits']}")  # fmt: skip
    for r in res["rows"]:
        if not (r["missed"] or r.get("wrong_final")):
            continue
        what = "MISS " if r["missed"] else "WRONG"
        print(f"  {what} #{r['k']:3d} {r['cls']:8s}{'' if r['lib'] else '*'} {r['name'][:28]:28s} "
              f"gain {r['gain']:+5.1f} gap {r['gap_ms']:6.0f}ms level {r['level_db']:+5.1f} "
              f"band {r['best_band_db']:+5.1f}@{BAND_EDGES_HZ[r['best_band']]:g} rise "
              f"{r['rise_bb']:+5.1f}/{r['rise_d2']:+5.1f} det {r['near_ms']:+.1f}ms "
              f"anchor {r['anchor_ms']:+.1f}ms")  # fmt: skip
        print(f"        ringing: {'; '.join(r['ringing']) or '-'}")
        for st, v in r.get("stages", {}).items():
            print(f"        {st:10s} {v[0][:30]:30s} {v[1]} {v[2]} rho {v[3]:.3f} "
                  f"{'ok' if v[4] else 'WRONG'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="the tuning split (choose here)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--hits", type=int, default=160)
    ap.add_argument("--dump", help="write each paired hit's detected onset, anchor, true onset "
                    "and the audio around it (AROUND_S, tails subtracted) here (.npz)")
    args = ap.parse_args(argv)
    split = "tuning" if args.tune else "test"
    print(f"hits_misses ({split} split, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
          f"load {os.getloadavg()[0]:.1f})")  # fmt: skip
    tot_m = tot_w = 0
    table: list[dict[str, Any]] = []
    dumps: list[tuple[Any, ...]] = []
    finals: dict[tuple[int, int], bool] = {}
    for seed in args.seeds:
        res = run(seed, args.tune, args.hits)
        show(seed, res)
        table += [r for r in res["rows"] if "wrong_final" in r]
        dumps += res["dump"]
        for r in res["rows"]:
            if "wrong_final" in r:
                finals[(seed, r["k"])] = not r["wrong_final"]
        tot_m += sum(r["missed"] for r in res["rows"])
        tot_w += sum(bool(r.get("wrong_final")) for r in res["rows"])
    print("  library hits' final answers by where the later stages anchored them "
          "(ms from the true onset):")
    bins = (-np.inf, -LAG_MS, -1.0, 1.0, LAG_MS, np.inf)
    for lo, hi in itertools.pairwise(bins):
        sel = [r for r in table if lo <= r["anchor_ms"] < hi]
        if sel:
            w = sum(r["wrong_final"] for r in sel)
            print(f"    {lo:+.1f}..{hi:+.1f} ms: {len(sel)} hits, {w} wrong finals")
    if args.dump:
        np.savez(args.dump, tune=args.tune, sr=22050, seed=[d[0] for d in dumps],
                 k=[d[1] for d in dumps],
                 lib=[d[2] for d in dumps], det=[d[3] for d in dumps],
                 anchor=[d[4] for d in dumps], truth=[d[5] for d in dumps],
                 right=[finals.get((d[0], d[1]), False) for d in dumps],
                 audio=np.stack([d[6] for d in dumps]))  # fmt: skip
    print(f"missed={tot_m} wrong_finals={tot_w} seeds={len(args.seeds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
