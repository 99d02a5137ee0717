"""Timeline benchmark: which library samples a beat uses, where, how loud and how fast.

Library (built once, cached in a temporary folder ``emberd-timeline-cache``): every
hydrogen kit except two held out (HELD_OUT: one of half A, one of half B, the halves of
:func:`emberd.testing.drumkits.kit_half`), plus LOOPS_PER_HALF loops per half made of
that half's one-shots (:func:`emberd.testing.beats.write_loops`), indexed with the
DSP baseline (the timeline does not use embeddings).

Beats (:func:`emberd.testing.beats.make_beat`, seeded): 30 s each, one-shots and loops
of one half at known start times, speeds 0.9-1.12 (30 % at 1.0) and gains -12..0 dB,
with the held-out kit of that half and synthetic tones/noise mixed in. ``--half A``
(seeds TUNE_SEEDS) is what the engine's constants were tuned on; the default ``--half B``
(seeds EVAL_SEEDS) is held out in kits, loops and seeds.

Scoring: an entry is *right* when its file is the event's file or a level copy of it
(:func:`emberd.testing.drumkits.level_copies`) and its start is within MATCH_S of the
event's; each event is matched at most once. recall = right library events / library
events; precision = right entries / entries, over the entries the engine calls
``exact`` (``similar`` entries are a lower-confidence list the report keeps apart and
are not counted; their number is printed). Start and speed errors over the right
entries; speed in x real time = beat seconds / wall seconds of ``timeline`` (the
library loaded once, outside the timing), with the load average.

Usage: ``python bench/timeline.py [--half A|B] [--beats N] [--set NAME=VALUE ...]
[--seeds S,S,...]`` (``--set`` overrides an engine constant: how the constants are fitted,
on half A only; ``--seeds`` runs other beats of half A, e.g. 105-112, to inspect more errors);
timing figures only under ``flock /tmp/emberd-bench.lock``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from emberd.testing import beats
from emberd.testing import drumkits as dk

HELD_OUT = ("HardElectro1", "ElectricEmpireKit")  # kits kept out of the library (A, B)
LOOPS_PER_HALF = 12
LOOP_HIT_MAX_S = 1.5  # loops are made of one-shots no longer than this
MODEL = "dsp-baseline"
BEAT_S = 30.0
TUNE_SEEDS = (101, 102, 103, 104)
EVAL_SEEDS = (201, 202, 203, 204)
MATCH_S = 0.05  # an entry this close to an event of the same file is that event


def machine() -> str:
    """Date, host and load, for the figures' provenance."""
    load = os.getloadavg()
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{platform.machine()} {os.cpu_count()} cores, load {load[0]:.1f}/{load[1]:.1f}")


def half_of(path: str) -> str:
    """``"A"`` or ``"B"`` for a kit file or a generated loop."""
    name = Path(path).name
    if name.startswith(("Aloop", "Bloop")):
        return name[0]
    return dk.kit_half(path)


def build_library() -> tuple[Path, dict[str, list[str]]]:
    """The bench library (cached) and the sound pools: one-shots, loops and outsiders per half."""
    from emberd.library.indexer import Indexer

    kits = sorted(p for p in dk.KITS.iterdir() if p.is_dir())
    files = dk.kit_files()
    pools: dict[str, list[str]] = {}
    for half in "AB":
        pools[f"one_shots_{half}"] = sorted(
            p for p in files if dk.kit_half(p) == half
            and Path(p).relative_to(dk.KITS).parts[0] not in HELD_OUT)
        pools[f"outsiders_{half}"] = sorted(
            p for p in files if dk.kit_half(p) == half
            and Path(p).relative_to(dk.KITS).parts[0] in HELD_OUT)
    key = hashlib.sha256(repr((HELD_OUT, LOOPS_PER_HALF, MODEL, sorted(files),
                               Path(beats.__file__).read_bytes())).encode()).hexdigest()[:12]
    base = Path(tempfile.gettempdir()) / "emberd-timeline-cache" / key
    for half, seed in (("A", 11), ("B", 12)):
        src = [p for p in pools[f"one_shots_{half}"] if sf.info(p).duration <= LOOP_HIT_MAX_S]
        pools[f"loops_{half}"] = [str(p) for p in beats.write_loops(
            base / "loops", src, LOOPS_PER_HALF, seed=seed, prefix=half)]
    lib = base / "lib"
    if not (base / "indexed").exists():
        ix = Indexer(lib, MODEL, jobs=2)
        try:
            s = ix.run([str(k) for k in kits if k.name not in HELD_OUT] + [str(base / "loops")])
        finally:
            ix.close()
        print(f"index: {s.indexed} indexed, {len(s.skipped)} skipped")
        (base / "indexed").touch()
    return lib, pools


