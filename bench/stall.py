"""Stalled subscribers and dead OSC targets: daemon memory and cadence over time.

The daemon (file input looped at real-time pace, dsp-baseline, small library)
sends OSC to two targets nobody listens on (a closed loopback port and a
TEST-NET-1 address) for the whole run. After a quiet anchor window, two ZeroMQ
subscribers connect, subscribe to everything and never read, for
``--duration`` seconds. A third, reading subscriber measures the cadence of
``emb.0``. Printed: hop interval p50/p99 in the anchor window and while
stalled (and the ratio), RSS at the end of the anchor and the end of the
stall (goal: growth < 20 MiB), messages the reading subscriber missed, the
daemon's drop counters, and the time from SIGTERM to exit.

With ``--jack``, a second part times device faults on a private JACK server
(dummy backend): the server is stopped under the daemon's capture; printed are
the time until status says ``stalled`` (goal: < 1 s), until the daemon
reconnects once the server is back, and from SIGTERM to exit while stalled.

Usage: ``python bench/stall.py [--duration 600] [--anchor-s 30] [--jack]``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emberd.testing import benchkit, smalllib
from emberd.testing.benchkit import MIB, report
from emberd.testing.benchkit import percentile_ms as _p
from emberd.testing.harness import (
    Daemon,
    HopClock,
    RssSampler,
    jack_available,
    start_jackd,
    stop_process,
    wait_for,
)
from emberd.testing.stalled import StalledSubscribers, dead_osc_targets

SETTLE_S = 5.0  # after start-up, before the anchor window
REPORT_EVERY_S = 60.0  # progress line period


def jack_fault_timing(root: Path) -> dict[str, object]:
    """Stop the JACK server under the daemon; time detection, reconnection and exit."""
    import uuid

    server = f"emberd-bench-{uuid.uuid4().hex[:8]}"
    jackd = start_jackd(server, log_path=root / "jackd.log")
    env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    d = Daemon(["--library", str(root / "lib"), "--model", smalllib.FAST_MODEL,
                "--input", "default"], root / "daemon-jack.log", env=env, osc_in=False)
    out: dict[str, object] = {}
    try:
        d.start()
        wait_for(lambda: d.status()["hops"] > 50, 60, what="hops from JACK")
        t0 = time.monotonic()
        stop_process(jackd, signal.SIGTERM)
        t_stop = time.monotonic()
        wait_for(lambda: d.status(timeout=1.0)["input_state"] != "running", 30,
                 what="stall", interval=0.01)
        out["jack_stall_detect_s"] = round(time.monotonic() - t_stop, 3)
        out["jack_stop_call_s"] = round(t_stop - t0, 3)
        t1 = time.monotonic()
        jackd = start_jackd(server, log_path=root / "jackd2.log")
        t_up = time.monotonic()
        wait_for(lambda: d.status(timeout=1.0)["input_reconnects"] >= 1, 60, what="reconnect",
                 interval=0.01)
        out["jack_restart_s"] = round(t_up - t1, 3)
        out["jack_reconnect_after_server_up_s"] = round(time.monotonic() - t_up, 3)
        stop_process(jackd, signal.SIGTERM)
        wait_for(lambda: d.status(timeout=1.0)["input_state"] != "running", 30, what="stall 2",
                 interval=0.01)
        t2 = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.proc is not None
        out["jack_sigterm_exit_code_while_stalled"] = d.proc.wait(30)
        out["jack_sigterm_exit_s_while_stalled"] = round(time.monotonic() - t2, 3)
    finally:
        d.stop()
        if jackd.poll() is None:
            stop_process(jackd, signal.SIGTERM)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of stalled subscribers")
    ap.add_argument("--anchor-s", type=float, default=30.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--jack", action="store_true", help="also time JACK server faults")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="emberd-stall-") as tmp:
        root = Path(tmp)
        prepared = benchkit.prepare(root, per_folder=4, seconds=20.0)
        if prepared is None:
            return 1
        lib, perf = prepared
        osc_args = [a for t in dead_osc_targets() for a in ("--osc", t)]
        daemon = Daemon(smalllib.daemon_args(lib, perf, *osc_args), root / "daemon.log")
        daemon.start()
        try:
            clock = HopClock(daemon.pub, "emb.0").start()
            rss = RssSampler(daemon.pid, period=1.0).start()
            a0, a1 = benchkit.quiet_window(SETTLE_S, args.anchor_s)
            with StalledSubscribers(daemon.pub):
                end = a1 + args.duration
                next_report = a1 + REPORT_EVERY_S
                while (now := time.monotonic()) < end:
                    time.sleep(min(1.0, end - now))
                    if time.monotonic() >= next_report:
                        next_report += REPORT_EVERY_S
                        print(f"  {time.monotonic() - a1:6.0f} s  rss "
                              f"{rss.samples[-1][1] / MIB:7.1f} MiB", flush=True)
                s1 = time.monotonic()
                status = daemon.status()
                alive = daemon.alive()
            clock.stop()
            rss.stop()
            t_term = time.monotonic()
            daemon.signal(signal.SIGTERM)
            assert daemon.proc is not None
            rc = daemon.proc.wait(30)
            exit_s = time.monotonic() - t_term
        finally:
            daemon.stop()
        anchor = clock.intervals_between(a0, a1)
        stalled = clock.intervals_between(a1, s1)
        rss_anchor = [r for t, r in rss.samples if a1 - 10.0 <= t <= a1]
        rss_end = [r for t, r in rss.samples if s1 - 10.0 <= t <= s1]
        results = {
            "alive": alive,
            "stall_seconds": round(s1 - a1, 1),
            "interval_p50_ms_anchor": round(_p(anchor, 50), 2),
            "interval_p99_ms_anchor": round(_p(anchor, 99), 2),
            "interval_p50_ms_stalled": round(_p(stalled, 50), 2),
            "interval_p99_ms_stalled": round(_p(stalled, 99), 2),
            "p99_ratio": round(_p(stalled, 99) / _p(anchor, 99), 3),
            "rss_anchor_mib": round(float(np.median(rss_anchor)) / MIB, 1),
            "rss_growth_mib": round(float(np.median(rss_end) - np.median(rss_anchor)) / MIB, 2),
            "rss_peak_mib": round(rss.peak / MIB, 1),
            "reader_seq_gaps": clock.seq_gaps(),
            "publisher_drops": status.get("publisher_drops"),
            "dropped_hops": status.get("dropped_hops"),
            "overflows": status.get("overflows"),
            "sigterm_exit_code": rc,
            "sigterm_exit_s": round(exit_s, 3),
        }
        if args.jack and jack_available():
            results.update(jack_fault_timing(root))
    report(results, args.json)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
