"""Capture-to-OSC-packet latency of the live daemon on loopback, and callback jitter.

Runs ``emberd run`` as a child process (CPU, 23.2 ms hop, 256-frame blocks) on the
synthesised performance at real-time pace (``--source synth``, the feeder thread plays
the callback's part) or captured from a private JACK dummy server through PortAudio
(``--source jack``, a real callback; the player is a child process), with 4 OSC
targets and 4 ZeroMQ subscribers
reading everything. For every hop the OSC receivers take the arrival time of the
rank-0 ``/emberd/match`` datagram minus the capture time it carries (the first sample
of the hop's newest audio; integer ms, so +-0.5 ms). The daemon's own status gives the
callback interval jitter, overflows, dropped hops and inference time.

Anchors, measured in this process on the same machine: one bare encoder call on one
window (what the hop has to pay at least) and a bare loopback UDP datagram. Goal
(issue 5): p99 <= hop + 10 ms, zero overflows over 10 minutes
(``--duration 600``).

Usage::

    python bench/latency.py --duration 60 [--model aisfx] [--source jack]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from emberd.clients import osc_format as fmt
from emberd.testing.harness import (
    BareCapture,
    Daemon,
    HopClock,
    jack_available,
    start_jackd,
    stop_process,
)

BLOCK_FRAMES = 256  # frames per callback block
HOP_MS = 23.2  # analysis hop (one aiSFX mel frame)
SUBSCRIBERS = 4  # OSC targets and ZeroMQ subscribers each
GOAL_MARGIN_MS = 10.0  # p99 goal = hop + this
ANCHOR_CALLS = 200  # bare encoder calls for the anchor


def _anchor_encoder_ms(model: str) -> float:
    from emberd.models.registry import resolve_default
    from emberd.models.runtime import Encoder

    man = resolve_default(model)
    enc = Encoder(man, device="cpu", threads=2)
    # A sound, not zeros: an encoder may skip exact silence, which would make the anchor ~free.
    x = np.random.default_rng(0).uniform(0.0, 1.0, (1, man.window_frames, man.n_mels))
    x = x.astype(np.float32)
    times = []
    for _ in range(ANCHOR_CALLS):
        t0 = time.perf_counter()
        enc.embed(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def _anchor_udp_ms() -> float:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    times = []
    for _ in range(500):
        t0 = time.perf_counter()
        a.sendto(b"x" * 200, b.getsockname())
        b.recv(2048)
        times.append(time.perf_counter() - t0)
    a.close()
    b.close()
    return float(np.median(times) * 1000.0)


class OscReceivers:
    """SUBSCRIBERS UDP sockets read by one thread; latency per rank-0 match datagram."""

    def __init__(self, n: int) -> None:
        self.socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.records: list[tuple[float, int]] = []  # (arrival unix s, capture_ms)
        self.datagrams = 0
        self.oversize = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in self.socks]

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self.socks, [], [], 0.2)
            for s in ready:
                while True:
                    try:
                        d = s.recv(65536)
                    except BlockingIOError:
                        break
                    now = time.time()
                    self.datagrams += 1
                    self.oversize += len(d) > fmt.DEFAULT_MAX_DATAGRAM_BYTES
                    if d.startswith(b"/emberd/match\x00"):
                        p = fmt.decode(d)
                        if p.fields["rank"] == 0 and p.fields["channel"] == 0:
                            self.records.append((now, int(p.fields["capture_ms"])))

    def start(self) -> OscReceivers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


PLAYER_SCRIPT = """
import sys, threading, jack, numpy as np, soundfile as sf
audio, _ = sf.read(sys.argv[2], dtype="float32")
audio = np.concatenate([audio, audio[:4096]])  # wrap-around without modulo per cycle
client = jack.Client("emberd-bench-player", servername=sys.argv[1], no_start_server=True)
port = client.outports.register("out")
pos = [0]
@client.set_process_callback
def process(frames):
    p = pos[0]
    port.get_array()[:] = audio[p : p + frames]
    pos[0] = (p + frames) % (audio.size - 4096)
