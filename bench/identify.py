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
waveform), p50 per query; similarity category precision@5 (stored file
vectors as queries, self excluded).

Usage: ``python bench/identify.py [--library PATH] [--limit N] [--edits NAME ...]
[--non-library N] [--models aisfx dsp-baseline]`` (the library is kept in a temporary
folder, ``emberd-identify-cache``, and reused: indexing is incremental; the aiSFX index
takes ~5 min on 2 cores). Timing figures are only meaningful under the bench lock
(``flock /tmp/emberd-bench.lock``); ``--limit 24`` runs all edits in a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
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
from emberd.library.query import Library
from emberd.testing import drumkits as dk
from emberd.testing import edits as ed

K = 5
ECE_BINS = 10
NON_LIBRARY = 48  # sounds in no library, evaluated like every edit


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
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
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
    queries = sorted(p for p in cats if p in by_path and dk.kit_half(p) == "B")
    if args.limit:
        pick = np.unique(np.linspace(0, len(queries) - 1, args.limit).round().astype(int))
        queries = [queries[j] for j in pick]
    audio = [load_audio(p, sr=dk.SR)[0] for p in queries]
    kits_b = sorted({Path(p).relative_to(dk.KITS).parts[0] for p in queries})
    print(f"{len(by_path)} files in the library; held out: {len(queries)} samples of kits "
          f"{', '.join(kits_b)}; edit seed {dk.EVAL_SEED}; {args.non_library} non-library "
          f"sounds")
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
    real_explain, real_evidence, real_query_vector = waveform.explain, lib.evidence, None
    from emberd.library import query as query_mod

    real_query_vector = query_mod.query_vector

    def timed_explain(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_explain(*a, **kw)
        finally:
            clock["waveform"] += time.perf_counter() - t

    def kept_evidence(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        seen["ev"] = ev = real_evidence(*a, **kw)
        clock["candidates"] += time.perf_counter() - t
        return ev

    def timed_query_vector(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_query_vector(*a, **kw)
        finally:
            clock["embedding"] += time.perf_counter() - t

    waveform.explain = timed_explain  # type: ignore[assignment]
    lib.evidence = kept_evidence  # type: ignore[method-assign]
    query_mod.query_vector = timed_query_vector  # type: ignore[assignment]

    hits: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    costs: dict[str, list[float]] = defaultdict(list)
    answers: dict[str, list[tuple[float, bool, bool]]] = defaultdict(list)  # conf, right, exact
    t_start = time.monotonic()
    outsiders = ed.non_library(args.non_library, dk.EVAL_SEED) if args.non_library else []
    for model in args.models:
        mixed_in: list[int] = []
        tfs = ed.edits(audio, dk.EVAL_SEED, mixed_in)
        for name in [*args.edits, *(["non-library"] if outsiders else [])]:
            pool = outsiders if name == "non-library" else audio
            for i, y in enumerate(pool):
                yq = y if name == "non-library" else tfs[name](y, i)
                clock.clear()
                t0 = time.perf_counter()
                full = lib.query_audio(yq, dk.SR, K, model=model)
                total = time.perf_counter() - t0
                if name != "non-library":
                    costs[f"{model} embedding"].append(clock["embedding"])
                    costs[f"{model} candidates"].append(clock["candidates"])
                    costs[f"{model} waveform"].append(clock["waveform"])
                    costs[f"{model} total"].append(total)
                ev = seen.pop("ev", None)
                key = (model, name)
                top = full[0] if full else None
                conf = float(top.get("confidence", np.nan)) if top else 0.0
                exact = top is not None and top["kind"] == "exact"
                hits[(*key, "conf")].append(conf)
                hits[(*key, "exact")].append(float(exact))
                if name == "non-library":
                    answers[model].append((conf, False, exact))
                    if exact:
                        hits[(*key, "right")].append(0.0)
                    continue
                paths = [m["path"] for m in full]
                groups = [group(by_path[p].id) for p in paths]
                right = group(truth[i])
                ok = groups[:1] == [right]
                answers[model].append((conf, ok, exact))
                hits[(*key, "top1")].append(float(ok))
                hits[(*key, "strict")].append(float(paths[:1] == [queries[i]]))
                hits[(*key, "top5")].append(float(right in groups))
                cands = {group(f) for f in (ev.candidates if ev is not None else [])}
                inside = ev is not None and ev.inside_file
                hits[(*key, "cand")].append(float(right in cands or inside))
                hits[(*key, "wave")].append(float(top is not None and
                                                  top.get("stage") == "waveform"))
                if exact:
                    hits[(*key, "right")].append(float(ok))
                if name == "mix":
                    named = set(groups[:1])
                    if top is not None and "mixed_with" in top:
                        named.add(group(by_path[top["mixed_with"]].id))
                    other = group(truth[mixed_in[-1]])
                    hits[(*key, "main")].append(float(right in named))
                    hits[(*key, "other")].append(float(other in named))
                    hits[(*key, "both")].append(float(right in named and other in named))
            print(f"  {model} {name}: top-1 {np.mean(hits[(*key, 'top1')] or [np.nan]):.3f} "
                  f"({time.monotonic() - t_start:.0f} s)", flush=True)
    waveform.explain = real_explain  # type: ignore[assignment]
    query_mod.query_vector = real_query_vector  # type: ignore[assignment]

    def mean(model: str, names: list[str], what: str) -> float:
        vals = [np.mean(hits[(model, n, what)]) for n in names if hits[(model, n, what)]]
        return float(np.mean(vals)) if vals else float("nan")

    cols = ("top1", "top5", "strict", "cand", "wave", "exact", "right", "conf")
    print(f"\nidentification on held-out kits B, {len(queries)} samples per edit "
          "(see the module docstring for the columns)")
    for m in args.models:
        print(f"\n  {m}")
        print(f"  {'edit':14s}" + "".join(f"{c:>7s}" for c in cols))
        rows = [*args.edits, "MEAN", "MIN", *(["non-library"] if outsiders else [])]
        for name in rows:
            names = list(args.edits) if name in ("MEAN", "MIN") else [name]
            if name == "MIN":
                vals = [mean(m, [n], "top1") for n in names]
                print(f"  {'MIN top-1':14s}{min(vals):7.3f}   ("
                      f"{names[int(np.argmin(vals))]})")
                continue
            print(f"  {name:14s}" + "".join(f"{mean(m, names, c):7.3f}" for c in cols))
        if "mix" in args.edits:
            print(f"  mix as both components: main {mean(m, ['mix'], 'main'):.3f}, other "
                  f"{mean(m, ['mix'], 'other'):.3f}, both {mean(m, ['mix'], 'both'):.3f}")
        ans = answers[m]
        ex = [ok for _c, ok, e in ans if e]
        print(f"  exact precision (pooled, non-library included): {sum(ex)}/{len(ex)} = "
              f"{(sum(ex) / len(ex)) if ex else float('nan'):.4f}")
        confs = [c for c, _ok, _e in ans]
        if all(np.isfinite(confs)):
            ece, table = calibration(confs, [ok for _c, ok, _e in ans])
            print(f"  confidence: ECE {ece:.4f} over {len(ans)} first matches; reliability:")
            print(f"    {'bin':>11s} {'n':>5s} {'mean conf':>10s} {'right':>7s}")
            for lo, hi, n, mc, mr in table:
                print(f"    {lo:4.1f}-{hi:4.1f}  {n:5d} {mc:10.3f} {mr:7.3f}")
        else:
            print("  confidence: not reported by this version")
        parts = {s: float(np.median(costs[f"{m} {s}"]))
                 for s in ("embedding", "candidates", "waveform", "total")}
        p90 = float(np.percentile(costs[f"{m} total"], 90))
        print(f"  query cost p50: total {parts['total'] * 1e3:.0f} ms (p90 {p90 * 1e3:.0f} ms; "
              f"embedding {parts['embedding'] * 1e3:.0f} ms, landmarks + candidates + "
              f"features {parts['candidates'] * 1e3:.0f} ms, waveform "
              f"{parts['waveform'] * 1e3:.0f} ms); load now {os.getloadavg()[0]:.1f}")
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