def score(entries: list, events: list, group: dict[int, int], path_id: dict[str, int]) -> dict:
    """Match entries to library events (same file or level copy, start within MATCH_S)."""
    truth = [e for e in events if e.library]
    used: set[int] = set()
    right, start_err, speed_err, right_entries = 0, [], [], []
    for en in entries:
        if en.kind != "exact":
            continue
        g = group.get(en.file_id, en.file_id)
        best, best_d = None, MATCH_S
        for j, ev in enumerate(truth):
            fid = path_id.get(ev.path)
            if j in used or fid is None or group.get(fid, fid) != g:
                continue
            d = abs(en.start_s - ev.start_s)
            if d <= best_d:
                best, best_d = j, d
        if best is not None:
            used.add(best)
            right += 1
            right_entries.append(en)
            start_err.append(best_d)
            speed_err.append(abs(en.speed / truth[best].speed - 1))
    return {"events": len(truth), "found": len(used), "exact": sum(e.kind == "exact"
            for e in entries), "similar": sum(e.kind == "similar" for e in entries),
            "right": right, "start_err": start_err, "speed_err": speed_err,
            "missed": [truth[j] for j in range(len(truth)) if j not in used],
            "right_entries": right_entries}


NEAR_S = 0.025  # an onset or entry this close to an event's onset is about that event
UNDER_S = 0.5  # an event this soon after a louder one starts under its tail


class Onsets:
    """Where each file's sound starts (s after its first sample, at speed 1), cached."""

    def __init__(self) -> None:
        self.cache: dict[str, float] = {}

    def __call__(self, path: str, start_s: float, speed: float) -> float:
        if path == "synth":
            return start_s
        if path not in self.cache:
            from emberd.library.waveform import WAVE_SR, onset_sample

            self.cache[path] = onset_sample(beats.load_mono(path, WAVE_SR)) / WAVE_SR
        return start_s + self.cache[path] / speed


