"""Daemon building blocks: tag vote, level/onset, similarity, handoff, bind policy, channels."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from emberd.daemon.analysis import OnsetDetector, level_db, vote_tags
from emberd.daemon.app import parse_channels
from emberd.daemon.handoff import Handoff
from emberd.daemon.mixdown import centred_similarity
from emberd.daemon.netpolicy import check_listen_host, check_zmq_endpoint, is_loopback
from emberd.dsp.clock import BlockClock
from emberd.errors import EmberdError


def test_tag_vote_weights_by_score() -> None:
    matches = [
        {"score": 0.9, "tags": ["Kicks"]},
        {"score": 0.8, "tags": ["Kicks"]},
        {"score": 0.3, "tags": ["Snares"]},
        {"score": -0.5, "tags": ["Pads"]},  # negative similarity: no vote
    ]
    tags = vote_tags(matches)
    assert [t["tag"] for t in tags] == ["Kicks", "Snares"]
    assert tags[0]["confidence"] == pytest.approx(1.7 / 2.0)
    assert tags[1]["confidence"] == pytest.approx(0.3 / 2.0)


def test_tag_vote_nested_folders_share_weight() -> None:
    tags = vote_tags([{"score": 1.0, "tags": ["Drums", "Kicks"]}, {"score": 1.0, "tags": []}])
    assert {t["tag"]: t["confidence"] for t in tags} == {"Drums": 0.25, "Kicks": 0.25}
    assert sum(t["confidence"] for t in tags) <= 1.0
    assert vote_tags([]) == []
    assert vote_tags([{"score": float("nan"), "tags": ["X"]}]) == []


def test_level_and_onset() -> None:
    rms, peak = level_db(np.full(1000, 0.5, np.float32))
    assert rms == pytest.approx(-6.02, abs=0.01) and peak == pytest.approx(-6.02, abs=0.01)
    assert level_db(np.zeros(10, np.float32))[0] == -120.0
    det = OnsetDetector()
    fired = [det.push(x) for x in [-80, -80, -80, -80, -10, -12, -14, -80, -80, -80, -80, -20]]
    assert fired == [False] * 4 + [True] + [False] * 6 + [True]


def test_similarity_matrix() -> None:
    e = np.array([[1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    sim = centred_similarity(e, None, [False, False, False, True])
    np.testing.assert_allclose(sim[:3, :3], [[1, 1, 0], [1, 1, 0], [0, 0, 1]], atol=1e-6)
    assert np.all(np.isnan(sim[3])) and np.all(np.isnan(sim[:, 3]))  # silent, never 1.00
    assert sim.dtype == np.float32
    # Two sounds sharing a big common part: raw cosine 0.98, centred on that part 0.
    common = np.array([0.0, 0.0, 5.0])
    a, b = np.array([1.0, 0.0, 0.0]) + common, np.array([0.0, 1.0, 0.0]) + common
    centre = (a / np.linalg.norm(a) + b / np.linalg.norm(b)) / 2
    raw = centred_similarity(np.stack([a, b]), None, [False, False])
    centred = centred_similarity(np.stack([a, b]), centre, [False, False])
    assert raw[0, 1] > 0.95 and centred[0, 1] == pytest.approx(-1.0, abs=1e-6)


def test_handoff_drops_oldest_and_counts() -> None:
    h: Handoff[int] = Handoff(capacity=3)
    for i in range(5):
        h.put(i)
    assert h.dropped == 2
    assert [h.get(0.0) for _ in range(3)] == [2, 3, 4]
    assert h.get(0.0) is None
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(h.get(5.0)))
    t.start()
    h.put(9)
    t.join()
    assert got == [9]
    h.close()
    assert h.get(5.0) is None  # closed and empty: returns at once


def test_block_clock_extrapolates_and_measures_intervals() -> None:
    clock = BlockClock(sr=1000, capacity=8)
    for k in range(1, 20):
        clock.mark(k * 10)
    t_last = clock.time_of(190)
    assert clock.time_of(180) == pytest.approx(t_last - 0.01)
    iv = clock.new_intervals()
    assert iv.size == 7  # only the marks still held
    assert clock.new_intervals().size == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost", "[::1]"])
def test_loopback_hosts_accepted(host: str) -> None:
    assert is_loopback(host)
    check_listen_host(host, "--osc-in", listen_any=False)


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5556", "tcp://*:5556", "tcp://10.1.2.3:1"])
def test_non_loopback_refused_without_listen_any(endpoint: str) -> None:
    with pytest.raises(EmberdError, match="--listen-any"):
        check_zmq_endpoint(endpoint, "--zmq-pub", listen_any=False)
    assert check_zmq_endpoint(endpoint, "--zmq-pub", listen_any=True).startswith("tcp://")


def test_zmq_endpoint_forms() -> None:
    assert check_zmq_endpoint("tcp://127.0.0.1:0", "x", listen_any=False) == "tcp://127.0.0.1:*"
    assert check_zmq_endpoint("ipc:///tmp/e", "x", listen_any=False) == "ipc:///tmp/e"
    for bad in ("127.0.0.1:5556", "tcp://127.0.0.1", "udp://127.0.0.1:1", "tcp://127.0.0.1:99999"):
        with pytest.raises(EmberdError):
            check_zmq_endpoint(bad, "--control", listen_any=False)


def test_parse_channels() -> None:
    assert parse_channels("mix", 2) == [-1]
    assert parse_channels("all", 3) == [0, 1, 2]
    assert parse_channels("0,2-4, 2", 8) == [0, 2, 3, 4]
    for bad, n in (("5", 2), ("3-1", 8), ("a", 2), ("", 2)):
        with pytest.raises(EmberdError, match="--channels"):
            parse_channels(bad, n)


def test_lossless_handoff_waits_instead_of_dropping() -> None:
    h: Handoff[int] = Handoff(capacity=2, lossless=True)
    got: list[int] = []

    def consume() -> None:
        while len(got) < 50:
            item = h.get(5.0)
            if item is not None:
                got.append(item)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(50):
        h.put(i)  # blocks while the consumer is 2 behind
    t.join()
    assert got == list(range(50)) and h.dropped == 0


def test_osc_publisher_wekinator_and_projection() -> None:
    """The OSC publisher alone: /wek/inputs and /emberd/proj are fixed functions of the
    embedding (same vector -> same floats), within (-1, 1), sized as asked."""
    import socket

    from emberd.clients import osc_format as fmt
    from emberd.daemon.analyzers import Analyzers
    from emberd.daemon.outputs import Outputs, start_sinks
    from emberd.daemon.status import DaemonStats
    from emberd.daemon.worker import EndOfStream, HopResult

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    addr = "{}:{}".format(*rx.getsockname())
    stats = DaemonStats(0.0058)
    options = {"targets": addr, "proj_dims": "6", "wekinator": addr, "wekinator_dims": "12",
               "embedding": "0"}  # fmt: skip
    runners = start_sinks([("osc", options)], stats, lossless=True)
    outputs = Outputs(runners, Analyzers.load(), stats)
    emb = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    for seq in range(2):
        outputs.put(HopResult(seq=seq, capture_time=0.0, stream_s=0.0, model="m", channels=[0],
                              embeddings=emb, matches=[[]],
                              levels=[(-20.0, -10.0, False)]))  # fmt: skip
    outputs.put(EndOfStream())
    got: dict[str, list[tuple[float, ...]]] = {}
    while sum(len(v) for v in got.values()) < 9:  # tags, level, proj, wek per hop; status
        p = fmt.decode(rx.recv(65536))
        got.setdefault(p.address, []).append(p.tail)
    runners[0].join(10)
    rx.close()
    wek, proj = got[fmt.ADDR_WEKINATOR], got[fmt.ADDR_PROJ]
    assert len(wek) == 2 and len(wek[0]) == 12 and wek[0] == wek[1]
    assert len(proj[0]) == 6 and all(-1.0 < v < 1.0 for v in proj[0] + wek[0])


def test_loss_reports_are_bounded_and_summed() -> None:
    """Each subscriber's latest count is kept, for the newest MAX_LOSS_REPORTERS only."""
    from emberd.daemon.status import MAX_LOSS_REPORTERS, DaemonStats

    stats = DaemonStats(0.0058)
    stats.report_lost("a", 3)
    stats.report_lost("a", 5)  # a running count: replaces, never adds
    stats.report_lost("b", 1)
    assert stats.snapshot()["subscriber_lost"] == 6
    for i in range(MAX_LOSS_REPORTERS):
        stats.report_lost(f"s{i}", 1)
    by = stats.snapshot()["subscriber_lost_by"]
    assert len(by) == MAX_LOSS_REPORTERS and "a" not in by and "b" not in by
