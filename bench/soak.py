"""Session soak bench: the real set-up at once for 30 minutes (:mod:`emberd.testing.soak`).

JACK dummy capture of a looped 4-channel hydrogen performance with hits, the aiSFX
encoder, hits and matches out over OSC, ZeroMQ and JACK MIDI, ``emberd watch`` and the
panel in headless Chromium, control requests every few seconds and a 300 msg/s OSC
fuzzer; the bare-capture anchor on the same server in the same run. Prints overflows
over the anchor, dropped hops, drops per output, RSS and fds over time, hit accuracy
in the first and last 5 minutes, and the load average (see the module for each figure).

Usage::

    python bench/soak.py --duration 1800 [--model aisfx] [--json out.json]

Not a fine timing bench: run it without the bench lock; the load average is printed.
Exit status 0 when the daemon survived and every client stayed connected, 1 otherwise,
2 when a component (jackd, JACK-Client, chromium) is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emberd.testing import soak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds after warm-up")
    ap.add_argument("--model", default="aisfx")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--loop-s", type=float, default=30.0, help="performance loop length")
    ap.add_argument("--window-s", type=float, default=300.0,
                    help="hit accuracy windows at the start and the end")
    ap.add_argument("--sample-s", type=float, default=10.0, help="RSS/fd/counter sampling")
    ap.add_argument("--fuzz-rate", type=float, default=300.0, help="OSC fuzz messages/s")
    ap.add_argument("--control-s", type=float, default=soak.CONTROL_PERIOD_S)
    ap.add_argument("--period", type=int, default=soak.PERIOD_FRAMES,
                    help="JACK period (frames)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="the daemon's --threads (ONNX Runtime intra-op; default: its own)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    missing = soak.missing_component()
    if missing:
        print(f"soak: component missing: {missing}", file=sys.stderr)
        return 2
    results = soak.run(soak.SoakConfig(
        duration=args.duration, model=args.model, channels=args.channels, loop_s=args.loop_s,
        window_s=args.window_s, sample_s=args.sample_s, fuzz_rate=args.fuzz_rate,
        control_s=args.control_s, period=args.period, seed=args.seed, threads=args.threads,
        progress=lambda line: print(line, flush=True)))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    for k, v in results.items():
        if k not in ("samples", "player_clock", "proc_samples", "control_timeline"):
            print(f"{k:24s} {v}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
