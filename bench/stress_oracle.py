"""What the onset detector finds in the stress performance when the tails are known.

The stress performance (``bench/hits.py``: 4 channels x 16 hits/s of one-shots cut to 0.5 s,
gains -20..0 dB, over a -50 dBFS floor; ``--tune``: the tuning kits) is rebuilt with every
hit's placement, and the onset detector alone (:class:`~emberd.dsp.onset.OnsetDetector`, no
ladder) runs on each channel in BLOCK-sample blocks with an *oracle* of what the hit ladder
would subtract: the true waveforms of the LAST most recent earlier hits, each from DELAY
after its true onset on (as the ladder subtracts an identified sound from the block after
the stage that named it: the provisional answer comes 6-17 ms after the onset). It separates
why hits are missed: the tails nobody subtracts (``--last``), subtraction arriving late
(``--delay-ms``), or what the detector does where something is subtracted
(``--bands-covered 0``: the band functions off there, the detector before 2026-12-02).

Usage: ``python bench/stress_oracle.py [--tune] [--delay-ms D] [--last K]
[--bands-covered 0|1] [--none]`` (``--none``: nothing subtracted). Prints hits found (each
detection matched to a true onset within bench/hits.py's MATCH_TOLERANCE_S) and extra
detections.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hits as bench
import live_load  # the matching of detections to true onsets

from emberd.dsp.onset import OnsetDetector

BLOCK = 256  # samples per push, as bench/live_load.py feeds the ladder


def oracle_onsets(
    audio: np.ndarray,
    plan: list[bench.StressHit],
    waves: list[np.ndarray],
    sr: int,
    *,
    delay_s: float | None,
    last: int,
    bands_covered: bool,
) -> tuple[int, int]:
    """Hits found and extra detections over every channel (``delay_s`` None: nothing known)."""
    found, extra = 0, 0
    for c in range(audio.shape[1]):
        mine = [(h, w) for h, w in zip(plan, waves, strict=True) if h.channel == c]
        det = OnsetDetector(sr=sr, bands_covered=bands_covered)
        seen: list[float] = []
        for a in range(0, len(audio), BLOCK):
            x = audio[a : a + BLOCK, c]
            known = covered = None
            if delay_s is not None:
                due = round(delay_s * sr)
                act = [(h, w) for h, w in mine
                       if round(h.onset_s * sr) + due <= a and h.start + len(w) > a]  # fmt: skip
                if act:
                    known, covered = np.zeros(len(x), np.float32), np.zeros(len(x), bool)
                    for h, w in act[-last:]:
                        seg = bench.window(w, a - h.start, len(x))
                        known += seg
                        covered |= seg != 0.0
            seen += [p / sr for p in det.push(x, known, covered)]
        f, e = live_load.match(np.array([h.onset_s for h, _ in mine]), seen)
        found, extra = found + int(f.sum()), extra + e
    return found, extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="the tuning kits (choose settings here)")
    ap.add_argument("--delay-ms", type=float, default=6.0)
    ap.add_argument("--last", type=int, default=8, help="earlier hits subtracted at most")
    ap.add_argument("--bands-covered", type=int, default=1, choices=(0, 1))
    ap.add_argument("--none", action="store_true", help="nothing subtracted")
    args = ap.parse_args(argv)
    plan: list[bench.StressHit] = []
    samples = bench.labelled(bench.TUNE_KITS if args.tune else bench.TEST_KITS)
    audio, _ = bench.stress_audio(samples, plan)
    sr = bench.SR
    cache: dict[str, np.ndarray] = {}
    waves = []
    for h in plan:  # each hit as bench.stress_audio placed it
        if h.path not in cache:
            y = bench.load(h.path)[: int(0.5 * sr)]
            cache[h.path] = y / max(float(np.max(np.abs(y))), 1e-9) * np.float32(0.5)
        waves.append(cache[h.path] * np.float32(10 ** (h.gain_db / 20)))
    delay = None if args.none else args.delay_ms / 1000.0
    found, extra = oracle_onsets(audio, plan, waves, sr, delay_s=delay, last=args.last,
                                 bands_covered=bool(args.bands_covered))  # fmt: skip
    what = "nothing known" if delay is None else f"last {args.last} tails from {args.delay_ms:g} ms"
    print(f"stress oracle ({'tuning' if args.tune else 'test'} kits, {what}, bands where "
          f"covered {args.bands_covered}, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC): "
          f"found {found} of {len(plan)} ({found / len(plan):.1%}), {extra} extra")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
