"""Process-level helpers for reliability tests and benches: run the daemon, watch it, poll.

* :class:`Daemon` starts ``emberd run`` as a child process on free loopback
  ports, with its output in a log file (never an unread pipe: a daemon
  that logs a line per malformed datagram would block on a full pipe);
* :func:`wait_for` polls a condition (tests never synchronise with ``sleep``);
* :class:`RssSampler` records a process's resident memory in a thread;
* :class:`HopClock` subscribes to a topic and records message arrival times,
  for the hop cadence (interval p50/p99);
* :func:`udp_drops` reads the kernel's per-socket drop counter, so a test
  can tell datagrams the daemon never saw from ones it failed to count;
* :func:`start_jackd` starts a private JACK server (dummy backend) under a
  unique server name, which a test may kill without disturbing others;
* :class:`JackPlayer` plays a buffer (once or looped, one or more channels) into
  the capture ports of a JACK server and records when its first sample went out on
  both clocks (Unix time and the JACK frame clock); :class:`MidiRecorder` records
  every MIDI event on a JACK MIDI input port with its frame time;
  :class:`PlayerProcess` runs both in a child process (its own interpreter: a
  JACK process callback must not wait for the GIL of a busy test or bench);
* :class:`BareCapture` is the bare-capture anchor: a child process that captures
  the same JACK ports through PortAudio and does nothing else, counting overflows;
* :func:`chromium_driver` opens headless Chromium through chromedriver.

Threads: JackPlayer and MidiRecorder callbacks run on JACK's process thread;
they write ``pos``, ``loops``, ``onset_time``, ``onset_frame`` and ``events``, read by
the owning thread (the GIL makes each attribute write atomic; ``events`` is
guarded by a lock).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

DEFAULT_START_TIMEOUT_S = 60.0  # model load + library open on a busy 2-core machine
POLL_INTERVAL_S = 0.05  # condition polling period
RSS_PERIOD_S = 0.5  # RSS sampling period
LOG_TAIL_BYTES = 4000  # how much of the daemon log an assertion message shows


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free on 127.0.0.1 a moment ago (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    *,
    what: str = "condition",
    interval: float = POLL_INTERVAL_S,
) -> T:
    """Poll ``check`` until it returns something truthy; return it.

    Raises
    ------
    TimeoutError
        If ``timeout`` seconds pass first (the message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


class RssSampler:
    """Sample a process's RSS every ``period`` seconds in a daemon thread.

    Attributes
    ----------
    samples : list of (float, int)
        ``(monotonic time, rss bytes)``.
    """

    def __init__(self, pid: int, period: float = RSS_PERIOD_S) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            except Exception:  # the process ended: stop sampling
                return
            self._stop.wait(self.period)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def growth_between(self, t0: float, t1: float) -> int:
        """Median RSS in the last 10 % of ``[t0, t1]`` minus median in its first 10 %."""
        span = max(t1 - t0, 1e-9)
        head = [r for t, r in self.samples if t0 <= t <= t0 + 0.1 * span]
        tail = [r for t, r in self.samples if t1 - 0.1 * span <= t <= t1]
        if not head or not tail:
            return 0
        return int(np.median(tail) - np.median(head))

    @property
    def peak(self) -> int:
        return max((r for _, r in self.samples), default=0)


class HopClock:
    """Record arrival times of ZeroMQ messages on ``topic`` from ``endpoint`` (a thread).

    Attributes
    ----------
    arrivals : list of float
        ``time.monotonic()`` of each message received.
    seqs : list of int
        The header's ``seq`` of each (gaps mean lost messages).
    """

    def __init__(self, endpoint: str, topic: str) -> None:
        self.endpoint = endpoint
        self.topic = topic
        self.arrivals: list[float] = []
        self.seqs: list[int] = []  # seq of messages whose topic is exactly ``topic``
        self.gaps = 0  # messages missing, summed over every topic received
        self._last_seq: dict[bytes, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hop-clock", daemon=True)

    def _run(self) -> None:
        import json

        import zmq

        ctx: Any = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic.encode("ascii"))
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                frames = sock.recv_multipart()
                self.arrivals.append(time.monotonic())
                with contextlib.suppress(Exception):
                    seq = int(json.loads(frames[1])["seq"])
                    if frames[0] == self.topic.encode("ascii"):
                        self.seqs.append(seq)
                    last = self._last_seq.get(frames[0])
                    if last is not None and seq > last + 1:
                        self.gaps += seq - last - 1
                    self._last_seq[frames[0]] = seq
        finally:
            sock.close(0)

    def start(self) -> HopClock:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def intervals_between(self, t0: float, t1: float) -> np.ndarray:
        """Inter-arrival intervals (s) of messages that arrived in ``[t0, t1]``."""
        times = np.array([t for t in self.arrivals if t0 <= t <= t1])
        return np.diff(times) if times.size > 1 else np.zeros(0)

    def seq_gaps(self) -> int:
        """Messages missing from the per-topic sequences (sum of gaps over all topics)."""
        return self.gaps


def udp_drops(port: int) -> int:
    """Kernel drop count of the UDP socket bound to ``port`` (Linux ``/proc/net/udp``), else 0."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) >= 13 and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    total += int(cols[-1])
    return total


class Daemon:
    """``emberd run`` as a child process on free loopback ports.

    Parameters
    ----------
    args : sequence of str
        Arguments after ``emberd run`` (``--library``, ``--input``, ...).
        ``--zmq``, ``--control`` and ``--osc-in`` are added on free ports
        unless given.
    log_path : Path
        Where the daemon's stdout and stderr go.
    env : dict, optional
        Extra environment variables.
    osc_in : bool
        Add ``--osc-in`` on a free UDP port.
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        osc_in: bool = True,
    ) -> None:
        self.args = list(args)
        self.log_path = Path(log_path)
        # Port 0: the daemon picks free ports and prints them. Choosing "free" ports here
        # races with every ephemeral connect on the machine (a REQ socket polling a port
        # nobody listens on yet can even connect to itself and hold it).
        if "--zmq" not in self.args and "--zmq-pub" not in self.args:
            self.args += ["--zmq", "tcp://127.0.0.1:0"]
        if "--control" not in self.args:
            self.args += ["--control", "tcp://127.0.0.1:0"]
        if osc_in and "--osc-in" not in self.args:
            self.args += ["--osc-in", "127.0.0.1:0"]
        self.pub = self.control_endpoint = ""
        self.pub_port = self.control_port = self.osc_in_port = 0
        self.env = {**os.environ, **(env or {})}
        # Our own status requests the control rate limit refused (each is counted in the
        # daemon's rejected_control like any refused request; a fuzzer subtracts them).
        self.status_refused = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _banner(self) -> bool:
        """Parse the start block (``ZeroMQ PUB ...; control ...`` and ``OSC ... control in
        ...``, see :mod:`emberd.daemon.report`) for the real ports."""
        import re

        with contextlib.suppress(OSError):
            text = self.log_path.read_bytes()[self._log_offset :].decode("utf-8", "replace")
            zmq = re.search(r"ZeroMQ +PUB (\S+); control (\S+)\n", text)
            osc = re.search(r"OSC +out .*; control in (\S+)\n", text)
            if zmq and osc:
                self.pub, self.control_endpoint = zmq.group(1), zmq.group(2)
                self.pub_port = int(self.pub.rsplit(":", 1)[1])
                self.control_port = int(self.control_endpoint.rsplit(":", 1)[1])
                if osc.group(1) != "off":
                    self.osc_in_port = int(osc.group(1).rsplit(":", 1)[1])
                return True
        return False

    def start(self, *, ready_timeout: float = DEFAULT_START_TIMEOUT_S) -> Daemon:
        """Start the process; wait for its start-up line and a ``status`` answer."""
        self._log = open(self.log_path, "ab")
        self._log_offset = self._log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emberd", "run", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )

        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.proc.returncode} during start-up:\n{self.log_tail()}"
                )
            if not self.control_endpoint and not self._banner():
                return None
            return self.try_status(timeout=0.5)

        try:
            wait_for(ready, ready_timeout, what="daemon to answer status")
        except BaseException:
            self.stop()
            raise
        return self

    def request(self, cmd: str, *, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        """One control request (a fresh REQ socket, linger 0); raises TimeoutError."""
        import zmq

        from emberd.clients import wire

        ctx: Any = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.control_endpoint)
            sock.send(wire.encode_request(cmd, **args))
            if not sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"no reply to {cmd!r} within {timeout} s")
            return wire.decode_reply(sock.recv())
        finally:
            sock.close(0)

    def try_status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The status object, or None if the daemon did not answer in time."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.request("status", timeout=timeout)
            except TimeoutError:
                return None
            # Right after a flood the control rate limit refuses a request or two.
            if str(reply.get("error", "")).startswith("rate limited") \
                    and time.monotonic() < deadline:
                self.status_refused += 1
                time.sleep(POLL_INTERVAL_S)
                continue
            status = reply.get("status")
            return status if isinstance(status, dict) else None

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """The status object; raises if the daemon does not answer."""
        st = self.try_status(timeout)
        if st is None:
            raise TimeoutError(f"daemon did not answer status:\n{self.log_tail()}")
        return st

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            data = self.log_path.read_bytes()
            return data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
        return ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def jack_available() -> bool:
    """True when ``jackd`` and ``jack_lsp`` are installed."""
    import shutil

    return bool(shutil.which("jackd") and shutil.which("jack_lsp"))


