"""Choose the sibling tie-break's margin on kits A: ``identify_fit.json``'s ``sibling`` entry.

Sibling recordings (round robins and velocity layers of one instrument, kept in one kit
folder) share their first 250 ms so closely that a producer's edit (a pitch-preserving
shift, a cut attack, a reversal) can leave a sibling correlating a little better with the
query's onset than the source does. :meth:`emberd.library.query.Library._sibling` then
compares each sibling's whole sound (:func:`emberd.library.waveform.sound_rho`, read from
its file) with the query and answers the best. Chosen here, on a grid, together:
``rho_margin`` (:data:`emberd.library.query.SIBLING_RHO`: files of the answer's folder
correlating within it of the answer are weighed; 0: no tie-break), ``measure``
(:data:`~emberd.library.query.SIBLING_MEASURE`: sound_rho's energy-weighted whole or its
mean over blocks) and ``min_gain`` (:data:`~emberd.library.query.SIBLING_GAIN`: how much
better a sibling's whole sound must match than the answer's).

Data: the samples of kits A (:func:`emberd.testing.drumkits.kit_half`), edited with the
fit's seed (:data:`emberd.testing.drumkits.FIT_SEED`) under ``--edits`` (every
``--stride``-th sample), each queried once with the widest margin of MARGIN_GRID; every
answer :meth:`Library.answers` weighs (the query's own and its variants') is recorded with
its sibling ties and their whole-sound correlations, so every margin of the grid is decided
from one run: within the margin the sibling whose whole sound correlates best answers (its
answer weighed by its own rho, as :func:`emberd.library.query.strength` weighs it), and the
strongest answer per query is scored (right = the sample or a level copy of it). The point
that answers the most kits-A queries right is taken; of equals the smallest margin, then
the largest gain (the fewest switches), then the first measure.

Held out: ``bench/identify.py`` (kits B, seed EVAL_SEED) measures it.

Usage: ``python bench/fit_siblings.py [--edits E ...] [--stride N] [--answers FILE ...]
[--drop FILE:EDIT ...] [--write]`` (``--answers``: save the recorded answers to the first
FILE, or, when every FILE exists, choose on them without querying; ``--drop`` leaves one
edit of one file out; ``--write`` merges the entry into emberd/library/identify_fit.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from emberd.dsp.sources import load_audio
from emberd.library import fitted, waveform
from emberd.library import query as query_mod
from emberd.library.query import IDENTIFY_CANDIDATES, Evidence, Library, query_vector, strength
from emberd.testing import drumkits as dk
from emberd.testing import edits as ed

MARGIN_GRID = (0.0, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05)  # rho
MEASURES = (0, 1)  # waveform.sound_rho's whole (energy-weighted) and per-block measures
GAIN_GRID = (0.0, 0.0025, 0.005, 0.01, 0.02)  # how much better a sibling's whole sound must be
DEFAULT_EDITS = ("keep+2", "trim25", "reverse")


def record(lib: Library, queries: list[str], edits: list[str], stride: int,
           save: Path | None = None) -> list[dict[str, Any]]:
    """Every kits-A query's answers with their sibling ties (widest margin), as JSON data
    (written to ``save`` after each edit too)."""
    by_path = {r.path: r for r in lib.files().values()}
    copies = dk.level_copies(lib)
    group = lambda f: copies.get(f, f)  # noqa: E731
    seen: dict[str, Any] = {}

    def observed(self: Library, ev: Evidence, wave: waveform.Explanation
                 ) -> waveform.Explanation:
        """Record the ties and their whole-sound correlations; answer as without tie-break."""
        ties = self.sibling_ties(wave)
        rhos = self.sound_rhos(ev, ties) if len(ties) > 1 else None
        seen["ties"] = [{"file": t.file_id, "rho": t.rho, "sound": r}
                        for t, r in zip(ties, rhos or [None] * len(ties), strict=True)]
        return wave

    audio = [load_audio(p, sr=dk.SR)[0] for p in queries]
    tfs = ed.edits(audio, dk.FIT_SEED, [])
    out: list[dict[str, Any]] = []
    real = Library._sibling
    real_answer = Library._answer

    def answer(self: Library, ev: Evidence) -> Any:
        seen.pop("ties", None)
        got = real_answer(self, ev)
        got[2]["_ties"] = seen.get("ties")
        return got

    Library._sibling = observed  # type: ignore[method-assign]
    Library._answer = answer  # type: ignore[method-assign]
    query_mod.SIBLING_RHO = max(MARGIN_GRID)
    t0 = time.monotonic()
    try:
        for name in edits:
            for i in range(0, len(queries), stride):
                yq = tfs[name](audio[i], i)
                similar = lib.search(query_vector(yq, dk.SR, "aisfx")[None, :],
                                     IDENTIFY_CANDIDATES + 1, model="aisfx")[0]
                truth = group(by_path[queries[i]].id)
                alts = []
                for m, _probs, feats in lib.answers(yq, dk.SR, similar):
                    ties = feats.pop("_ties", None) or []
                    for t in ties:
                        t["truth"] = group(t["file"]) == truth
                    ans = by_path[m["path"]].id if m else None
                    alts.append({"strength": strength(m, feats), "rho": m and m.get("rho"),
                                 "ok": ans is not None and group(ans) == truth,
                                 "ties": ties})
                out.append({"edit": name, "i": i, "query": queries[i], "alts": alts})
            print(f"  {name}: {sum(1 for r in out if r['edit'] == name)} queries "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
            if save is not None:
                save.write_text(json.dumps(out))
    finally:
        Library._sibling = real  # type: ignore[method-assign]
        Library._answer = real_answer  # type: ignore[method-assign]
    return out


def right_at(records: list[dict[str, Any]], margin: float, measure: int, gain: float = 0.0
             ) -> dict[str, int]:
    """Queries answered right per edit when the tie-break weighs siblings within ``margin``
    by ``measure`` (an index into :func:`waveform.sound_rho`'s pair), a sibling answering
    when it matches at least ``gain`` better than the answer."""
    per: dict[str, int] = {}
    for r in records:
        best: tuple[float, bool] | None = None
        for a in r["alts"]:
            s, ok = a["strength"], a["ok"]
            ties = [t for t in a["ties"] if t["rho"] >= a["ties"][0]["rho"] - margin] if (
                a["ties"]) else []
            if margin > 0 and len(ties) > 1 and all(t["sound"] is not None for t in ties):
                # the first of equals: the answer
                pick = max(ties, key=lambda t: t["sound"][measure])
                if pick is not ties[0] and pick["sound"][measure] >= (
                        ties[0]["sound"][measure] + gain):
                    s -= ties[0]["rho"] - pick["rho"]
                    ok = pick["truth"]
            if best is None or s > best[0]:
                best = (s, ok)
        per[r["edit"]] = per.get(r["edit"], 0) + int(bool(best and best[1]))
    return per


def choose(records: list[dict[str, Any]]
           ) -> tuple[tuple[int, float, float], dict[tuple[int, float, float], dict[str, int]]]:
    """The (measure, margin, gain) of MEASURES x MARGIN_GRID x GAIN_GRID with the most
    kits-A queries right (of equals: the smallest margin, the largest gain, the first
    measure)."""
    grid = [(k, m, g) for k in MEASURES for m in MARGIN_GRID for g in GAIN_GRID]
    table = {p: right_at(records, p[1], p[0], p[2]) for p in grid}
    best = max(grid, key=lambda p: (sum(table[p].values()), -p[1], p[2], -p[0]))
    return best, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", default="/tmp/emberd-identify-cache/lib")
    ap.add_argument("--edits", nargs="+", default=list(DEFAULT_EDITS), choices=ed.EDITS)
    ap.add_argument("--stride", type=int, default=1, help="every N-th kits-A sample")
    ap.add_argument("--answers", nargs="+", help="save the answers to the first file, or "
                    "choose on these files when they all exist")
    ap.add_argument("--write", action="store_true", help="merge into identify_fit.json")
    ap.add_argument("--drop", nargs="+", default=[], metavar="FILE:EDIT",
                    help="with recorded answers: leave out an edit of one file (recorded by "
                         "older code, re-recorded in another file)")
    args = ap.parse_args()
    if args.answers and all(Path(f).exists() for f in args.answers):
        drop = {tuple(d.rsplit(":", 1)) for d in args.drop}
        records = [r for f in args.answers for r in json.loads(Path(f).read_text())
                   if (f, r["edit"]) not in drop]
        how = f"the recorded answers {', '.join(args.answers)}"
        if drop:
            how += f" less {', '.join(args.drop)}"
    else:
        lib = Library.open(args.library, search="exact")
        have = {r.path for r in lib.files().values()}
        queries = sorted(p for p in dk.kit_files() if p in have and dk.kit_half(p) == "A")
        records = record(lib, queries, args.edits, args.stride,
                         Path(args.answers[0]) if args.answers else None)
        lib.close()
        how = f"edits {' '.join(args.edits)}, every {args.stride}. sample"
    (measure, margin, gain), table = choose(records)
    edits = sorted({r["edit"] for r in records}, key=list(ed.EDITS).index)
    n = {e: sum(1 for r in records if r["edit"] == e) for e in edits}
    print(f"kits A, seed {dk.FIT_SEED}, {len(records)} queries ({how}); right per "
          "measure, margin and gain (no tie-break: margin 0):")
    print(f"  {'measure':>7s} {'margin':>7s} {'gain':>6s} {'all':>5s} "
          + " ".join(f"{e:>10s}" for e in edits))
    for (k, m, g), per in table.items():
        if m == 0 and (k, g) != (0, 0.0):
            continue  # no tie-break: one row
        print(f"  {k:7d} {m:7.4f} {g:6.4f} {sum(per.values()):5d} "
              + " ".join(f"{per.get(e, 0):4d}/{n[e]:<5d}" for e in edits))
    print(f"chosen measure {measure}, rho_margin {margin}, min_gain {gain}")
    entry = {"rho_margin": margin, "measure": measure, "min_gain": gain, "provenance": (
        f"bench/fit_siblings.py on hydrogen-drumkits half A, seed {dk.FIT_SEED}, "
        f"{len(records)} queries ({how}); right "
        f"{sum(table[(measure, margin, gain)].values())} "
        f"(no tie-break: {sum(table[(0, 0.0, 0.0)].values())})")}
    print(json.dumps(entry))
    if args.write:
        result = dict(fitted.params())
        result["sibling"] = entry
        fitted.FIT_FILE.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {fitted.FIT_FILE}")


if __name__ == "__main__":
    main()
