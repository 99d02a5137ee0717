"""Identification and similarity on real drum samples (Debian's hydrogen-drumkits), held out.

Identification ("which of my samples is this?"): the library holds every kit;
the queries are the samples of the kits in half ``"B"``
(:func:`emberd.testing.drumkits.kit_half`), edited with seed EVAL_SEED.
Everything identification fits (``emberd/library/identify_fit.json``) was
fitted by ``bench/fit_identify.py`` on the other kits (half ``"A"``, seed
FIT_SEED): these figures are held out in files, kits and edit noise.
Edits (each on its own): :data:`emberd.testing.edits.EDITS` -- noise, detune +
low-pass, reverb, a mix, pitch by resampling +-1/2/3 semitones, pitch-preserving
+-2 semitones, time-stretch +-10 %, attack trims 10/25/50 ms, a tail cut,
reversal, 11 kHz and 8-bit lo-fi.

Per edit: top-1 / top-5 = the source (or a *level copy* of it: one recording
at another level, waveform correlation >= COPY_RHO, which nothing can tell
apart after a gain change) is first / in the first five matches of
``Library.query_audio``; strict = the file itself first; cand = the source
among the re-ranked candidates; wave = share answered by the waveform stage;
exact = share answered ``kind: "exact"`` and right = its precision; conf = mean
``confidence`` of the first match. Mixes are scored as both components:
``main`` (the louder-peaked sample, the one the mix rule answers) and ``other``
(the sample mixed in 6 dB down) each count when they are the answer or its
``mixed_with``; ``both`` when both are named.

Also: sounds in no library (synthetic one-shots of seed EVAL_SEED, which no
kit holds): their first match is wrong by definition, so an ``exact`` there is
a confident wrong answer; the pooled precision of ``exact`` with its counts;
the expected calibration error (ECE, 10 equal-width bins) of the first match's
``confidence`` over every query (edits and non-library sounds) with its
reliability table; silence, DC and the noise floor (no match expected); query
cost per stage (embedding + search, landmarks + candidates + features,
waveform), p50 per query, and its process CPU time (all threads), for library
queries and, apart, for the sounds in no library; similarity category
precision@5 (stored file vectors as queries, self excluded).

Usage: ``python bench/identify.py [--library PATH] [--limit N] [--edits NAME ...]
[--non-library N] [--models aisfx dsp-baseline] [--draw SEED [--exclude-limits N ...]]
[--half A]`` (``--limit N`` takes N samples evenly spread over the sorted files of half B;
``--draw SEED`` draws them at random instead, leaving out those of earlier ``--limit``
runs: a fresh held-out sample; ``--half A`` queries the tuning kits with the fit's seed, for
design only) (the library is kept in a temporary
folder, ``emberd-identify-cache``, and reused: indexing is incremental; the aiSFX index
takes ~5 min on 2 cores). Timing figures are only meaningful under the bench lock
(``flock /tmp/emberd-bench.lock``); ``--limit 24`` runs all edits in a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from emberd.dsp.sources import load_audio
from emberd.library import fitted, waveform
from emberd.library.indexer import Indexer
from emberd.library.query import IDENTIFY_CANDIDATES, Library, query_vector, ranked, strength
from emberd.testing import drumkits as dk
from emberd.testing import edits as ed

K = 5
ECE_BINS = 10
NON_LIBRARY = 48  # sounds in no library, evaluated like every edit
# Held-out draws already measured (and so inspected): seed -> (--limit, --exclude-limits, the
# earlier draws --exclude-used left out) they were drawn with, so each is redrawn exactly.
# ``--exclude-used`` leaves their samples out of a new draw.
USED_DRAWS: dict[int, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    7: (48, (24, 48), ()),  # 2026-12-02 13:03-13:47 UTC (README, issue 13 part 1)
    8: (48, (4, 24, 48, 60), (7,)),  # 2026-12-02 16:18-16:39 UTC (issue 13 part 2)
    9: (48, (4, 24, 48, 60), (7, 8)),  # 2026-12-02 (issue 13, sibling tie-break)
}


def machine() -> str:
    """Date, host and load, for the figures' provenance."""
    load = os.getloadavg()
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} {os.cpu_count()} cores, load {load[0]:.1f}/{load[1]:.1f}"
    )


