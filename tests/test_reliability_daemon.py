"""Daemon faults: stalled subscribers, dead OSC targets, SIGTERM/SIGINT shutdown.

No timing assertions: memory is asserted (bounded growth, via psutil), counts
are asserted (hops keep coming, a reading subscriber keeps receiving), and the
shutdown is asserted by its effects (exit code, ports free again, no
traceback, no temporary files left). ``bench/stall.py`` measures the cadence
and the exit time.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from emberd.testing import smalllib
from emberd.testing.harness import Daemon, HopClock, RssSampler, wait_for
from emberd.testing.stalled import StalledSubscribers, dead_osc_targets

STALL_TEST_S = 20.0  # stalled subscribers connected this long
RSS_GROWTH_LIMIT_MIB = 20.0  # issue 7: < 20 MiB while stalled
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smalllib.build_library(tmp_path_factory.mktemp("daemonlib"), per_folder=3)


@pytest.fixture(scope="module")
def perf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smalllib.write_performance(tmp_path_factory.mktemp("perf") / "perf.wav", seconds=8.0)


def test_stalled_subscribers_and_dead_osc_targets(library: Path, perf: Path,
                                                  tmp_path: Path) -> None:
    osc = [a for t in dead_osc_targets() for a in ("--osc", t)]
    with Daemon(smalllib.daemon_args(library, perf, *osc), tmp_path / "daemon.log") as d:
        reader = HopClock(d.pub, "emb.0").start()
        rss = RssSampler(d.pid, period=0.25).start()
        try:
            wait_for(lambda: len(reader.arrivals) > 20, 60, what="hops at the reader")
            with StalledSubscribers(d.pub):
                t0 = time.monotonic()
                n0 = len(reader.arrivals)
                hops0 = int(d.status()["hops"])
                # Let the stalled queues fill; poll the daemon meanwhile (it must answer).
                while time.monotonic() - t0 < STALL_TEST_S:
                    assert d.alive(), d.log_tail()
                    d.status()
                    time.sleep(1.0)
                t1 = time.monotonic()
                st = d.status()
                assert int(st["hops"]) > hops0 + 50, "hops stopped while subscribers stalled"
                assert len(reader.arrivals) > n0 + 50, "the reading subscriber was starved"
                growth = rss.growth_between(t0, t1) / MIB
                assert growth < RSS_GROWTH_LIMIT_MIB, f"RSS grew {growth:.1f} MiB"
                assert isinstance(st.get("publisher_drops"), dict)
        finally:
            reader.stop()
            rss.stop()
        assert "Traceback" not in d.log_tail()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_clean_exit(sig: int, library: Path, perf: Path, tmp_path: Path) -> None:
    lib_files = {p: p.stat().st_size for p in library.rglob("*") if p.is_file()}
    osc = [a for t in dead_osc_targets()[:1] for a in ("--osc", t)]
    d = Daemon(smalllib.daemon_args(library, perf, *osc), tmp_path / "daemon.log")
    d.start()
    try:
        reader = HopClock(d.pub, "emb.0").start()
        wait_for(lambda: len(reader.arrivals) > 5, 60, what="hops before the signal")
        reader.stop()
        d.signal(sig)
        assert d.proc is not None
        rc = d.proc.wait(30)
    finally:
        d.stop()
    log = d.log_tail()
    assert rc in (0, 130 if sig == signal.SIGINT else 0), f"exit {rc}\n{log}"
    assert "Traceback" not in log, log
    # Sockets closed: the ports can be bound again right away.
    assert _port_free(d.pub_port) and _port_free(d.control_port), "a ZeroMQ port is still held"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", d.osc_in_port))
    # Nothing half-written in the library: same files, no temporaries.
    after = {p: p.stat().st_size for p in library.rglob("*") if p.is_file()}
    leftovers = [p for p in after if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert not leftovers, leftovers
    assert set(after) <= set(lib_files) | {p for p in after if p.name.endswith(("-wal", "-shm"))}


def test_osc_capture_flood_keeps_threads_bounded(library: Path, perf: Path,
                                                 tmp_path: Path) -> None:
    """Valid but flooding ``capture`` requests: one helper thread, the rest refused as busy."""
    import psutil
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder("/emberd/ctl/capture")
    builder.add_arg(0.05, "f")
    dgram = builder.build().dgram
    with Daemon(smalllib.daemon_args(library, perf), tmp_path / "daemon.log") as d:
        proc = psutil.Process(d.pid)
        base = proc.num_threads()
        most = base
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(2000):
                s.sendto(dgram, ("127.0.0.1", d.osc_in_port))
                if i % 50 == 0:
                    most = max(most, proc.num_threads())
        wait_for(lambda: d.status()["rejected_osc"] > 0, 30, what="busy captures refused")
        most = max(most, proc.num_threads())
        assert most <= base + 2, f"threads grew from {base} to {most}"
        assert d.alive()
        assert d.request("status")["ok"] is True
