"""Plug-in sinks: misbehaving sinks beside the built-ins, and the sink path's dispatch cost.

Part 1, isolation (A/B in the same run): the daemon (``emberd run``, a child process,
real-time pace, a looped performance file) runs alternately with

* A: the built-in ZeroMQ publisher + the example NDJSON sink (``examples/ndjson-sink``);
* B: the same + ``test-raising`` (raises on every message) + ``test-blocking`` (sleeps
  2 s in every ``publish``), from ``tests/plugin_pkgs/emberd-test-plugins``;

``--rounds`` times each, interleaved A B A B so drift in the machine's load hits both.
A subscriber records the arrival of every ``match.0``; printed per arm: the hop
interval p50/p99 (pooled over rounds), messages lost by ZeroMQ (seq gaps) and by the
NDJSON sink (hops missing from its file), and the raising/blocking sinks' counters.
Goal: p99(B) within 5 % of p99(A); 0 messages lost by the other sinks.

Part 2, dispatch cost (in process): the time per message of the built-in ZeroMQ sink
(wire framing + ``send``, one connected subscriber draining) against the cost the sink
path adds for one more plug-in sink (handoff put/get of the hop's batch, header copy,
``publish_time`` stamp, the call into a sink that does nothing), over hops of 4
channels with 512-d embeddings, 7 interleaved repetitions (medians, and the ratio of
the fastest runs). Goal: dispatch <= 5 % of ZeroMQ's.

Run under the bench lock: ``flock /tmp/emberd-bench.lock python bench/plugins.py``.
Last line: ``p99_ratio=... lost_zmq=... lost_ndjson=... dispatch_us=... zmq_us=...
dispatch_ratio=...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from emberd.testing import benchkit, plugpkgs, smalllib
from emberd.testing.benchkit import percentile_ms as _p
from emberd.testing.benchkit import report
from emberd.testing.harness import Daemon, HopClock, wait_for

SETTLE_S = 3.0  # after start-up, before the measured window
BLOCK_S = 2.0  # the blocking sink's sleep per message
DISPATCH_HOPS = 2000  # hops pushed through each path in part 2
DISPATCH_CHANNELS = 4
DISPATCH_DIM = 512
DISPATCH_REPEATS = 7  # interleaved repetitions; medians reported


def run_arm(root: Path, lib: Path, perf: Path, *, bad: bool, seconds: float, model: str,
            tag: str) -> dict[str, Any]:  # fmt: skip
    """One daemon run; the match.0 arrivals in its measured window and what was lost."""
    out = root / f"{tag}.ndjson"
    sinks = ["--sink", f"ndjson:path={out},arrays=0,topics=match.0"]
    if bad:
        sinks += ["--sink", "test-raising", "--sink", f"test-blocking:seconds={BLOCK_S:g}"]
    args = smalllib.daemon_args(lib, perf, *sinks, model=model)
    d = Daemon(args, root / f"{tag}.log", osc_in=False).start()
    try:
        clock = HopClock(d.pub, "match.0").start()
        a0, a1 = benchkit.quiet_window(SETTLE_S, seconds)
        clock.stop()
        status = d.status()
    finally:
        d.stop()
    hops_nd = [json.loads(line)["header"]["hop"] for line in out.read_text().splitlines()]
    first, last = (hops_nd[0], hops_nd[-1]) if hops_nd else (0, -1)
    outs = status.get("outputs", {})
    return {
        "intervals": clock.intervals_between(a0, a1),
        "lost_zmq": clock.seq_gaps(),
        "lost_ndjson": (last - first + 1) - len(hops_nd),
        "skipped_hops": status.get("skipped_hops", 0),
        "raising": outs.get("test-raising", {}),
        "blocking": outs.get("test-blocking", {}),
        "zmq_dropped": outs.get("zmq", {}).get("dropped", 0),
        "ndjson_dropped": outs.get("ndjson", {}).get("dropped", 0),
    }


def isolation(rounds: int, seconds: float, model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="emberd-plugins-") as tmp:
        root = Path(tmp)
        prepared = benchkit.prepare(root, per_folder=4, seconds=20.0, model=model)
        if prepared is None:
            raise SystemExit(1)
        lib, perf = prepared
        arms: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        for r in range(rounds):
            for arm in ("A", "B"):
                res = run_arm(root, lib, perf, bad=arm == "B", seconds=seconds, model=model,
                              tag=f"{arm}{r}")  # fmt: skip
                arms[arm].append(res)
                print(f"  round {r} {arm}: p99 {_p(res['intervals'], 99):.2f} ms, "
                      f"lost zmq {res['lost_zmq']} ndjson {res['lost_ndjson']}", flush=True)
    out: dict[str, Any] = {}
    for arm, runs in arms.items():
        iv = np.concatenate([r["intervals"] for r in runs])
        out[f"{arm}_hops"] = int(iv.size)
        out[f"{arm}_interval_p50_ms"] = round(_p(iv, 50), 3)
        out[f"{arm}_interval_p99_ms"] = round(_p(iv, 99), 3)
        out[f"{arm}_lost_zmq"] = sum(r["lost_zmq"] for r in runs)
        out[f"{arm}_lost_ndjson"] = sum(r["lost_ndjson"] for r in runs)
        out[f"{arm}_dropped_zmq_ndjson"] = sum(r["zmq_dropped"] + r["ndjson_dropped"]
                                               for r in runs)  # fmt: skip
        out[f"{arm}_skipped_hops"] = sum(r["skipped_hops"] for r in runs)
    out["B_raising_disabled"] = all(r["raising"].get("disabled") for r in arms["B"])
    out["B_raising_errors"] = sum(r["raising"].get("errors", 0) for r in arms["B"])
    out["B_blocking_dropped"] = sum(r["blocking"].get("dropped", 0) for r in arms["B"])
    out["p99_ratio"] = round(out["B_interval_p99_ms"] / out["A_interval_p99_ms"], 4)
    return out


class _Noop:
    def publish(self, topic: str, header: dict[str, Any], array: Any) -> None:
        pass


def dispatch_cost() -> dict[str, Any]:
    """Per-message cost of the ZeroMQ sink vs. the sink path's overhead for one more sink."""
    import zmq

    from emberd import plugins
    from emberd.daemon.analyzers import Analyzers
    from emberd.daemon.handoff import Handoff
    from emberd.daemon.outputs import Batch, Outputs, SinkRunner
    from emberd.daemon.publish_zmq import ZmqSink
    from emberd.daemon.status import DaemonStats
    from emberd.daemon.worker import HopResult

    rng = np.random.default_rng(0)
    stats = DaemonStats(0.0058)
    outputs = Outputs([], Analyzers.load(), stats)
    match = [{"path": f"/lib/Kicks/kick {i:02d}.wav", "name": f"kick {i:02d}", "score": 0.9,
              "distance": 0.1, "tags": ["Kicks"], "kind": "exact"} for i in range(5)]
    batches: list[Batch] = []
    for seq in range(DISPATCH_HOPS):
        emb = rng.standard_normal((DISPATCH_CHANNELS, DISPATCH_DIM)).astype(np.float32)
        hop = HopResult(seq=seq, capture_time=time.time(), stream_s=seq * 0.0232, model="m",
                        channels=list(range(DISPATCH_CHANNELS)), embeddings=emb,
                        matches=[match] * DISPATCH_CHANNELS,
                        levels=[(-20.0, -10.0, False)] * DISPATCH_CHANNELS)  # fmt: skip
        batches.append(outputs.batch(hop))
    n_msgs = sum(len(b.messages) for b in batches)

    # ZeroMQ sink: framing + send, with a subscriber draining on another thread.
    sink = ZmqSink("tcp://127.0.0.1:*")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(sink.endpoint)
    stop = threading.Event()
    received = [0]

    def drain() -> None:  # the SUB socket lives on this thread only
        while not stop.is_set():
            if sub.poll(50):
                sub.recv_multipart()
                received[0] += 1

    t = threading.Thread(target=drain, daemon=True)
    t.start()

    def joined() -> bool:  # PUB drops everything until the subscription has arrived
        sink.publish("status", {"kind": "status", "seq": 0}, None)
        return received[0] > 0

    wait_for(joined, 5.0, what="subscription", interval=0.01)
    info = plugins.PluginInfo(plugins.GROUP_SINKS, "noop", "x:y", "bench", "0")
    runner = SinkRunner("noop", info, {}, stats)
    runner.sink = _Noop()
    zmq_runs, dispatch_runs = [], []
    for _ in range(DISPATCH_REPEATS):  # interleaved: a burst of load hits both alike
        t0 = time.perf_counter()
        for b in batches:
            now = time.time()
            for topic, header, array in b.messages:
                h = header.copy()
                h["publish_time"] = now
                sink.publish(topic, h, array)
        zmq_runs.append((time.perf_counter() - t0) / n_msgs * 1e6)
        # One more plug-in sink: handoff put + get, the runner's delivery to a no-op sink.
        ho: Handoff[Batch] = Handoff(capacity=len(batches) + 1)
        t0 = time.perf_counter()
        for b in batches:
            ho.put(b)
            got = ho.get(0.0)
            assert got is not None
            runner._deliver(got)
        dispatch_runs.append((time.perf_counter() - t0) / n_msgs * 1e6)
    stop.set()
    t.join(2)
    sub.close(0)
    sink.close()
    ctx.term()
    zmq_us, dispatch_us = float(np.median(zmq_runs)), float(np.median(dispatch_runs))
    return {
        "messages": n_msgs,
        "zmq_us": round(zmq_us, 3),
        "dispatch_us": round(dispatch_us, 3),
        "zmq_us_min": round(min(zmq_runs), 3),
        "dispatch_us_min": round(min(dispatch_runs), 3),
        "dispatch_ratio": round(dispatch_us / zmq_us, 4),
        "dispatch_ratio_of_minima": round(min(dispatch_runs) / min(zmq_runs), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run")
    ap.add_argument("--model", default=smalllib.FAST_MODEL)
    ap.add_argument("--skip-isolation", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    plugpkgs.install(["emberd-ndjson-sink", "emberd-test-plugins"])
    results: dict[str, Any] = {"model": args.model, "rounds": args.rounds,
                               "seconds": args.seconds}  # fmt: skip
    if not args.skip_isolation:
        results.update(isolation(args.rounds, args.seconds, args.model))
    results.update(dispatch_cost())
    report(results, args.json, width=28)
    print(" ".join(f"{k}={results.get(k)}" for k in (
        "p99_ratio", "A_lost_zmq", "A_lost_ndjson", "B_lost_zmq", "B_lost_ndjson",
        "dispatch_us", "zmq_us", "dispatch_ratio")))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