def categories(res: object, sc: dict, events: list, group: dict[int, int],
               path_id: dict[str, int], onset_of: Onsets) -> tuple[dict, dict]:
    """Why each missed library event was missed and why each wrong exact entry was wrong.

    Misses: ``loop`` (a loop occurrence), ``similar only`` (the right file listed as
    similar), ``wrong file`` (an exact entry of another file at its onset; ``same kit``
    when of the event's kit folder: a velocity layer or a sibling), ``no onset, under``
    (no onset detected and a louder event started up to UNDER_S before), ``no onset``,
    ``onset, no entry`` (detected, nothing claimed). Wrong entries: ``library sound``
    (another library event starts there; ``same kit`` as above), ``non-library sound``,
    ``inside a loop``, ``right file, off`` (its file has an event within UNDER_S),
    ``nothing there``.
    """
    onsets = np.array(getattr(res, "onset_s", None) or [], float)
    entries = getattr(res, "entries", [])

    def gid(path: str) -> int | None:
        fid = path_id.get(path)
        return None if fid is None else group.get(fid, fid)

    def near_onset(t: float) -> bool:
        return bool(len(onsets)) and float(np.min(np.abs(onsets - t))) <= NEAR_S

    ev_on = [onset_of(e.path, e.start_s, e.speed) for e in events]
    en_on = [onset_of(en.path, en.start_s, en.speed) for en in entries]
    miss: dict[str, int] = {}
    for ev in sc["missed"]:
        t = onset_of(ev.path, ev.start_s, ev.speed)
        g = gid(ev.path)
        kit = Path(ev.path).parent
        at = [en for en, u in zip(entries, en_on, strict=True) if abs(u - t) <= NEAR_S]
        if Path(ev.path).name[1:5] == "loop":
            why = "loop"
        elif any(en.kind == "similar" and gid(en.path) == g for en in at):
            why = "similar only"
        elif any(en.kind == "exact" for en in at):
            same = any(Path(en.path).parent == kit for en in at if en.kind == "exact")
            why = "wrong file, same kit" if same else "wrong file, other kit"
        elif not near_onset(t):
            under = any(0 < t - u <= UNDER_S and o.gain_db > ev.gain_db
                        for o, u in zip(events, ev_on, strict=True))
            why = "no onset, under a louder sound" if under else "no onset"
        else:
            why = "onset, no entry"
        miss[why] = miss.get(why, 0) + 1
    wrong: dict[str, int] = {}
    for en, u in zip(entries, en_on, strict=True):
        if en.kind != "exact" or en in sc["right_entries"]:
            continue
        g = group.get(en.file_id, en.file_id)
        there = [o for o, v in zip(events, ev_on, strict=True) if abs(v - u) <= NEAR_S]
        lib = [o for o in there if o.library]
        if any(gid(o.path) == g for o in events if abs(o.start_s - en.start_s) <= UNDER_S):
            why = "right file, off"
        elif lib:
            same = any(Path(o.path).parent == Path(en.path).parent for o in lib)
            why = "library sound, same kit" if same else "library sound, other kit"
        elif there:
            why = "non-library sound"
        elif any(Path(o.path).name[1:5] == "loop" and o.start_s <= en.start_s
                 for o in events):
            why = "inside a loop"
        else:
            why = "nothing there"
        wrong[why] = wrong.get(why, 0) + 1
    return miss, wrong


