"""Fuzz the running daemon's control inputs at full volume; measure cadence and memory.

A real daemon (``emberd run``, file input looped at real-time pace, dsp-baseline,
a small synthetic library) publishes while this script sends ``--osc`` malformed
OSC datagrams to ``--osc-in`` and ``--zmq`` malformed requests to the ZeroMQ
control channel (categories in :mod:`emberd.testing.fuzzmsg`). It prints:

* the hop cadence (interval between ``emb.0`` messages, p50/p99) during a quiet
  anchor window and during the fuzzing, and their ratio (goal: p99 within 10 %);
* the daemon's RSS before and after (goal: growth < 5 MiB);
* sent vs counted rejections per transport (goal: equal), kernel UDP drops,
  and whether the daemon survived.

Usage: ``python bench/fuzz.py [--osc 100000] [--zmq 100000] [--anchor-s 30]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emberd.testing import fuzzdrive, smalllib
from emberd.testing.harness import Daemon, HopClock, RssSampler

MIB = 1024 * 1024
SETTLE_S = 5.0  # after start-up, before the anchor window (ONNX warm-up, allocator)


def _p(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q) * 1000.0) if x.size else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--osc", type=int, default=100_000, help="malformed OSC datagrams")
    ap.add_argument("--zmq", type=int, default=100_000, help="malformed control requests")
    ap.add_argument("--anchor-s", type=float, default=30.0, help="quiet window before fuzzing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="emberd-fuzz-") as tmp:
        root = Path(tmp)
        smalllib.write_sounds(root / "sounds", per_folder=4)
        proc = smalllib.index([root / "sounds"], root / "lib")
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        perf = smalllib.write_performance(root / "perf.wav", seconds=20.0)
        daemon = Daemon(["--library", str(root / "lib"), "--model", smalllib.FAST_MODEL,
                         "--input", str(perf), "--loop", "--pace", "realtime"],
                        root / "daemon.log")
        with daemon:
            clock = HopClock(daemon.pub, "emb.0").start()
            rss = RssSampler(daemon.pid, period=0.25).start()
            time.sleep(SETTLE_S)
            a0 = time.monotonic()
            time.sleep(args.anchor_s)
            a1 = time.monotonic()
            print(f"anchor window {a1 - a0:.1f} s; fuzzing...", flush=True)
            osc = fuzzdrive.fuzz_osc(daemon, args.osc, seed=args.seed,
                                     progress=lambda n: None)
            print(f"  OSC: {osc.sent} sent in {osc.seconds:.1f} s", flush=True)
            zmq_res = fuzzdrive.fuzz_zmq(daemon, args.zmq, seed=args.seed + 1)
            print(f"  ZeroMQ: {zmq_res.sent} sent in {zmq_res.seconds:.1f} s", flush=True)
            f1 = time.monotonic()
            time.sleep(min(10.0, args.anchor_s))  # post window: memory after the storm
            p1 = time.monotonic()
            alive = daemon.alive()
            status = daemon.status()
            clock.stop()
            rss.stop()
        anchor = clock.intervals_between(a0, a1)
        fuzz = clock.intervals_between(a1, f1)
        rss_anchor = [r for t, r in rss.samples if a1 - 5.0 <= t <= a1]
        rss_post = [r for t, r in rss.samples if p1 - 5.0 <= t <= p1]
        growth = (np.median(rss_post) - np.median(rss_anchor)) / MIB
        results = {
            "alive": alive,
            "osc_sent": osc.sent, "osc_counted": osc.counted, "osc_kernel_drops": osc.kernel_drops,
            "zmq_sent": zmq_res.sent, "zmq_counted": zmq_res.counted,
            "zmq_bad_replies": len(zmq_res.bad_replies),
            "osc_seconds": round(osc.seconds, 1), "zmq_seconds": round(zmq_res.seconds, 1),
            "hops_anchor": int(anchor.size), "hops_fuzz": int(fuzz.size),
            "interval_p50_ms_anchor": round(_p(anchor, 50), 2),
            "interval_p99_ms_anchor": round(_p(anchor, 99), 2),
            "interval_p50_ms_fuzz": round(_p(fuzz, 50), 2),
            "interval_p99_ms_fuzz": round(_p(fuzz, 99), 2),
            "p99_ratio": round(_p(fuzz, 99) / _p(anchor, 99), 3),
            "rss_anchor_mib": round(float(np.median(rss_anchor)) / MIB, 1),
            "rss_growth_mib": round(float(growth), 2),
            "seq_gaps": clock.seq_gaps(),
            "status_rejected": status.get("rejected"),
            "status_dropped_hops": status.get("dropped_hops"),
            "status_overflows": status.get("overflows"),
        }
    for key, value in results.items():
        print(f"{key:24s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    ok = (alive and osc.counted + osc.kernel_drops == osc.sent and zmq_res.counted == zmq_res.sent
          and not zmq_res.bad_replies)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
