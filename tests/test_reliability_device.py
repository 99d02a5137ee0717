"""Device faults: the sound server dies under the daemon's capture, then comes back.

A private JACK server (dummy backend, unique name) feeds the daemon through
PortAudio. The test stops the server (SIGTERM: a SIGKILLed JACK2 server leaks a
registry slot, see :func:`emberd.testing.harness.stop_process`; PortAudio wedges
the same way either way). The daemon must report ``input_state: stalled`` in
status and ``/emberd/input stalled`` over OSC, keep answering control, reconnect
with backoff once a server of the same name is back (hops flow again), and
still exit cleanly on SIGTERM -- PortAudio's JACK stream cannot even be closed
once its server died (see ``emberd/daemon/reconnect.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from pathlib import Path

import pytest
from conftest import require

from emberd.testing import smalllib
from emberd.testing.harness import Daemon, jack_available, start_jackd, stop_process, wait_for

MODEL = smalllib.FAST_MODEL


class OscInbox:
    """A UDP socket collecting ``/emberd/input`` states (an OSC target)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.states: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        from emberd.clients import osc_format

        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except OSError:
                continue
            try:
                pkt = osc_format.decode(data)
            except osc_format.OscFormatError:
                continue
            if pkt.address == osc_format.ADDR_INPUT:
                self.states.append(str(pkt.fields["state"]))

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smalllib.build_library(tmp_path_factory.mktemp("devlib"), per_folder=2)


def _sigterm_exits_cleanly(d: Daemon) -> None:
    """SIGTERM: the daemon exits 0 within 30 s, with no traceback."""
    d.signal(signal.SIGTERM)
    assert d.proc is not None
    rc = d.proc.wait(30)
    assert rc == 0, d.log_tail()
    assert "Traceback" not in d.log_tail()


def test_server_killed_detected_reported_reconnected(library: Path, tmp_path: Path) -> None:
    require(jack_available(), "jackd (Debian jackd2)")
    server = f"emberd-rel-{uuid.uuid4().hex[:8]}"
    jackd = start_jackd(server, log_path=tmp_path / "jackd.log")
    env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    inbox = OscInbox()
    d = Daemon(["--library", str(library), "--model", MODEL, "--input", "default",
                "--osc", f"127.0.0.1:{inbox.port}"], tmp_path / "daemon.log", env=env)
    try:
        d.start()
        wait_for(lambda: "JACK" in d.status()["input"], 30, what="the JACK device")
        wait_for(lambda: d.status()["hops"] > 20, 30, what="hops from JACK")
        assert d.status()["input_state"] == "running"
        stop_process(jackd, signal.SIGTERM)  # the sound server stops under the daemon
        def stalled() -> dict[str, object] | None:
            st = d.status()
            return st if st["input_state"] != "running" else None

        st = wait_for(stalled, 30, what="the stall to be reported")
        assert st["input_stalls"] >= 1
        wait_for(lambda: "stalled" in inbox.states, 10, what="/emberd/input stalled over OSC")
        assert d.alive()
        # The server comes back under the same name: the daemon reconnects on its own.
        jackd = start_jackd(server, log_path=tmp_path / "jackd2.log")
        wait_for(lambda: d.status()["input_reconnects"] >= 1, 60, what="a reconnection")
        h = d.status()["hops"]
        wait_for(lambda: d.status()["hops"] > h + 20, 30, what="hops after reconnecting")
        assert d.status()["input_state"] == "running"
        # Stop it again and stop the daemon while stalled: it must still exit, cleanly.
        stop_process(jackd, signal.SIGTERM)
        wait_for(lambda: d.status()["input_state"] != "running", 30, what="the second stall")
        _sigterm_exits_cleanly(d)
    finally:
        d.stop()
        inbox.close()
        if jackd.poll() is None:
            stop_process(jackd, signal.SIGTERM)


def test_stall_on_a_live_server_then_exit_is_clean(library: Path, tmp_path: Path) -> None:
    """The server pauses (SIGSTOP, as a starved machine does) and comes back: the daemon
    reconnects, leaving the old stream running (PortAudio's thread still calls it). On
    SIGTERM it must still exit 0: a left-running stream's thread calling into the
    finalising interpreter crashed it with SIGSEGV (found by the session soak)."""
    require(jack_available(), "jackd (Debian jackd2)")
    server = f"emberd-rel-{uuid.uuid4().hex[:8]}"
    jackd = start_jackd(server, log_path=tmp_path / "jackd.log")
    env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    d = Daemon(["--library", str(library), "--model", MODEL, "--input", "default"],
               tmp_path / "daemon.log", env=env, osc_in=False)  # fmt: skip
    try:
        d.start()
        wait_for(lambda: "JACK" in d.status()["input"], 30, what="the JACK device")
        wait_for(lambda: d.status()["hops"] > 20, 30, what="hops from JACK")
        jackd.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: d.status()["input_stalls"] >= 1, 30, what="the stall")
        finally:
            jackd.send_signal(signal.SIGCONT)
        wait_for(lambda: d.status()["input_reconnects"] >= 1, 60, what="a reconnection")
        h = d.status()["hops"]
        wait_for(lambda: d.status()["hops"] > h + 20, 30, what="hops after reconnecting")
        _sigterm_exits_cleanly(d)
    finally:
        d.stop()
        stop_process(jackd, signal.SIGTERM)


def test_capture_child_killed_is_reported_and_restarted(library: Path, tmp_path: Path) -> None:
    """Device capture runs in a child of the daemon (``--capture-in process``):
    status names its pid, which is not the daemon's and whose parent is the daemon. The
    child SIGKILLed: the daemon reports the stall, starts a new child (a new pid) and
    hops flow again."""
    require(jack_available(), "jackd (Debian jackd2)")
    server = f"emberd-rel-{uuid.uuid4().hex[:8]}"
    jackd = start_jackd(server, log_path=tmp_path / "jackd.log")
    env = {"JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    d = Daemon(["--library", str(library), "--model", MODEL, "--input", "default",
                "--capture-in", "process"], tmp_path / "daemon.log", env=env,
               osc_in=False)  # fmt: skip
    try:
        d.start()
        wait_for(lambda: d.status()["hops"] > 20, 30, what="hops from JACK")
        st = d.status()
        assert st["capture"] == "process"
        assert d.proc is not None
        pid = st["capture_pid"]
        assert pid is not None and pid != d.proc.pid
        ppid = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("PPid:"))  # fmt: skip
        assert int(ppid.split()[1]) == d.proc.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: d.status()["input_stalls"] >= 1, 30, what="the dead child reported")
        wait_for(lambda: d.status()["input_reconnects"] >= 1, 60, what="a new capture child")
        st = d.status()
        assert st["capture_pid"] not in (None, pid)
        h = st["hops"]
        wait_for(lambda: d.status()["hops"] > h + 20, 30, what="hops from the new child")
        _sigterm_exits_cleanly(d)
        assert not Path(f"/proc/{st['capture_pid']}").exists() or \
            "zombie" in Path(f"/proc/{st['capture_pid']}/status").read_text()
    finally:
        d.stop()
        stop_process(jackd, signal.SIGTERM)