def no_sound_queries() -> dict[str, np.ndarray]:
    """Silence, DC offsets and noise floors (1 s each): none may match."""
    rng = np.random.default_rng(0)
    n = dk.SR
    return {
        "digital silence": np.zeros(n, np.float32),
        "DC +0.3": np.full(n, 0.3, np.float32),
        "DC -0.05": np.full(n, -0.05, np.float32),
        "white noise -70 dBFS peak": (rng.uniform(-1, 1, n) * 10 ** (-70 / 20)).astype(np.float32),
        "DC 0.2 + noise -75 dBFS": (0.2 + rng.uniform(-1, 1, n) * 10 ** (-75 / 20)).astype(
            np.float32
        ),
    }


def calibration(conf: list[float], right: list[bool], bins: int = ECE_BINS) -> tuple[
    float, list[tuple[float, float, int, float, float]]
]:
    """Expected calibration error and the reliability table.

    Returns ``(ece, [(lo, hi, n, mean confidence, share right), ...])`` over
    ``bins`` equal-width confidence bins (empty bins left out).
    """
    c = np.asarray(conf, float)
    r = np.asarray(right, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows, ece = [], 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        sel = (c >= lo) & ((c < hi) if b < bins - 1 else (c <= hi))
        if not sel.any():
            continue
        mc, mr = float(c[sel].mean()), float(r[sel].mean())
        ece += sel.sum() / len(c) * abs(mc - mr)
        rows.append((float(lo), float(hi), int(sel.sum()), mc, mr))
    return float(ece), rows


def chosen(alts: list[dict[str, Any]]) -> dict[str, Any]:
    """The scored answer :meth:`Library.identify` gives among a query's ``alts`` (by
    :func:`strength` under the current fit), as the record's fields."""
    best = max(alts, key=lambda a: strength(a["match"], a["feats"] or {}))
    return {k: v for k, v in best.items() if k != "match"}


def spaced(n: int, limit: int) -> list[int]:
    """The ``--limit`` sample: ``limit`` indices evenly spread over ``n`` (all when 0)."""
    if not limit:
        return list(range(n))
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int)).tolist()


def drawn(queries: list[str], limit: int, seed: int, exclude_limits: list[int],
          exclude_draws: list[int] | None = None) -> list[str]:
    """``limit`` of ``queries`` drawn at random (``seed``), none of those that the evenly
    spaced ``--limit N`` runs of ``exclude_limits`` queried, nor those of the USED_DRAWS
    seeds ``exclude_draws`` (each redrawn as it was): a fresh held-out sample."""
    used = {j for n in exclude_limits for j in spaced(len(queries), n)}
    index = {q: j for j, q in enumerate(queries)}
    for d in exclude_draws or []:
        n, excl, earlier = USED_DRAWS[d]
        used |= {index[q] for q in drawn(queries, n, d, list(excl), list(earlier))}
    rest = [j for j in range(len(queries)) if j not in used]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(rest), size=min(limit or len(rest), len(rest)),
                             replace=False).tolist())
    return [queries[rest[j]] for j in pick]


