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
  unique server name, which a test may kill without disturbing others.
"""

from __future__ import annotations

import contextlib
import os
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
    log_path: Path | None = None,
    timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """Start ``jackd -n NAME --no-realtime -d dummy`` and wait until it answers.

    Clients reach it with ``JACK_DEFAULT_SERVER=NAME`` in their environment.
    """
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", str(rate), "-p", str(period)],
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