def main() -> None:
    """Build the library, make the beats, run the timeline on each and print the figures."""
    from emberd.library.query import Library
    from emberd.library.timeline import Timeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", choices=("A", "B"), default="B")
    ap.add_argument("--beats", type=int, default=4, help="beats to run (at most 4)")
    ap.add_argument("--seeds", default="", metavar="S,S,...",
                    help="other beat seeds (tuning half A only: more material to inspect)")
    ap.add_argument("--verbose", action="store_true", help="list missed events and wrong entries")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a constant of emberd.library.timeline (fitting on --half A"
                         " only), e.g. --set LONG_EXACT_RHO=0.7 --set 'ANCHOR_SHIFTS=(256,)'")
    args = ap.parse_args()
    import ast

    from emberd.library import timeline as engine

    if args.set and args.half != "A":
        ap.error("--set fits engine constants: on the tuning half only (--half A)")
    if args.seeds and args.half != "A":
        ap.error("--seeds: other beats of the tuning half only (--half A)")
    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(engine, name):
            ap.error(f"--set: emberd.library.timeline has no {name}")
        setattr(engine, name, ast.literal_eval(value))
        print(f"set {name} = {getattr(engine, name)!r}")
    print(f"bench/timeline.py, {machine()}")
    lib_path, pools = build_library()
    h = args.half
    seeds = tuple(int(v) for v in args.seeds.split(",")) if args.seeds else (
        TUNE_SEEDS if h == "A" else EVAL_SEEDS)[: args.beats]
    lib = Library.open(lib_path, search="exact")
    path_id = {r.path: r.id for r in lib.files().values()}
    group = dk.level_copies(lib)
    t0 = time.perf_counter()
    tl = Timeline(lib)
    print(f"library: {len(path_id)} files (held out of it: {', '.join(HELD_OUT)}); "
          f"timeline engine loaded in {time.perf_counter() - t0:.2f} s")
    total: dict = {"events": 0, "found": 0, "exact": 0, "similar": 0, "right": 0,
                   "start_err": [], "speed_err": []}
    audio_s, wall_s, cpu_s, loads = 0.0, 0.0, 0.0, []
    tmp = Path(tempfile.mkdtemp(prefix="emberd-timeline-"))
    onset_of = Onsets()
    misses: dict[str, int] = {}
    wrongs: dict[str, int] = {}
    for seed in seeds:
        y, events = beats.make_beat(BEAT_S, pools[f"one_shots_{h}"], pools[f"loops_{h}"],
                                    pools[f"outsiders_{h}"], seed=seed)
        path = tmp / f"beat{seed}.wav"
        sf.write(path, y, beats.SR, subtype="FLOAT")
        t, c = time.perf_counter(), time.process_time()
        res = tl.run(path)
        wall_s += time.perf_counter() - t
        cpu_s += time.process_time() - c
        loads.append(os.getloadavg()[0])
        audio_s += res.duration_s
        sc = score(res.entries, events, group, path_id)
        for k in total:
            total[k] += sc[k]
        miss, wrong = categories(res, sc, events, group, path_id, onset_of)
        for d, add in ((misses, miss), (wrongs, wrong)):
            for k, v in add.items():
                d[k] = d.get(k, 0) + v
        print(f"seed {seed}: {sc['events']} library events ({sum(not e.library for e in events)}"
              f" non-library), {res.onsets} onsets, found {sc['found']}, exact entries "
              f"{sc['exact']} ({sc['right']} right), similar {sc['similar']}")
        if args.verbose:
            for ev in sc["missed"]:
                print(f"   missed {ev.start_s:7.3f} x{ev.speed:.3f} {ev.gain_db:6.1f} dB "
                      f"{Path(ev.path).name}")
            for en in res.entries:
                print(f"   entry  {en.start_s:7.3f} x{en.speed:.3f} {en.gain_db:6.1f} dB "
                      f"rho {en.rho:.3f} {en.kind:7s} {Path(en.path).name}")
    se = np.array(total["start_err"]) * 1000
    sp = np.array(total["speed_err"]) * 100
    recall = total["found"] / max(total["events"], 1)
    precision = total["right"] / max(total["exact"], 1)
    print(f"half {h} (seeds {', '.join(map(str, seeds))}): recall {recall:.3f} "
          f"({total['found']}/{total['events']}), precision {precision:.3f} "
          f"({total['right']}/{total['exact']} exact entries; {total['similar']} similar "
          f"entries not counted)")
    print("missed, by cause: " + ", ".join(f"{k} {v}" for k, v in sorted(
        misses.items(), key=lambda kv: -kv[1])))
    print("wrong exact entries, by cause: " + ", ".join(f"{k} {v}" for k, v in sorted(
        wrongs.items(), key=lambda kv: -kv[1])))
    if len(se):
        print(f"start error ms p50 {np.percentile(se, 50):.1f} p90 {np.percentile(se, 90):.1f} "
              f"max {se.max():.1f}; within 25 ms {np.mean(se <= 25):.3f}")
        print(f"speed error % p50 {np.percentile(sp, 50):.2f} p90 {np.percentile(sp, 90):.2f} "
              f"max {sp.max():.2f}; within 1 % {np.mean(sp <= 1):.3f}")
    print(f"speed {audio_s / wall_s:.1f}x real time ({audio_s:.0f} s of audio in {wall_s:.1f} s;"
          f" load {min(loads):.1f}-{max(loads):.1f}); {audio_s / cpu_s:.1f}x per CPU second of"
          f" this process ({cpu_s:.1f} CPU s)")


if __name__ == "__main__":
    main()