def report(records: list[dict[str, Any]], edits: list[str]) -> None:
    """Print the identification figures of ``records`` under the current fit (``--rescore``
    reprints a dump after a refit: the answers do not depend on it, the pick among a query's
    own and its variant's answer and their confidences do)."""
    from emberd.library import rerank

    for r in records:
        if "alts" in r:
            r.update(chosen(r["alts"]))
        r["conf"] = rerank.confidence(r["feats"]) if r["feats"] else 0.0
        r["exact"] = bool(r["feats"]) and r["conf"] >= rerank.EXACT_CONFIDENCE
    models = sorted({r["model"] for r in records})
    names = [e for e in edits if any(r["edit"] == e for r in records)]
    cols = ("top1", "top5", "strict", "cand", "wave", "exact", "right", "conf")

    def col(rs: list[dict[str, Any]], c: str) -> float:
        if c == "right":
            rs = [r for r in rs if r["exact"]]
        vals = [float({"top1": r.get("ok"), "top5": r.get("top5"), "strict": r.get("strict"),
                       "cand": r.get("cand"), "wave": r["stage"] == "waveform",
                       "exact": r["exact"], "right": r.get("ok"), "conf": r["conf"]}[c])
                for r in rs]
        return float(np.mean(vals)) if vals else float("nan")

    n_per = max((sum(1 for r in records if r["edit"] == e) for e in names), default=0)
    print(f"\nidentification on held-out kits B, {n_per} samples per edit "
          "(see the module docstring for the columns)")
    for m in models:
        mine = [r for r in records if r["model"] == m]
        print(f"\n  {m}")
        print(f"  {'edit':14s}" + "".join(f"{c:>7s}" for c in cols))
        per = {e: [r for r in mine if r["edit"] == e] for e in [*names, "non-library"]}
        for e in names:
            print(f"  {e:14s}" + "".join(f"{col(per[e], c):7.3f}" for c in cols))
        means = [float(np.mean([col(per[e], c) for e in names])) for c in cols]
        print(f"  {'MEAN':14s}" + "".join(f"{v:7.3f}" for v in means))
        tops = [col(per[e], "top1") for e in names]
        if tops:
            print(f"  {'MIN top-1':14s}{min(tops):7.3f}   ({names[int(np.argmin(tops))]})")
        if per["non-library"]:
            nl = per["non-library"]
            print(f"  {'non-library':14s} answered exact {col(nl, 'exact'):.3f}, mean confidence "
                  f"{col(nl, 'conf'):.3f}, max {max(r['conf'] for r in nl):.3f}")
        if per.get("mix"):
            mx = per["mix"]
            print(f"  mix as both components: main {np.mean([r['main'] for r in mx]):.3f}, "
                  f"other {np.mean([r['other'] for r in mx]):.3f}, both "
                  f"{np.mean([r['main'] and r['other'] for r in mx]):.3f}")
        ex = [bool(r["ok"]) for r in mine if r["exact"]]
        print(f"  exact precision (pooled, non-library included): {sum(ex)}/{len(ex)} = "
              f"{(sum(ex) / len(ex)) if ex else float('nan'):.4f}")
        ece, table = calibration([r["conf"] for r in mine], [bool(r["ok"]) for r in mine])
        print(f"  confidence: ECE {ece:.4f} over {len(mine)} first matches; reliability:")
        print(f"    {'bin':>9s} {'n':>5s} {'mean conf':>10s} {'right':>7s}")
        for lo, hi, n, mc, mr in table:
            print(f"    {lo:3.1f}-{hi:3.1f}  {n:5d} {mc:10.3f} {mr:7.3f}")
        lib_q = [r for r in mine if r["edit"] != "non-library"]
        parts = {s: float(np.median([r["cost"][s] for r in lib_q]))
                 for s in ("embedding", "candidates", "waveform", "total")}
        p90 = float(np.percentile([r["cost"]["total"] for r in lib_q], 90))
        print(f"  query cost p50: total {parts['total'] * 1e3:.0f} ms (p90 {p90 * 1e3:.0f} ms; "
              f"embedding + search {parts['embedding'] * 1e3:.0f} ms, landmarks + candidates + "
              f"features {parts['candidates'] * 1e3:.0f} ms, waveform "
              f"{parts['waveform'] * 1e3:.0f} ms)")
        cpu = [r["cost"]["cpu"] for r in lib_q if "cpu" in r["cost"]]
        if cpu:
            print(f"  query CPU time (process, all threads) p50: {np.median(cpu) * 1e3:.0f} ms "
                  f"(p90 {np.percentile(cpu, 90) * 1e3:.0f} ms)")
        nl_q = [r for r in mine if r["edit"] == "non-library" and "cpu" in r["cost"]]
        if nl_q:  # no source to find: every weak-answer path (variants, widening) runs
            wall = [r["cost"]["total"] for r in nl_q]
            cpu = [r["cost"]["cpu"] for r in nl_q]
            print(f"  non-library query cost p50: total {np.median(wall) * 1e3:.0f} ms (p90 "
                  f"{np.percentile(wall, 90) * 1e3:.0f} ms), CPU {np.median(cpu) * 1e3:.0f} ms "
                  f"(p90 {np.percentile(cpu, 90) * 1e3:.0f} ms, max {max(cpu) * 1e3:.0f} ms)")


