"""Choose the sibling tie-break's margin on kits A: ``identify_fit.json``'s ``sibling`` entry.

Sibling recordings (round robins and velocity layers of one instrument, kept in one kit
folder) share their first 250 ms so closely that a producer's edit (a pitch-preserving
shift, a cut attack, a reversal) can leave a sibling correlating a little better with the
query's onset than the source does. :meth:`emberd.library.query.Library._sibling` then
compares each sibling's whole sound (:func:`emberd.library.waveform.sound_rho`, read from
its file) with the query and answers the best. What is chosen here is the margin
``rho_margin`` (:data:`emberd.library.query.SIBLING_RHO`): files of the answer's folder
correlating within it of the answer are weighed by their whole sound (0: no tie-break).

Data: the samples of kits A (:func:`emberd.testing.drumkits.kit_half`), edited with the
fit's seed (:data:`emberd.testing.drumkits.FIT_SEED`) under ``--edits`` (every
``--stride``-th sample), each queried once with the widest margin of MARGIN_GRID; every
answer :meth:`Library.answers` weighs (the query's own and its variants') is recorded with
its sibling ties and their whole-sound correlations, so every margin of the grid is decided
from one run: within the margin the sibling whose whole sound correlates best answers (its
answer weighed by its own rho, as :func:`emberd.library.query.strength` weighs it), and the
strongest answer per query is scored (right = the sample or a level copy of it). The margin
that answers the most kits-A queries right is taken, the smallest of equals.

Held out: ``bench/identify.py`` (kits B, seed EVAL_SEED) measures it.

Usage: ``python bench/fit_siblings.py [--edits E ...] [--stride N] [--answers FILE ...]
[--write]`` (``--answers``: save the recorded answers to the first FILE, or, when every
FILE exists, choose on them without querying; ``--write`` merges the entry into
emberd/library/identify_fit.json).
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


def right_at(records: list[dict[str, Any]], margin: float, measure: int) -> dict[str, int]:
    """Queries answered right per edit when the tie-break weighs siblings within ``margin``
    by ``measure`` (an index into :func:`waveform.sound_rho`'s pair)."""
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
                s -= ties[0]["rho"] - pick["rho"]
                ok = pick["truth"]
            if best is None or s > best[0]:
                best = (s, ok)
        per[r["edit"]] = per.get(r["edit"], 0) + int(bool(best and best[1]))
    return per


def choose(records: list[dict[str, Any]]
           ) -> tuple[tuple[int, float], dict[tuple[int, float], dict[str, int]]]:
    """The (measure, margin) of MEASURES x MARGIN_GRID with the most kits-A queries right
    (the smallest margin of equals, then the first measure)."""
    grid = [(k, m) for k in MEASURES for m in MARGIN_GRID]
    table = {g: right_at(records, g[1], g[0]) for g in grid}
    best = max(grid, key=lambda g: (sum(table[g].values()), -g[1], -g[0]))
    return best, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", default="/tmp/emberd-identify-cache/lib")
    ap.add_argument("--edits", nargs="+", default=list(DEFAULT_EDITS), choices=ed.EDITS)
    ap.add_argument("--stride", type=int, default=1, help="every N-th kits-A sample")
    ap.add_argument("--answers", nargs="+", help="save the answers to the first file, or "
                    "choose on these files when they all exist")
    ap.add_argument("--write", action="store_true", help="merge into identify_fit.json")
    args = ap.parse_args()
    if args.answers and all(Path(f).exists() for f in args.answers):
        records = [r for f in args.answers for r in json.loads(Path(f).read_text())]
        how = f"the recorded answers {', '.join(args.answers)}"
    else:
        lib = Library.open(args.library, search="exact")
        have = {r.path for r in lib.files().values()}
        queries = sorted(p for p in dk.kit_files() if p in have and dk.kit_half(p) == "A")
        records = record(lib, queries, args.edits, args.stride,
                         Path(args.answers[0]) if args.answers else None)
        lib.close()
        how = f"edits {' '.join(args.edits)}, every {args.stride}. sample"
    (measure, margin), table = choose(records)
    edits = sorted({r["edit"] for r in records}, key=list(ed.EDITS).index)
    n = {e: sum(1 for r in records if r["edit"] == e) for e in edits}
    print(f"kits A, seed {dk.FIT_SEED}, {len(records)} queries ({how}); right per margin:")
    print(f"  {'measure':>7s} {'margin':>7s} {'all':>5s} "
          + " ".join(f"{e:>10s}" for e in edits))
    for (k, m), per in table.items():
        print(f"  {k:7d} {m:7.4f} {sum(per.values()):5d} "
              + " ".join(f"{per.get(e, 0):4d}/{n[e]:<5d}" for e in edits))
    print(f"chosen measure {measure}, rho_margin {margin}")
    entry = {"rho_margin": margin, "measure": measure, "provenance": (
        f"bench/fit_siblings.py on hydrogen-drumkits half A, seed {dk.FIT_SEED}, "
        f"{len(records)} queries ({how}); right {sum(table[(measure, margin)].values())} "
        f"(no tie-break: {sum(table[(0, 0.0)].values())})")}
    print(json.dumps(entry))
    if args.write:
        result = dict(fitted.params())
        result["sibling"] = entry
        fitted.FIT_FILE.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {fitted.FIT_FILE}")


if __name__ == "__main__":
    main()
