"""Live-path load: does 4 channels x 16 hits/s of aiSFX fit this machine, and where it fails.

The audio is bench/hits.py's stress performance (4 channels, 16 library one-shots a second
on each over a -50 dBFS floor, 30 s). Three measurements on it:

1. **fast pace** (``--pace fast``: every hop and every block is analysed, nothing is
   skipped): the daemon process's CPU seconds per second of audio, with hits and without
   (``--no-hits``, the anchor). Real time needs this much of the machine's cores; on an
   idle 2-core box anything clearly under 2 can fit, what is left is scheduling.
2. **offline ladder** (first; alone with ``--offline-only``): the hit ladder in this
   process on the same audio, block by block, with no time pressure: the hits it detects
   (a detection within 25 ms of a true onset, one each; the rest counted as extra) are the
   most a live run can answer (the rest are not seen: quiet hits under louder tails, 62 ms
   apart), and its CPU seconds per audio second.
3. **real-time pace** (``bench/hits.py``'s stress run, with hits and the anchor): skipped
   hops, hits answered, overflows, hop latency.

Run it alone under the bench lock and report the load average beside it (a CPU-seconds
figure is inflated when other processes share the cores' caches, a real-time run starved).
The last line:
``cpu_per_s_hits=... cpu_per_s_anchor=... offline_detected=... expected=... offline_extra=...
rt_skipped_hops=... rt_anchor_skipped_hops=... rt_hits_answered=... load=...``

Usage: ``python bench/live_load.py`` (~5 minutes).
aiSFX: Ma & Lerch, ISMIR 2022 (MIT code, CC BY 4.0 model).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hits as bench  # bench/hits.py: the stress performance and its runner

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BLOCK_FRAMES = 256  # the ladder's blocks, as the daemon's input delivers them


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def fast_cpu(lib: Path, wav: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    """The daemon at fast pace on ``wav``: CPU seconds per second of audio, from the first
    audio to the end-of-input status (start-up and library loading excluded)."""
    import soundfile as sf

    from emberd.testing.harness import Daemon

    d = Daemon(["--library", str(lib), "--input", str(wav), "--pace", "fast", "--model", "aisfx",
                "--channels", "all", "--k", "5", *extra], work / "daemon-fast.log",
               osc_in=False)  # fmt: skip
    d.start(ready_timeout=300)
    rec = bench.Recorder(d.pub)
    assert d.proc is not None
    cpu0, t0 = process_cpu_s(d.proc.pid), time.perf_counter()
    try:
        rec.final.wait(600)
        cpu1, t1 = process_cpu_s(d.proc.pid), time.perf_counter()
    finally:
        d.stop()
        rec.close()
    audio_s = float(sf.info(wav).duration)
    st = getattr(rec, "status", {})
    return {
        "cpu_per_s": (cpu1 - cpu0) / audio_s,
        "wall_per_s": (t1 - t0) / audio_s,
        "hops": st.get("hops"),
        "skipped_hops": st.get("skipped_hops"),
        "hits": sum(1 for h in rec.hits if h["stage"] == "provisional"),
    }


def ladder_onsets(lib: Path, audio: np.ndarray, sr: int) -> tuple[list[list[float]], float]:
    """The hit ladder on every channel of ``audio`` [n, channels] in this process, in
    BLOCK_FRAMES-sample blocks: its provisional onsets (s) per channel, and its CPU seconds
    per second of audio (all channels)."""
    from emberd.daemon.hits import HitLadder
    from emberd.library import Library
    from emberd.library.hitindex import HitIndex

    channels = list(range(audio.shape[1]))
    seen: list[list[float]] = [[] for _ in channels]
    with Library.open(lib) as library:
        ladder = HitLadder(HitIndex.from_library(library), library.files(), sr=sr,
                           channels=channels, model="offline",
                           time_of=lambda pos: pos / sr)  # fmt: skip
        cpu0 = time.process_time()
        for i in range(0, len(audio), BLOCK_FRAMES):
            for c in channels:
                block = np.ascontiguousarray(audio[i : i + BLOCK_FRAMES, c])
                seen[c] += [r.onset_s for r in ladder.push(c, block) if r.stage == "provisional"]
        for r in ladder.flush():
            if r.stage == "provisional":
                seen[r.channel].append(r.onset_s)
        cpu = time.process_time() - cpu0
    return seen, cpu / (len(audio) / sr)


def match(truth: np.ndarray, seen: list[float]) -> tuple[np.ndarray, int]:
    """Found flags per true onset in ``truth`` (s) and the extra detections: each detection
    in ``seen`` takes the nearest free true onset within bench/hits.py's MATCH_TOLERANCE_S,
    or counts as extra."""
    used = np.zeros(len(truth), bool)
    extra = 0
    for s in sorted(seen):
        free = np.nonzero(~used & (np.abs(truth - s) <= bench.MATCH_TOLERANCE_S))[0]
        if len(free):
            used[free[np.argmin(np.abs(truth[free] - s))]] = True
        else:
            extra += 1
    return used, extra


def offline_detected(lib: Path, audio: np.ndarray, sr: int,
                     onsets: list[list[float]]) -> dict[str, Any]:  # fmt: skip
    """The hit ladder on every channel of ``audio`` [n, channels] (:func:`ladder_onsets`):
    hits detected (:func:`match` against the true onsets ``onsets``), extra detections, and
    the ladder's CPU seconds per second of audio (all channels)."""
    seen, cpu_per_s = ladder_onsets(lib, audio, sr)
    found = extra = 0
    for c, truth in enumerate(onsets):
        used, x = match(np.array(truth), seen[c])
        found, extra = found + int(used.sum()), extra + x
    return {"detected": found, "extra": extra, "expected": sum(len(o) for o in onsets),
            "cpu_per_s": cpu_per_s}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", help="default: bench/hits.py's cached library")
    ap.add_argument("--offline-only", action="store_true",
                    help="only measurement 2 (detection and the ladder's CPU; no daemon)")
    args = ap.parse_args(argv)
    lib = bench.library_path(args.library)
    bench.build_library(lib)
    samples = bench.labelled(bench.TEST_KITS)
    audio, onsets = bench.stress_audio(samples)
    off = offline_detected(lib, audio, bench.SR, onsets)
    print(f"offline ladder: {off['detected']} of {off['expected']} hits detected "
          f"({off['detected'] / off['expected']:.1%}), {off['extra']} extra detections, "
          f"{off['cpu_per_s']:.3f} CPU-s per audio s for {bench.STRESS_CHANNELS} channels, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    if args.offline_only:
        return 0
    work = Path(tempfile.mkdtemp(prefix="emberd-live-load-"))
    rt: dict[str, dict[str, Any]] = {}
    arms = (("hits", []), ("anchor", ["--no-hits"]))
    for name, extra in arms:  # also writes work/stress.wav, the same audio every time
        rt[name] = r = bench.stress(lib, work, "aisfx", samples, extra)
        print(f"real time {name}: hits {r['hits']}/{r['expected']}, skipped hops "
              f"{r['skipped_hops']} of {(r['hops'] or 0) + (r['skipped_hops'] or 0)}, "
              f"overflows {r['overflows']}, hop latency p99 {r['hop_p99_ms']} ms, provisional "
              f"p50 {r['prov_p50']:.1f} / p90 {r['prov_p90']:.1f} ms, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    wav = work / "stress.wav"
    fast = {name: fast_cpu(lib, wav, work, extra) for name, extra in arms}
    for name, f in fast.items():
        print(f"fast pace {name}: {f['cpu_per_s']:.3f} CPU-s per audio s (wall "
              f"{f['wall_per_s']:.2f} s per s), hops {f['hops']}, skipped {f['skipped_hops']}, "
              f"hits {f['hits']}, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    found, expected = off["detected"], off["expected"]
    print(f"cpu_per_s_hits={fast['hits']['cpu_per_s']:.3f} "
          f"cpu_per_s_anchor={fast['anchor']['cpu_per_s']:.3f} offline_detected={found} "
          f"expected={expected} offline_extra={off['extra']} "
          f"rt_skipped_hops={rt['hits']['skipped_hops']} "
          f"rt_anchor_skipped_hops={rt['anchor']['skipped_hops']} "
          f"rt_hits_answered={rt['hits']['hits']} "
          f"load={os.getloadavg()[0]:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