def main() -> None:
    """Run the benchmark and print the held-out figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", help="library folder to reuse (default: a temporary one)")
    ap.add_argument("--models", nargs="+", default=["aisfx"])
    ap.add_argument("--limit", type=int, default=0, help="queries per edit (0: all of B)")
    ap.add_argument("--edits", nargs="+", default=list(ed.EDITS), choices=ed.EDITS,
                    metavar="EDIT", help="edits to run (default: all)")
    ap.add_argument("--non-library", type=int, default=NON_LIBRARY,
                    help="sounds in no library queried (default %(default)s)")
    ap.add_argument("--no-similarity", action="store_true", help="skip category precision@5")
    ap.add_argument("--dump", help="write every query's record (JSON) here")
    ap.add_argument("--rescore", help="reprint a --dump under the current fit; run nothing")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--draw", type=int, default=None, metavar="SEED",
                    help="a random draw of --limit samples (seeded) instead of the evenly "
                         "spaced ones: a fresh sample nobody inspected")
    ap.add_argument("--exclude-limits", type=int, nargs="*", default=[], metavar="N",
                    help="with --draw: leave out the samples earlier --limit N runs queried")
    ap.add_argument("--exclude-used", action="store_true",
                    help="with --draw: leave out the samples of every earlier draw in "
                         "USED_DRAWS (other than this one)")
    ap.add_argument("--half", choices=("A", "B"), default="B",
                    help="kits queried (default B, held out; A with the fit's edit seed is "
                         "for design only and never reported as held out)")
    args = ap.parse_args()
    if args.rescore:
        data = json.loads(Path(args.rescore).read_text())
        print(f"bench/identify.py --rescore: run of {data['machine']}; "
              f"fit: {fitted.params().get('confidence', {}).get('provenance')}")
        report(data["records"], list(ed.EDITS))
        return
    print(f"bench/identify.py, {machine()}")

    cache = Path(tempfile.gettempdir()) / "emberd-identify-cache"
    lib_path = Path(args.library) if args.library else cache / "lib"
    for model in args.models:
        t0 = time.monotonic()
        ix = Indexer(lib_path, model, jobs=args.jobs)
        try:
            s = ix.run([str(dk.KITS)])
        finally:
            ix.close()
        print(f"index {model}: indexed {s.indexed}, unchanged {s.unchanged}, skipped "
              f"{len(s.skipped)} ({time.monotonic() - t0:.1f} s)")
    cats = dk.kit_files()
    lib = Library.open(lib_path, search="exact")
    by_path = {r.path: r for r in lib.files().values()}
    queries = sorted(p for p in cats if p in by_path and dk.kit_half(p) == args.half)
    seed = dk.EVAL_SEED if args.half == "B" else dk.FIT_SEED
    if args.draw is not None:
        earlier = [d for d in USED_DRAWS if d != args.draw] if args.exclude_used else []
        if args.exclude_used and args.draw in USED_DRAWS:  # a registered draw is redrawn as
            earlier = list(USED_DRAWS[args.draw][2])  # it was (later draws left in)
        queries = drawn(queries, args.limit, args.draw, args.exclude_limits, earlier)
    elif args.limit:
        queries = [queries[j] for j in spaced(len(queries), args.limit)]
    audio = [load_audio(p, sr=dk.SR)[0] for p in queries]
    kits_b = sorted({Path(p).relative_to(dk.KITS).parts[0] for p in queries})
    print(f"{len(by_path)} files in the library; {'held out' if args.half == 'B' else 'TUNING'}: "
          f"{len(queries)} samples of kits {', '.join(kits_b)}; edit seed {seed}; "
          f"draw {args.draw} (excluding --limit {args.exclude_limits}"
          f"{' and earlier draws' if args.exclude_used else ''}); {args.non_library} "
          "non-library sounds")
    print(f"fitted parameters: {fitted.params()['provenance']}")
    copies = dk.level_copies(lib)
    sizes = Counter(copies.values())
    print(f"level copies: {sum(n for n in sizes.values() if n > 1)} files in "
          f"{sum(1 for n in sizes.values() if n > 1)} groups of one recording at several levels")

    group = lambda f: copies.get(f, f)  # noqa: E731
    truth = [by_path[p].id for p in queries]
    # Stage timing and the cheap stages' evidence, captured around the real calls.
    clock: dict[str, float] = defaultdict(float)
    seen: dict[str, Any] = {}
    real_explain, real_evidence = waveform.explain, lib.evidence

    def timed_explain(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_explain(*a, **kw)
        finally:
            clock["waveform"] += time.perf_counter() - t

    def kept_evidence(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        ev = real_evidence(*a, **kw)
        seen.setdefault("ev", ev)  # the query's own (a variant's comes second)
        clock["candidates"] += time.perf_counter() - t
        return ev

    waveform.explain = timed_explain  # type: ignore[assignment]

    def score(match: dict[str, Any] | None, probs: dict[int, float], feats: dict[str, float],
              similar: list[dict[str, Any]], i: int, name: str) -> dict[str, Any]:
        """One answer as the query's first match: right or not (see the module docstring)."""
        full = ranked([match] if match else [], similar, probs, lib.files(), K)
        out: dict[str, Any] = {
            "match": {k: match[k] for k in ("stage", "rho", "semitones", "reversed")
                      if k in match} if match else None,
            "feats": feats if match else None, "stage": match.get("stage") if match else None}
        if name == "non-library":
            return {**out, "ok": False}
        paths = [m["path"] for m in full]
        out["answer"] = paths[0] if paths else None
        groups = [group(by_path[p].id) for p in paths]
        right = group(truth[i])
        out.update(ok=groups[:1] == [right], top5=right in groups,
                   strict=paths[:1] == [queries[i]])
        if name == "mix":
            named = set(groups[:1])
            if match is not None and "mixed_with" in match:
                named.add(group(by_path[match["mixed_with"]].id))
            out.update(main=right in named, other=group(truth[mixed_in[-1]]) in named)
        return out

    lib.evidence = kept_evidence  # type: ignore[method-assign]

    records: list[dict[str, Any]] = []
    t_start = time.monotonic()
    outsiders = ed.non_library(args.non_library, seed) if args.non_library else []
    for model in args.models:
        mixed_in: list[int] = []
        tfs = ed.edits(audio, seed, mixed_in)
        for name in [*args.edits, *(["non-library"] if outsiders else [])]:
            pool = outsiders if name == "non-library" else audio
            for i, y in enumerate(pool):
                yq = y if name == "non-library" else tfs[name](y, i)
                clock.clear()
                seen.clear()
                t0, c0 = time.perf_counter(), time.process_time()
                vec = query_vector(yq, dk.SR, model)[None, :]
                similar = lib.search(vec, max(K, IDENTIFY_CANDIDATES) + 1, model=model)[0]
                t1 = time.perf_counter()
                got = lib.answers(yq, dk.SR, similar)  # what query_audio does, step by step
                match, probs, _feats = (max(got, key=lambda a: strength(a[0], a[2])) if got
                                        else (None, {}, {}))
                ranked([match] if match else [], similar, probs, lib.files(), K)  # timed too
                t2, c2 = time.perf_counter(), time.process_time()
                ev = seen.get("ev")
                rec: dict[str, Any] = {
                    "model": model, "edit": name,
                    "query": None if name == "non-library" else queries[i],
                    "cost": {"embedding": t1 - t0, "candidates": clock["candidates"],
                             "waveform": clock["waveform"], "total": t2 - t0,
                             "cpu": c2 - c0},
                    "cand": name != "non-library" and ev is not None and (
                        ev.inside_file or group(truth[i]) in {group(f) for f in ev.candidates}),
                    # Every answer identify() weighs, scored: report() takes one by strength()
                    # (the fit's wave_prob_weight moves the pick; --rescore re-picks).
                    "alts": [score(m, p, f, similar, i, name) for m, p, f in got] or [
                        score(None, {}, {}, similar, i, name)],
                }
                rec.update(chosen(rec["alts"]))
                records.append(rec)
            done = [r["ok"] for r in records if r["edit"] == name and r["model"] == model]
            print(f"  {model} {name}: top-1 {np.mean(done):.3f} "
                  f"({time.monotonic() - t_start:.0f} s)", flush=True)
    waveform.explain = real_explain  # type: ignore[assignment]
    if args.dump:
        Path(args.dump).write_text(json.dumps({"machine": machine(), "records": records}))
    report(records, list(args.edits))
    for m in args.models:
        for label, y in no_sound_queries().items():
            n = len(lib.query_audio(y, dk.SR, K, model=m))
            print(f"  no sound: {label:28s} {n} matches")

    if args.no_similarity:
        lib.close()
        return
    print("\nsimilarity: category precision@5 (all kit samples, file vectors, self excluded)")
    for model in args.models:
        _ids, fids, _starts, matrix = lib.store.vectors(model)
        rows_db = lib.store.conn.execute(
            "SELECT id, is_file FROM vectors WHERE model=? ORDER BY id", (model,)
        ).fetchall()
        is_file = np.array([r[1] == 1 for r in rows_db])
        file_vec = {int(f): matrix[i] for i, f in enumerate(fids) if is_file[i]}
        precisions = []
        per_cat: dict[str, list[float]] = defaultdict(list)
        for path in sorted(p for p in cats if p in by_path):
            rec = by_path[path]
            res = lib.search(file_vec[rec.id][None, :], 40, model=model)[0]
            neigh = [m["path"] for m in res if m["path"] != path and m["path"] in cats][:K]
            p = float(np.mean([cats[n] == cats[path] for n in neigh])) if neigh else 0.0
            precisions.append(p)
            per_cat[cats[path]].append(p)
        detail = ", ".join(f"{c} {np.mean(v):.2f}" for c, v in sorted(per_cat.items()))
        print(f"  {model:14s} P@5 = {np.mean(precisions):.3f}   ({detail})")
    lib.close()


if __name__ == "__main__":
    main()
