"""Identification and similarity on real drum samples (Debian's hydrogen-drumkits), held out.

Identification ("which of my samples is this?"): the library holds every kit;
the queries are the samples of the kits in half ``"B"``
(:func:`emberd.testing.drumkits.kit_half`), transformed with seed EVAL_SEED.
Everything identification fits (``emberd/library/identify_fit.json``) was
fitted by ``bench/fit_identify.py`` on the other kits (half ``"A"``, seed
FIT_SEED): these figures are held out in files, kits and transform noise.
Transforms: see :func:`emberd.testing.drumkits.transforms`.

Per transform: top-1 / top-5 = the source (or a *level copy* of it: one
recording at another level, waveform correlation >= COPY_RHO, which nothing
can tell apart after a gain change) is first / in the first five matches of
``Library.query_audio``; strict = the file itself first; emb / lm = the
embeddings alone / the landmarks alone first; cand = the source among the
re-ranked candidates; wave = share answered by the waveform stage; exact =
share answered ``kind: "exact"`` and right = its precision. Mixes are scored
as both components: ``main`` (the louder-peaked sample, the one the mix rule
answers) and ``other`` (the sample mixed in 6 dB down) each count when they
are the answer or its ``mixed_with``; ``both`` when both are named.

Also: the pooled precision of ``exact`` with its counts; silence, DC and the
noise floor (no match expected); query cost per stage (embedding + search,
landmarks + candidates + features, waveform), p50 per query; similarity
category precision@5 (stored file vectors as queries, self excluded).

Usage: ``python bench/identify.py [--library PATH] [--limit N] [--models aisfx dsp-baseline]``
(the library is kept in a temporary folder, ``emberd-identify-cache``, and reused: indexing is
incremental; the aiSFX index takes ~2-6 min on 2 cores). Timing figures are only meaningful
under the bench lock (``flock /tmp/emberd-bench.lock``); a short ``--limit 40`` run suffices.
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
from emberd.library.query import IDENTIFY_CANDIDATES, Library, combine, query_vector
from emberd.testing import drumkits as dk

K = 5


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


def main() -> None:
    """Run the benchmark and print the held-out figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", help="library folder to reuse (default: a temporary one)")
    ap.add_argument("--models", nargs="+", default=["aisfx"])
    ap.add_argument("--limit", type=int, default=0, help="queries per transform (0: all of B)")
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
          f"{', '.join(kits_b)}; transform seed {dk.EVAL_SEED}")
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
        seen["ev"] = ev = real_evidence(*a, **kw)
        clock["candidates"] += time.perf_counter() - t
        return ev

    waveform.explain = timed_explain  # type: ignore[assignment]
    lib.evidence = kept_evidence  # type: ignore[method-assign]

    hits: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    costs: dict[str, list[float]] = defaultdict(list)
    exact_right: dict[str, list[bool]] = defaultdict(list)
    t_start = time.monotonic()
    for model in args.models:
        mixed_in: list[int] = []
        tfs = dk.transforms(audio, dk.EVAL_SEED, mixed_in)
        for name in dk.TRANSFORMS:
            for i, (path, y) in enumerate(zip(queries, audio, strict=True)):
                yq = tfs[name](y, i)
                clock.clear()
                t0 = time.perf_counter()
                vec = query_vector(yq, dk.SR, model)[None, :]
                similar = lib.search(vec, max(K, IDENTIFY_CANDIDATES) + 1, model=model)[0]
                t1 = time.perf_counter()
                ident = lib.identify(yq, dk.SR, similar=similar)
                t2 = time.perf_counter()
                full = combine(ident, similar, K)
                costs[f"{model} embedding"].append(t1 - t0)
                costs[f"{model} candidates"].append(clock["candidates"])
                costs[f"{model} waveform"].append(clock["waveform"])
                costs[f"{model} total"].append(t2 - t0)
                ev = seen.pop("ev", None)
                paths = [m["path"] for m in full]
                groups = [group(by_path[p].id) for p in paths]
                right = group(truth[i])
                key = (model, name)
                hits[(*key, "top1")].append(float(groups[:1] == [right]))
                hits[(*key, "strict")].append(float(paths[:1] == [path]))
                hits[(*key, "top5")].append(float(right in groups))
                hits[(*key, "emb")].append(float(bool(similar) and similar[0]["path"] == path))
                lm = ev.landmarks if ev is not None else []
                hits[(*key, "lm")].append(float(bool(lm) and group(lm[0][0]) == right))
                cands = {group(f) for f in (ev.candidates if ev is not None else [])}
                inside = ev is not None and ev.inside_file
                hits[(*key, "cand")].append(float(right in cands or inside))
                stage = ident[0].get("stage") if ident else None
                hits[(*key, "wave")].append(float(stage == "waveform"))
                exact = bool(ident) and ident[0]["kind"] == "exact"
                hits[(*key, "exact")].append(float(exact))
                if exact:
                    hits[(*key, "right")].append(float(groups[0] == right))
                    exact_right[model].append(groups[0] == right)
                if name == "mix":
                    named = set(groups[:1])
                    if ident and "mixed_with" in ident[0]:
                        named.add(group(by_path[ident[0]["mixed_with"]].id))
                    other = group(truth[mixed_in[-1]])
                    hits[(*key, "main")].append(float(right in named))
                    hits[(*key, "other")].append(float(other in named))
                    hits[(*key, "both")].append(float(right in named and other in named))
            print(f"  {model} {name}: done ({time.monotonic() - t_start:.0f} s)", flush=True)
    waveform.explain = real_explain  # type: ignore[assignment]

    def mean(model: str, names: list[str], what: str) -> float:
        vals = [np.mean(hits[(model, n, what)]) for n in names if hits[(model, n, what)]]
        return float(np.mean(vals)) if vals else float("nan")

    cols = ("top1", "strict", "top5", "emb", "lm", "cand", "wave", "exact", "right")
    print("\nidentification on held-out kits B (see the module docstring for the columns)")
    for m in args.models:
        print(f"\n  {m}")
        print(f"  {'transform':16s}" + "".join(f"{c:>7s}" for c in cols))
        for name in [*dk.TRANSFORMS, "MEAN"]:
            names = list(dk.TRANSFORMS) if name == "MEAN" else [name]
            print(f"  {name:16s}" + "".join(f"{mean(m, names, c):7.3f}" for c in cols))
        print(f"  mix as both components: main {mean(m, ['mix'], 'main'):.3f}, other "
              f"{mean(m, ['mix'], 'other'):.3f}, both {mean(m, ['mix'], 'both'):.3f}")
        ok = exact_right[m]
        print(f"  exact precision (pooled): {sum(ok)}/{len(ok)} = "
              f"{(sum(ok) / len(ok)) if ok else float('nan'):.4f}")
        parts = {s: float(np.median(costs[f"{m} {s}"]))
                 for s in ("embedding", "candidates", "waveform", "total")}
        share = float(np.sum(costs[f"{m} waveform"]) / np.sum(costs[f"{m} total"]))
        print(f"  query cost p50: total {parts['total'] * 1e3:.0f} ms (embedding + search "
              f"{parts['embedding'] * 1e3:.0f} ms, landmarks + candidates + features "
              f"{parts['candidates'] * 1e3:.0f} ms, waveform {parts['waveform'] * 1e3:.0f} ms); "
              f"waveform share of all query time {share:.2f}")
        for label, y in no_sound_queries().items():
            n = len(lib.query_audio(y, dk.SR, K, model=m))
            print(f"  no sound: {label:28s} {n} matches")

    print("\nsimilarity: category precision@5 (all kit samples, file vectors, self excluded)")
    for model in args.models:
        _ids, fids, _starts, matrix = lib.store.vectors(model)
        rows = lib.store.conn.execute(
            "SELECT id, is_file FROM vectors WHERE model=? ORDER BY id", (model,)
        ).fetchall()
        is_file = np.array([r[1] == 1 for r in rows])
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
