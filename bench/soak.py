"""Soak: the daemon at full load for a long time; overflows, dropped hops, memory growth.

Load: file input looped at real-time pace (``--channels`` stems, dsp-baseline
by default), 4 ZeroMQ subscribers that read everything, 2 OSC targets that
read and count datagrams, and a control request every second (``status``, and
every 10 s a ``set_k`` that changes k and puts it back). Printed at the end:
duration, hops, overflows, dropped hops, sequence gaps seen by each
subscriber, OSC datagrams received, hop latency p50/p99 (daemon's own
figures), hop interval p99 in the first and last 10 % of the run (ratio),
and RSS after warm-up vs at the end (goal: growth < 10 MiB).

Usage: ``python bench/soak.py --duration 1800 [--channels 1] [--model dsp-baseline]``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from emberd.testing import benchkit, smalllib
from emberd.testing.benchkit import MIB, report
from emberd.testing.benchkit import percentile_ms as _p
from emberd.testing.harness import Daemon, HopClock, RssSampler

WARMUP_S = 20.0  # excluded from the memory baseline (allocator, ONNX arenas)
SUBSCRIBERS = 4
OSC_TARGETS = 2
CONTROL_PERIOD_S = 1.0
SET_K_EVERY = 10  # control periods between set_k round trips
REPORT_EVERY_S = 60.0


class OscCounter:
    """A UDP socket that reads and counts datagrams (a live OSC target)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(65536)
                self.count += 1
            except OSError:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds at full load")
    ap.add_argument("--channels", type=int, default=1, help="input channels (stems)")
    ap.add_argument("--model", default=smalllib.FAST_MODEL)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="emberd-soak-") as tmp:
        root = Path(tmp)
        prepared = benchkit.prepare(root, per_folder=6, seconds=30.0, channels=args.channels,
                                    model=args.model)
        if prepared is None:
            return 1
        lib, perf = prepared
        targets = [OscCounter() for _ in range(OSC_TARGETS)]
        chan = ["--channels", "all"] if args.channels > 1 else []
        osc_args = [a for t in targets for a in ("--osc", f"127.0.0.1:{t.port}")]
        daemon = Daemon(smalllib.daemon_args(lib, perf, *chan, *osc_args, model=args.model),
                        root / "daemon.log")
        with daemon:
            subs = [HopClock(daemon.pub, "emb.0").start()]
            subs += [HopClock(daemon.pub, "").start() for _ in range(SUBSCRIBERS - 1)]
            rss = RssSampler(daemon.pid, period=1.0).start()
            t_start = time.monotonic()
            time.sleep(WARMUP_S)
            t0 = time.monotonic()
            first = daemon.status()
            end = t0 + args.duration
            n = 0
            control_errors = 0
            next_report = t0 + REPORT_EVERY_S
            while (now := time.monotonic()) < end and daemon.alive():
                n += 1
                try:
                    st = daemon.status()
                    if n % SET_K_EVERY == 0:
                        k = int(st["k"])
                        daemon.request("set_k", k=k + 1)
                        daemon.request("set_k", k=k)
                except (TimeoutError, KeyError):
                    control_errors += 1
                if now >= next_report:
                    next_report += REPORT_EVERY_S
                    print(f"  {now - t0:6.0f} s  hops {st.get('hops')}  overflows "
                          f"{st.get('overflows')}  dropped {st.get('dropped_hops')}  rss "
                          f"{rss.samples[-1][1] / MIB:.1f} MiB", flush=True)
                time.sleep(max(0.0, t0 + n * CONTROL_PERIOD_S - time.monotonic()))
            t1 = time.monotonic()
            alive = daemon.alive()
            last = daemon.status()
            for s in subs:
                s.stop()
            rss.stop()
        for t in targets:
            t.stop()
        span = t1 - t0
        head = subs[0].intervals_between(t0, t0 + 0.1 * span)
        tail = subs[0].intervals_between(t1 - 0.1 * span, t1)
        rss_start = [r for t, r in rss.samples if t0 <= t <= t0 + 30.0]
        rss_end = [r for t, r in rss.samples if t1 - 30.0 <= t <= t1]
        results = {
            "alive": alive,
            "duration_s": round(span, 1),
            "setup_s": round(t0 - t_start, 1),
            "channels": args.channels,
            "model": args.model,
            "hops": int(last["hops"]) - int(first["hops"]),
            "overflows": int(last["overflows"]) - int(first["overflows"]),
            "dropped_hops": int(last["dropped_hops"]) - int(first["dropped_hops"]),
            "skipped_hops": int(last.get("skipped_hops", 0)) - int(first.get("skipped_hops", 0)),
            "publisher_drops": last.get("publisher_drops"),
            "subscriber_seq_gaps": [s.seq_gaps() for s in subs],
            "osc_datagrams_received": [t.count for t in targets],
            "control_requests": n,
            "control_errors": control_errors,
            "latency_p50_ms": last.get("latency_p50_ms"),
            "latency_p99_ms": last.get("latency_p99_ms"),
            "inference_ms": last.get("inference_ms"),
            "callback_jitter_ms": last.get("callback_jitter_ms"),
            "interval_p99_ms_first10pct": round(_p(head, 99), 2),
            "interval_p99_ms_last10pct": round(_p(tail, 99), 2),
            "p99_ratio_last_first": round(_p(tail, 99) / _p(head, 99), 3),
            "rss_start_mib": round(float(np.median(rss_start)) / MIB, 1),
            "rss_end_mib": round(float(np.median(rss_end)) / MIB, 1),
            "rss_growth_mib": round(float(np.median(rss_end) - np.median(rss_start)) / MIB, 2),
        }
    report(results, args.json, width=28)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