client.activate()
for p in client.get_ports(is_audio=True, is_input=True):
    if not p.name.startswith("system:"):
        client.connect(port, p)
print("playing", flush=True)
threading.Event().wait()
"""


CAPTURE_ONLY_SCRIPT = """
import json, os, sys, time
import numpy as np
from emberd.daemon.device import DeviceInput
d = DeviceInput(None, sr=44100, channels=1, block_size=256, capture="thread")
d.start()
buf = np.zeros((4096, 1), np.float32)
end, ivs = time.time() + float(sys.argv[1]), []
while time.time() < end:
    while d.ring.read(buf):
        pass
    ivs.append(d.arrivals.new_intervals())
    time.sleep(0.01)
dev = np.abs(np.concatenate(ivs) * 1000.0 - 256 / 44.1)
print(json.dumps({"overflows": d.input_overflows, "callbacks": d.callbacks,
                  "jitter_p99_ms": float(np.percentile(dev, 99)),
                  "jitter_max_ms": float(dev.max())}), flush=True)
os._exit(0)  # skip PortAudio's exit handler (it can abort on JACK)
"""


def capture_only_anchor(env: dict[str, str], seconds: float) -> dict[str, float]:
    """Callback jitter and overflows of bare capture (no analysis) on the same server."""
    import json

    out = subprocess.run([sys.executable, "-c", CAPTURE_ONLY_SCRIPT, str(seconds)],
                         env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=seconds + 60)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def jack_xruns(log: str) -> dict[str, int]:
    """Who made the JACK graph late, from jackd's log: cycles the server itself was late
    (``driver``: a delayed wake-up of jackd, i.e. machine load) and, per client and state,
    cycles it had not finished. ``Running``: the client was inside its process callback
    (for PortAudio's client, named ``PortAudio``: the Python callback, e.g. waiting for
    the GIL); ``Triggered``: it had been signalled but not run (its thread not scheduled
    in time, or its input, the player ``emberd-bench-player``, not ready). Each of these
    is one ``input_overflow`` for every PortAudio client of the server."""
    counts: dict[str, int] = {"driver": 0}
    for line in log.splitlines():
        if "JackTimedDriver::Process XRun" in line:
            counts["driver"] += 1
        elif "was not finished" in line and "client = " in line:
            name, _, rest = line.split("client = ", 1)[1].partition(" was not finished")
            key = f"{name} {rest.rpartition('state = ')[2].strip()}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def start_player(server: str, wav: Path) -> subprocess.Popen[str]:
    """Loop ``wav`` into PortAudio's JACK input from a child process (its own GIL)."""
    proc = subprocess.Popen([sys.executable, "-c", PLAYER_SCRIPT, server, str(wav)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "playing":
        raise RuntimeError("bench: the JACK player did not start")
    return proc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (issue: 600)")
    ap.add_argument("--model", default="dsp-baseline", help="encoder (default dsp-baseline)")
    ap.add_argument("--source", choices=("synth", "jack"), default="synth")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds ignored at the start")
    ap.add_argument("--same-run-anchor", action="store_true",
                    help="JACK: also run the bare-capture anchor during the daemon run, on the "
                         "same server (its client, started first, is jackd's `PortAudio`)")
    ap.add_argument("--daemon-arg", action="append", default=[], metavar="ARG",
                    help="extra `emberd run` argument (repeatable), e.g. --daemon-arg=--no-hits")
    args = ap.parse_args(argv)

    from emberd.daemon.demo import build_demo_library
    from emberd.daemon.sounds import performance

    library = build_demo_library(args.model)
    anchor_enc = _anchor_encoder_ms(args.model)
    anchor_udp = _anchor_udp_ms()
    work = Path(tempfile.mkdtemp(prefix="emberd-bench-"))
    rx = OscReceivers(SUBSCRIBERS).start()
    osc = [a for t in rx.targets for a in ("--osc", t)]
    env: dict[str, str] = {}
    jackd: subprocess.Popen[bytes] | None = None
    player: subprocess.Popen[str] | None = None
    daemon_args = ["--library", str(library), "--model", args.model, "--device", "cpu",
                   "--hop-ms", str(HOP_MS), "--k", "5", *osc, *args.daemon_arg]  # fmt: skip
    if args.source == "jack":
        if not jack_available():
            print("bench: jackd not installed", file=sys.stderr)
            return 2
        server = f"emberd-bench-{uuid.uuid4().hex[:6]}"
        jackd = start_jackd(server, rate=44100, period=BLOCK_FRAMES, log_path=work / "jackd.log")
        env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
        daemon_args += ["--input", "default", "--channels", "0"]
    else:
        daemon_args += ["--input", "synth", "--loop"]
    anchor_cap: dict[str, float] | None = None
    anchor_log_end = 0  # jackd.log offset where the anchor's phase ends and the daemon's begins
    if args.source == "jack":  # anchor: the same capture with no daemon at all
        anchor_cap = capture_only_anchor(env, min(60.0, max(10.0, args.duration / 4)))
        anchor_log_end = (work / "jackd.log").stat().st_size
    bare: BareCapture | None = None
    if args.same_run_anchor and args.source == "jack":
        bare = BareCapture(env["JACK_DEFAULT_SERVER"], 1, period=1.0)
        wait_until = time.time() + 30
        while not bare.samples and time.time() < wait_until:
            time.sleep(0.1)
    d = Daemon(daemon_args, work / "daemon.log", env=env, osc_in=False)
    subs: list[HopClock] = []
    log_marks: dict[str, int] = {}  # jackd.log offsets at the measured period's ends
    same_run: dict[str, int] = {}  # overflows of daemon and same-run anchor in that period
    try:
        d.start()
        if args.source == "jack":
            import soundfile as sf

            sf.write(work / "performance.wav", performance(seconds=20.0), 44100)
            player = start_player(env["JACK_DEFAULT_SERVER"], work / "performance.wav")
        subs = [HopClock(d.pub, "").start() for _ in range(SUBSCRIBERS)]
        start_time = float(d.status()["start_time"])
        t_begin = time.time() + args.warmup
        time.sleep(args.warmup)
        if args.source == "jack":
            log_marks["begin"] = (work / "jackd.log").stat().st_size
            same_run["daemon0"] = int(d.status()["overflows"])
            same_run["anchor0"] = bare.overflows() if bare is not None else 0
        time.sleep(args.duration)  # the measurement period itself
        status = d.status()
        if args.source == "jack":
            log_marks["end"] = (work / "jackd.log").stat().st_size
            same_run["daemon1"] = int(status["overflows"])
            same_run["anchor1"] = bare.overflows() if bare is not None else 0
    finally:
        if bare is not None:
            bare.close()
        for s in subs:
            s.stop()
        rc = d.stop()
        rx.stop()
        if player is not None:
            stop_process(player)  # type: ignore[arg-type]
        if jackd is not None:
            stop_process(jackd, signal.SIGTERM)
    lat = np.array([(arr - (start_time + cap / 1000.0)) * 1000.0
                    for arr, cap in rx.records if arr >= t_begin])  # fmt: skip
    if lat.size == 0:
        print(f"bench: no match datagrams received (daemon exit {rc})", file=sys.stderr)
        return 1
    p50, p99, pmax = np.percentile(lat, [50, 99, 100])
    hop_ms = float(status["hop_ms"])
    goal = hop_ms + GOAL_MARGIN_MS
    print(f"emberd latency bench: model {args.model} on {status['provider']}, source "
          f"{args.source}, hop {hop_ms:.1f} ms, {BLOCK_FRAMES}-frame blocks, "
          f"{SUBSCRIBERS} OSC targets + {SUBSCRIBERS} ZeroMQ subscribers, "
          f"{args.duration:g} s measured (+{args.warmup:g} s warm-up), {os.cpu_count()} CPUs")
    print(f"  capture -> OSC packet: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {pmax:.2f} ms "
          f"over {lat.size} packets; goal p99 <= {goal:.1f} ms -> "
          f"{'MET' if p99 <= goal else 'MISSED'} (p99/goal {p99 / goal:.2f})")
    print(f"  processing beyond the hop: p50 {p50 - hop_ms:.2f} ms = "
          f"{(p50 - hop_ms) / anchor_enc:.2f} x anchor encoder call ({anchor_enc:.2f} ms); "
          f"loopback UDP anchor {anchor_udp:.3f} ms")
    print(f"  daemon status: hop latency (last datagram) p50 {status['latency_p50_ms']:.2f} / "
          f"p99 {status['latency_p99_ms']:.2f} ms, inference p50 {status['inference_ms']:.2f} / "
          f"p99 {status['inference_p99_ms']:.2f} ms, worker per hop p50 "
          f"{status['hop_work_ms']:.2f} / p99 {status.get('hop_work_p99_ms', float('nan')):.2f} "
          f"ms, hops {status['hops']}")
    print(f"  capture: {status.get('capture', 'thread')} (pid {status.get('capture_pid')}), "
          f"blocks dropped on the capture pipe {status.get('capture_dropped_blocks', 0)}")
    print(f"  callback interval p50 {status['callback_interval_ms']:.3f} ms, jitter p99 "
          f"{status['callback_jitter_ms']:.3f} ms (last 47 s), max over the run "
          f"{status['callback_jitter_max_run_ms']:.3f} ms; "
          f"overflows {status['overflows']}, dropped hops {status['dropped_hops']}, "
          f"datagrams {rx.datagrams} (over 1200 B: {rx.oversize}), ZeroMQ messages per "
          f"subscriber {[len(s.arrivals) for s in subs]}")
    if anchor_cap is not None:
        secs = min(60.0, max(10.0, args.duration / 4))
        per_min = status["overflows"] / ((args.duration + args.warmup) / 60.0)
        anchor_per_min = anchor_cap["overflows"] / (secs / 60.0)
        ratio = f"{per_min / anchor_per_min:.2f}" if anchor_per_min else "n/a, the anchor had none"
        print(f"  anchor, bare capture on the same server for {secs:g} s (no daemon): "
              f"overflows {anchor_cap['overflows']:g} ({anchor_per_min:.1f}/min; daemon "
              f"{per_min:.1f}/min, ratio {ratio}), jitter p99 "
              f"{anchor_cap['jitter_p99_ms']:.3f} ms, max {anchor_cap['jitter_max_ms']:.3f} ms")
    if args.source == "jack":
        log_bytes = (work / "jackd.log").read_bytes()
        for phase, text in (("anchor alone", log_bytes[:anchor_log_end]),
                            ("daemon start-up", log_bytes[anchor_log_end:log_marks["begin"]]),
                            ("measured", log_bytes[log_marks["begin"]:log_marks["end"]])):
            late = jack_xruns(text.decode(errors="replace"))
            who = ", ".join(f"{k} {v}" for k, v in late.items())
            print(f"  jackd xruns, {phase} phase: {who}")
        print(f"  (jackd.log split at bytes {anchor_log_end}, {log_marks}: {work / 'jackd.log'})")
        d_ov = same_run["daemon1"] - same_run["daemon0"]
        if bare is not None:
            a_ov = same_run["anchor1"] - same_run["anchor0"]
            print(f"  same-run anchor over the measured {args.duration:g} s: daemon overflows "
                  f"{d_ov}, anchor overflows {a_ov} (added {d_ov - a_ov}); PortAudio flags "
                  f"every xrun of the server to every client, so compare the per-client "
                  f"lateness above (anchor = `PortAudio`)")
        else:
            print(f"  daemon overflows over the measured {args.duration:g} s: {d_ov}")
    if "input_state" in status:  # device input: the stall watchdog's view
        print(f"  device input: state {status['input_state']}, stalls "
              f"{status.get('input_stalls')}, reconnects {status.get('input_reconnects')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
