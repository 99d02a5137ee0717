"""Control-plane rate limits: a flooding source is refused unparsed, told so, and counted.

Counts only, never timing (``bench/fuzz.py`` measures what the limits buy: the hop
cadence under an unthrottled flood against a quiet anchor in the same run).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from emberd.clients import osc_format as fmt
from emberd.daemon.ratelimit import OSC_BURST, RATE_LIMITED, ZMQ_BURST, RateLimiter
from emberd.testing import smalllib
from emberd.testing.harness import Daemon, wait_for

FLOOD = 3 * max(OSC_BURST, ZMQ_BURST)  # well past one bucket


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("ratelimit")
    lib = smalllib.build_library(base, per_folder=2)
    perf = smalllib.write_performance(base / "perf.wav", seconds=4.0)
    with Daemon(smalllib.daemon_args(lib, perf), base / "daemon.log") as d:
        yield d


def test_token_bucket() -> None:
    rl = RateLimiter(10.0, 3, total_rate=100.0)
    assert [rl.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b", 0.0)  # another source has its own bucket
    assert rl.wait_s("a", 0.0) == pytest.approx(0.1)
    assert rl.allow("a", 0.1) and not rl.allow("a", 0.1)
    assert rl.notice_due("a", 0.1) and not rl.notice_due("a", 0.5) and rl.notice_due("a", 1.2)
    pauses = [rl.pause_s(5.0) for _ in range(11)]
    assert pauses[:10] == [0.0] * 10 and pauses[10] == pytest.approx(0.1)


def _set_k(k: int) -> bytes:
    b = OscMessageBuilder("/emberd/ctl/set_k")
    b.add_arg(k)
    return b.build().dgram


def test_osc_flood_is_refused_told_and_counted(daemon: Daemon) -> None:
    before = daemon.status()
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    flooder.settimeout(10.0)
    target = ("127.0.0.1", daemon.osc_in_port)
    try:
        for _ in range(FLOOD):  # malformed: answered at once (set_k waits for a hop)
            flooder.sendto(b"/emberd/ctl/nonsense", target)
        wait_for(lambda: daemon.status()["rate_limited_osc"] > before["rate_limited_osc"], 30.0,
                 what="rate-limited datagrams counted")
        details = []
        while True:  # replies: errors for the burst, then one "rate limited" notice
            try:
                p = fmt.decode(flooder.recv(65536))
            except TimeoutError:
                break
            if p.address == fmt.ADDR_REPLY:
                details.append(json.loads(p.fields["detail"]))
            if any(RATE_LIMITED in str(d.get("error", "")) for d in details):
                break
        assert any(RATE_LIMITED in str(d.get("error", "")) for d in details), details[-3:]
        # Another sender is not punished for the flooder.
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.settimeout(10.0)
        try:
            other.sendto(_set_k(4), target)
            while (p := fmt.decode(other.recv(65536))).address != fmt.ADDR_REPLY:
                pass
            assert json.loads(p.fields["detail"]) == {"ok": True, "k": 4}
        finally:
            other.close()
    finally:
        flooder.close()
    after = daemon.status()
    limited = after["rate_limited_osc"] - before["rate_limited_osc"]
    assert 0 < limited < FLOOD
    assert after["rejected_osc"] - before["rejected_osc"] >= limited
    assert after["rate_limited"] == after["rate_limited_osc"] + after["rate_limited_control"]


def test_zmq_flood_is_refused_and_counted(daemon: Daemon) -> None:
    import zmq

    before = daemon.status()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.control_endpoint)
    limited = 0
    try:
        for _ in range(FLOOD):
            sock.send(b'{"cmd": "nope"}')  # answered at once (set_k waits for a hop)
            assert sock.poll(10_000), "no reply"
            reply = json.loads(sock.recv())
            assert reply["ok"] is False
            limited += reply["error"].startswith(RATE_LIMITED)
    finally:
        sock.close(0)
    after = daemon.status()
    assert limited > 0
    assert after["rate_limited_control"] - before["rate_limited_control"] >= limited
    assert after["rejected_control"] - before["rejected_control"] >= limited


def test_oversized_requests_are_refused_unparsed(daemon: Daemon) -> None:
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.control_endpoint)
    try:
        reply: dict[str, object] = {}
        for _ in range(50):  # until the bucket of the flood test above has refilled
            sock.send(b'{"cmd": "status", "pad": "' + b"x" * 5000 + b'"}')
            assert sock.poll(10_000)
            reply = json.loads(sock.recv())
            if not str(reply.get("error", "")).startswith(RATE_LIMITED):
                break
        assert reply["ok"] is False and "exceeds 4096" in str(reply["error"]), reply
    finally:
        sock.close(0)