def start_jackd(
    name: str,
    *,
    rate: int = 44100,
    period: int = 256,
    capture_ports: int = 2,
    real_time: bool = False,
    log_path: Path | None = None,
    timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """Start ``jackd -n NAME --no-realtime -d dummy`` and wait until it answers.

    Clients reach it with ``JACK_DEFAULT_SERVER=NAME`` in their environment.
    ``capture_ports`` is the number of ``system:capture_N`` ports (PortAudio offers
    that many input channels). ``real_time`` sets the dummy backend's cycle to the
    period's duration (its own default, 21.3 ms whatever the period, runs a 1024-frame
    server faster than real time).
    """
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    cycle = ["-w", str(round(period / rate * 1e6))] if real_time else []
    proc = subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", str(rate), "-p", str(period),
         "-C", str(capture_ports), *cycle],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1"}

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"jackd -n {name} exited with {proc.returncode}")
        probe = subprocess.run(["jack_lsp"], env=env, capture_output=True, timeout=10)
        return probe.returncode == 0

    try:
        wait_for(up, timeout, what=f"jackd {name}", interval=0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal ``proc`` (by its own pid) and reap it; SIGKILL if it is still there after 10 s.

    Prefer SIGTERM for jackd: a SIGKILLed JACK2 server leaves its entry in the shared
    registry (``/dev/shm/jack-shm-registry``), and after 8 such entries no JACK server
    starts on the machine ("Too many servers already active").
    """
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class JackPlayer:
    """A JACK client playing a buffer into a server's capture ports, once or looped.

    Parameters
    ----------
    jack : module
        The ``jack`` module (JACK-Client).
    server : str, optional
        Server name (default: ``JACK_DEFAULT_SERVER`` from the environment).
    channels : int
        Output ports; :meth:`play` takes ``(frames, channels)`` (or 1-D for one channel).

    Attributes
    ----------
    onset_time : float or None
        Unix time of the process cycle that carried the buffer's first sample
        (to compare with the daemon's ``capture_time`` / ``onset_time``).
    onset_frame : int or None
        JACK frame time of that cycle (to compare with another JACK client's events).
    loops : int
        Passes completed; ``played`` is set after the first.
    xruns : int
        Xruns the server reported to this client.
    """

    def __init__(
        self, jack: Any, *, server: str | None = None, channels: int = 1,
        name: str = "emberd-player",
    ) -> None:  # fmt: skip
        import uuid

        self.client = jack.Client(f"{name}-{uuid.uuid4().hex[:6]}", servername=server,
                                  no_start_server=True)  # fmt: skip
        self.channels = channels
        self.ports = [self.client.outports.register("out" if channels == 1 else f"out_{i + 1}")
                      for i in range(channels)]  # fmt: skip
        self.port = self.ports[0]
        self.data = np.zeros((0, channels), np.float32)
        self.loop = False
        self.pos = -1  # next frame to play; -1: idle
        self.loops = 0
        self.xruns = 0
        self.onset_time: float | None = None
        self.onset_frame: int | None = None
        self.played = threading.Event()
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()

    def _xrun(self, delay_us: float) -> None:
        self.xruns += 1

    def played_s(self) -> float:
        """Seconds of the data played since :meth:`play` (whole loops included): the
        player's own clock, read from another thread (off by one period at a wrap)."""
        pos, loops = self.pos, self.loops
        return (loops * len(self.data) + max(pos, 0)) / self.client.samplerate

    def _process(self, frames: int) -> None:
        outs = [p.get_array() for p in self.ports]
        for o in outs:
            o[:] = 0.0
        data, pos = self.data, self.pos
        if pos < 0 or pos >= len(data):
            return
        if pos == 0 and self.loops == 0:
            self.onset_time = time.time()  # this cycle carries the first sample
            self.onset_frame = self.client.last_frame_time
        n = min(frames, len(data) - pos)
        for i, o in enumerate(outs):
            o[:n] = data[pos : pos + n, i]
        pos += n
        if pos >= len(data):
            self.loops += 1
            self.played.set()
            pos = -1
            if self.loop:  # wrap: the rest of this cycle comes from the start
                rest = frames - n
                for i, o in enumerate(outs):
                    o[n:] = data[:rest, i]
                pos = rest
        self.pos = pos

    def play(self, data: np.ndarray, *, loop: bool = False) -> None:
        """Start playing ``data`` (float32 ``(frames,)`` or ``(frames, channels)``)."""
        arr = np.asarray(data, np.float32)
        arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
        if arr.shape[1] != self.channels:
            raise ValueError(f"{arr.shape[1]} channels for a {self.channels}-port player")
        self.pos = -1  # idle while the rest changes (the callback reads pos first)
        self.played.clear()
        self.onset_time = self.onset_frame = None
        self.loops = 0
        self.loop = loop
        self.data = np.ascontiguousarray(arr)
        self.pos = 0

    def stop(self) -> None:
        self.pos = -1

    def connect_capture(self) -> list[str]:
        """Connect to every audio input port of other clients (PortAudio capture ports):
        a client's ports in the order of their numbers, channel ``i`` to its ``i``-th port
        (modulo the channels; PortAudio numbers from 0, other clients from 1).
        Returns the ports connected."""
        by_client: dict[str, list[tuple[int, str]]] = {}
        own = self.client.name + ":"
        for p in self.client.get_ports(is_audio=True, is_input=True):
            if p.name.startswith(("system:", own)):
                continue
            m = re.search(r"(\d+)$", p.name)
            by_client.setdefault(p.name.split(":", 1)[0], []).append(
                (int(m.group(1)) if m else 0, p.name))
        done = []
        for ports in by_client.values():
            for i, (_, name) in enumerate(sorted(ports)):
                self.client.connect(self.ports[i % self.channels], name)
                done.append(name)
        return done

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


class MidiRecorder:
    """A JACK client recording every MIDI event on its input port with its frame time."""

    def __init__(self, jack: Any, *, server: str | None = None, name: str = "midi-rec") -> None:
        import uuid

        self.client = jack.Client(f"{name}-{uuid.uuid4().hex[:6]}", servername=server,
                                  no_start_server=True)  # fmt: skip
        self.port = self.client.midi_inports.register("in")
        self.events: list[tuple[int, bytes]] = []
        self.lock = threading.Lock()
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        start = self.client.last_frame_time
        for offset, data in self.port.incoming_midi_events():
            with self.lock:
                self.events.append((start + offset, bytes(data)))

    def notes_on(self) -> list[tuple[int, int, int, int]]:
        """``(frame, status, note, velocity)`` of the note-ons received so far."""
        with self.lock:
            return [(f, d[0], d[1], d[2]) for f, d in self.events if d[0] & 0xF0 == 0x90]

    def notes_off(self) -> list[tuple[int, int]]:
        with self.lock:
            return [(f, d[1]) for f, d in self.events if d[0] & 0xF0 == 0x80]

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def _player_main(argv: list[str]) -> int:
    """Child of :class:`PlayerProcess`: ``SERVER WAV [--loop]`` and stdin commands."""
    import json

    import jack
    import soundfile as sf

    server, wav, loop = argv[0], argv[1], "--loop" in argv
    data, _ = sf.read(wav, dtype="float32", always_2d=True)
    player = JackPlayer(jack, server=server, channels=data.shape[1])
    rec = MidiRecorder(jack, server=server)
    print(f"ready {rec.client.name}:in", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "go":
            ports = player.connect_capture()
            player.play(data, loop=loop)
            wait_for(lambda: player.onset_time is not None, 30.0, what="the first cycle")
            print(json.dumps({"onset_time": player.onset_time, "onset_frame": player.onset_frame,
                              "ports": ports}), flush=True)  # fmt: skip
        elif cmd == "report" or cmd == "stop":
            print(json.dumps({"loops": player.loops, "xruns": player.xruns,
                              "played_s": player.played_s(), "unix": time.time(),
                              "notes_on": len(rec.notes_on()),
                              "notes_off": len(rec.notes_off())}), flush=True)  # fmt: skip
            if cmd == "stop":
                break
    player.close()
    rec.close()
    return 0


class PlayerProcess:
    """A :class:`JackPlayer` (and a :class:`MidiRecorder`) in a child process.

    ``midi_port`` is the recorder's input port (for ``emberd run --midi``); :meth:`go`
    connects the player to every capture port present and starts it; :meth:`report`
    returns ``loops``, ``xruns``, ``notes_on``, ``notes_off``.
    """

    def __init__(self, server: str, wav: Path, *, loop: bool = False) -> None:
        env = {**os.environ, "JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from emberd.testing.harness import "
             "_player_main; sys.exit(_player_main(sys.argv[1:]))", server, str(wav),
             *(["--loop"] if loop else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        first = self._line()
        if not first.startswith("ready "):
            self.close()
            raise RuntimeError(f"the JACK player did not start: {first!r}")
        self.midi_port = first.split(" ", 1)[1]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def _ask(self, cmd: str) -> dict[str, Any]:
        import json

        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self._line()
        if not line:
            raise RuntimeError(f"the JACK player exited ({self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def go(self) -> dict[str, Any]:
        """Connect and play; ``onset_time``, ``onset_frame``, ``ports`` connected."""
        return self._ask("go")

    def report(self) -> dict[str, Any]:
        return self._ask("report")

    def close(self) -> dict[str, Any] | None:
        out = None
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                out = self._ask("stop")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            stop_process(self.proc)  # type: ignore[arg-type]
        return out


_BARE_CAPTURE = """
import json, os, sys, threading, time
import numpy as np
from emberd.daemon.device import DeviceInput
channels, period = int(sys.argv[1]), float(sys.argv[2])
d = DeviceInput(None, sr=44100, channels=channels, block_size=256, capture="thread")
d.start()
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
buf = np.zeros((4096, channels), np.float32)
t0 = next_report = time.time()
while not stop.is_set():
    while d.ring.read(buf):
        pass
    d.arrivals.new_intervals()
    if time.time() >= next_report:
        next_report += period
        print(json.dumps({"t": time.time() - t0, "callbacks": d.callbacks,
                          "overflows": d.input_overflows + d.ring.overflow_frames}), flush=True)
    time.sleep(0.01)
print(json.dumps({"t": time.time() - t0, "callbacks": d.callbacks, "final": True,
                  "overflows": d.input_overflows + d.ring.overflow_frames}), flush=True)
os._exit(0)  # skip PortAudio's exit handler (it can abort on JACK)
"""


class BareCapture:
    """The bare-capture anchor: PortAudio capture of a JACK server and nothing else.

    A child process opens the same device the daemon opens (``channels`` inputs,
    256-frame blocks, 44.1 kHz), drains its ring and reports its overflows (counted as
    the daemon's status counts them: PortAudio-flagged blocks plus ring overflow
    frames) and callbacks every ``period`` seconds; :attr:`samples` holds the reports.
    """

    def __init__(self, server: str, channels: int, *, period: float = 10.0) -> None:
        env = {**os.environ, "JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _BARE_CAPTURE, str(channels),
                                      str(period)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        self.samples: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, name="bare-capture", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import json

        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append({**json.loads(line), "mono": time.monotonic()})

    def overflows(self) -> int:
        return int(self.samples[-1]["overflows"]) if self.samples else 0

    def close(self) -> dict[str, Any] | None:
        """Stop; the last report (``final``: True when the child reported at its end)."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)
        if self.proc.poll() is None:
            stop_process(self.proc)  # type: ignore[arg-type]
        self._thread.join(5)
        return self.samples[-1] if self.samples else None


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chromium_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def chromium_driver(profile: Path) -> Any:
    """Headless Chromium through chromedriver (selenium), with its profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,900",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
