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

Cadence is reported per phase (OSC storm, ZeroMQ storm); ``--rounds`` repeats
the storm to tell a leak (RSS grows every round) from an allocator plateau
(it grows once); ``--rate`` caps messages per second.

Usage: ``python bench/fuzz.py [--osc 100000] [--zmq 100000] [--rounds 2] [--rate 0]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emberd.testing import benchkit, fuzzdrive, smalllib
from emberd.testing.benchkit import MIB, report
from emberd.testing.benchkit import percentile_ms as _p
from emberd.testing.harness import Daemon, HopClock, RssSampler

SETTLE_S = 5.0  # after start-up, before the anchor window (ONNX warm-up, allocator)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--osc", type=int, default=100_000, help="malformed OSC datagrams per round")
    ap.add_argument("--zmq", type=int, default=100_000, help="malformed requests per round")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="messages/s cap per transport (0: as fast as the daemon answers)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the storm; RSS after each round tells a leak from a plateau")
    ap.add_argument("--anchor-s", type=float, default=30.0, help="quiet window before fuzzing")
    ap.add_argument("--settle-s", type=float, default=10.0, help="quiet window after each round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    results: dict[str, object] = {"rate_cap_per_s": args.rate}
    ok = True
    with tempfile.TemporaryDirectory(prefix="emberd-fuzz-") as tmp:
        root = Path(tmp)
        prepared = benchkit.prepare(root, per_folder=4, seconds=20.0)
        if prepared is None:
            return 1
        lib, perf = prepared
        daemon = Daemon(smalllib.daemon_args(lib, perf), root / "daemon.log")
        with daemon:
            clock = HopClock(daemon.pub, "emb.0").start()
            rss = RssSampler(daemon.pid, period=0.25).start()
            a0, a1 = benchkit.quiet_window(SETTLE_S, args.anchor_s)
            anchor = clock.intervals_between(a0, a1)
            rss_anchor = float(np.median([r for t, r in rss.samples if a1 - 5.0 <= t <= a1]))
            results.update({
                "interval_p50_ms_anchor": round(_p(anchor, 50), 2),
                "interval_p99_ms_anchor": round(_p(anchor, 99), 2),
                "rss_anchor_mib": round(rss_anchor / MIB, 1),
            })
            print(f"anchor window {a1 - a0:.1f} s: p99 {_p(anchor, 99):.2f} ms", flush=True)
            for r in range(1, args.rounds + 1):
                o0 = time.monotonic()
                osc = fuzzdrive.fuzz_osc(daemon, args.osc, seed=args.seed + 2 * r,
                                         rate=args.rate)
                o1 = time.monotonic()
                zmq_res = fuzzdrive.fuzz_zmq(daemon, args.zmq, seed=args.seed + 2 * r + 1,
                                             rate=args.rate)
                z1 = time.monotonic()
                time.sleep(args.settle_s)
                s1 = time.monotonic()
                rss_after = float(np.median([x for t, x in rss.samples if s1 - 5.0 <= t <= s1]))
                osc_iv, zmq_iv = clock.intervals_between(o0, o1), clock.intervals_between(o1, z1)
                ok &= (osc.counted + osc.kernel_drops == osc.sent and zmq_res.counted ==
                       zmq_res.sent and not zmq_res.bad_replies and daemon.alive())
                results[f"round{r}"] = {
                    "osc_sent": osc.sent, "osc_counted": osc.counted,
                    "osc_kernel_drops": osc.kernel_drops,
                    "osc_per_s": round(osc.sent / max(osc.seconds, 1e-9)),
                    "zmq_sent": zmq_res.sent, "zmq_counted": zmq_res.counted,
                    "zmq_bad_replies": len(zmq_res.bad_replies),
                    "zmq_per_s": round(zmq_res.sent / max(zmq_res.seconds, 1e-9)),
                    "interval_p99_ms_osc_phase": round(_p(osc_iv, 99), 2),
                    "interval_p99_ms_zmq_phase": round(_p(zmq_iv, 99), 2),
                    "p99_ratio_osc": round(_p(osc_iv, 99) / _p(anchor, 99), 3),
                    "p99_ratio_zmq": round(_p(zmq_iv, 99) / _p(anchor, 99), 3),
                    "rss_growth_mib_since_anchor": round((rss_after - rss_anchor) / MIB, 2),
                }
                print(f"round {r}: {results[f'round{r}']}", flush=True)
            status = daemon.status()
            results.update({
                "alive": daemon.alive(),
                "seq_gaps": clock.seq_gaps(),
                "status_rejected": status.get("rejected"),
                "status_dropped_hops": status.get("dropped_hops"),
                "status_skipped_hops": status.get("skipped_hops"),
                "status_overflows": status.get("overflows"),
                "rss_peak_mib": round(rss.peak / MIB, 1),
            })
            clock.stop()
            rss.stop()
    report(results, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
