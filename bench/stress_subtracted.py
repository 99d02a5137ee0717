"""Which ringing tails the hit ladder subtracts at each true onset of the stress performance.

The stress performance (``bench/hits.py``: 4 channels x 16 hits/s; ``--tune``: the tuning
kits) runs through the hit ladder in this process, block by block (as
``bench/live_load.py --offline-only``), with a trace of every identified sound
(``HitLadder._sound``) and of the sounds subtracted in each block (``HitLadder._known``).
Prints how many hits were ever identified well enough to be subtracted, how soon after
their onset, and, at the true onsets of found and of missed hits, how many earlier hits
(onset within the 0.5 s a stress one-shot lasts) were ringing and how many were subtracted
(with the right file, and the previous hit itself). A sounding is matched to a hit when
its anchored onset lies within MATCH_S of the hit's true onset.

Usage: ``python bench/stress_subtracted.py [--tune]``
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hits as bench
import live_load

from emberd.daemon import hits as dh
from emberd.library.waveform import PRE_ROLL_SAMPLES

MATCH_S = 0.004  # a sounding's onset this close to a hit's true onset is that hit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="the tuning kits (choose settings here)")
    args = ap.parse_args(argv)
    plan: list[bench.StressHit] = []
    audio, _ = bench.stress_audio(bench.labelled(bench.TUNE_KITS if args.tune else bench.TEST_KITS),
                                  plan)  # fmt: skip
    sr = bench.SR
    blocks: dict[int, list[tuple[int, list[tuple[int, int, int]]]]] = defaultdict(list)
    named: list[tuple[int, int, int, int]] = []  # channel, ladder position, row, anchored at
    known, sound = dh.HitLadder._known, dh.HitLadder._sound

    def trace_known(self: Any, ch: Any, start: int, n: int) -> Any:
        out = known(self, ch, start, n)
        blocks[ch.number].append((start, [(s.start, s.row, s.end) for s in ch.sounding]))
        return out

    def trace_sound(self: Any, ch: Any, hit: Any, row: int, gain: float, at: int, *,
                    whole: bool) -> None:  # fmt: skip
        named.append((ch.number, ch.history.end, row, at))
        sound(self, ch, hit, row, gain, at, whole=whole)

    dh.HitLadder._known = trace_known  # type: ignore[method-assign]
    dh.HitLadder._sound = trace_sound  # type: ignore[method-assign]
    lib = bench.library_path(None)
    bench.build_library(lib)
    seen, _cpu = live_load.ladder_onsets(lib, audio, sr)
    from emberd.library import Library
    from emberd.library.hitindex import HitIndex

    with Library.open(lib) as library:
        files = library.files()
        index = HitIndex.from_library(library)
        path_of = {r: str(files[int(index.file_ids[r])].path) for r in range(len(index))}

    def same(row: int, h: bench.StressHit) -> bool:
        return path_of[row].split("/")[-2:] == h.path.split("/")[-2:]

    tol = round(MATCH_S * sr)
    found: dict[int, bool] = {}
    first: dict[int, tuple[float, bool]] = {}  # hit -> (ms after its onset, right file)
    for c in range(bench.STRESS_CHANNELS):
        mine = [i for i, h in enumerate(plan) if h.channel == c]
        f, _ = live_load.match(np.array([plan[i].onset_s for i in mine]), seen[c])
        found.update(zip(mine, f.tolist(), strict=True))
        for ch, end, row, at in named:
            if ch != c:
                continue
            for i in mine:
                if abs(at - plan[i].onset_s * sr) <= tol:
                    ms = (end - plan[i].onset_s * sr) / sr * 1e3
                    first.setdefault(i, (ms, same(row, plan[i])))
                    break
    delay = np.array([d for d, _ in first.values()])
    right = sum(r for _, r in first.values())
    print(f"stress ({'tuning' if args.tune else 'test'} kits): found {sum(found.values())} of "
          f"{len(plan)}; identified for subtraction {len(first)} ({right} with the right file), "
          f"first {np.percentile(delay, 10):.0f} / "
          f"{np.percentile(delay, 50):.0f} / {np.percentile(delay, 90):.0f} ms after the onset "
          f"(p10 / p50 / p90)")  # fmt: skip
    stats: dict[bool, list[tuple[int, int, int, bool]]] = {True: [], False: []}
    for c in range(bench.STRESS_CHANNELS):
        mine = sorted((i for i, h in enumerate(plan) if h.channel == c),
                      key=lambda i: plan[i].onset_s)  # fmt: skip
        starts = np.array([b for b, _ in blocks[c]])
        for k, i in enumerate(mine):
            o = round(plan[i].onset_s * sr)
            snd = blocks[c][int(np.searchsorted(starts, o, side="right")) - 1][1]
            ring = [j for j in mine[:k] if o - plan[j].start < 0.5 * sr]
            sub = right = 0
            prev = False
            for j in ring:
                m = [s for s in snd if abs(s[0] + PRE_ROLL_SAMPLES - plan[j].onset_s * sr) <= tol
                     and s[2] > o]  # fmt: skip
                if m:
                    sub += 1
                    right += same(m[0][1], plan[j])
                    prev |= j == mine[k - 1]
            stats[found[i]].append((len(ring), sub, right, prev))
    for fl in (True, False):
        a = np.array(stats[fl], float)
        print(f"  at the onsets of {'found' if fl else 'missed'} hits ({len(a)}): ringing "
              f"{a[:, 0].mean():.2f}, subtracted {a[:, 1].mean():.2f} (right file "
              f"{a[:, 2].mean():.2f}), the previous hit subtracted "
              f"{a[:, 3].mean():.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
