"""Malformed control input: the daemon rejects, counts and survives every message.

A real daemon (``emberd run``, file input at real-time pace, dsp-baseline model)
receives a few thousand malformed OSC datagrams on ``--osc-in`` and malformed
ZeroMQ control requests (see :mod:`emberd.testing.fuzzmsg` for the categories).
The test asserts: no crash, an error reply to each ZeroMQ request, the rejected
counters equal to what was sent, the daemon still answers ``status``, keeps
publishing, and its settings are unchanged. ``bench/fuzz.py`` runs the full
100k volume and measures cadence and memory.

The parsers are also fuzzed in process with hypothesis: they may only raise
their own error types.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emberd.testing import fuzzdrive, smalllib
from emberd.testing.harness import Daemon, wait_for

N_OSC = 2000  # malformed OSC datagrams in CI
N_ZMQ = 2000  # malformed ZeroMQ control requests in CI
# Below the control rate limits (emberd.daemon.ratelimit), so that every message reaches
# the parsers; test_reliability_ratelimit.py floods past them.
FUZZ_RATE_PER_S = 80.0


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smalllib.build_library(tmp_path_factory.mktemp("fuzzlib"), per_folder=3)


@pytest.fixture(scope="module")
def daemon(library: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("fuzzd")
    perf = smalllib.write_performance(root / "perf.wav", seconds=8.0)
    d = Daemon(smalllib.daemon_args(library, perf), root / "daemon.log")
    with d:
        yield d


def _hops(d: Daemon) -> int:
    return int(d.status()["hops"])


def test_osc_fuzz_rejected_and_counted(daemon: Daemon) -> None:
    before = daemon.status()
    res = fuzzdrive.fuzz_osc(daemon, N_OSC, seed=11, rate=FUZZ_RATE_PER_S)
    assert daemon.alive(), daemon.log_tail()
    assert res.sent == N_OSC
    # Every datagram the daemon received was counted as rejected; none was acted on.
    assert res.counted + res.kernel_drops == N_OSC, (res.counted, res.kernel_drops)
    assert res.kernel_drops == 0, "bursts are paced below the socket buffer"
    after = daemon.status()
    assert after["k"] == before["k"] and after["paused"] == before["paused"]
    assert after["model"] == before["model"]
    # Still publishing: hops keep coming.
    h = _hops(daemon)
    wait_for(lambda: _hops(daemon) > h + 5, 30, what="hops after OSC fuzzing")
    assert set(res.categories) == set(fuzzdrive.fuzzmsg.OSC_CATEGORIES)


def test_zmq_fuzz_rejected_and_counted(daemon: Daemon) -> None:
    before = daemon.status()
    res = fuzzdrive.fuzz_zmq(daemon, N_ZMQ, seed=12, rate=FUZZ_RATE_PER_S)
    assert daemon.alive(), daemon.log_tail()
    assert res.bad_replies == []
    assert res.counted == N_ZMQ
    after = daemon.status()
    assert after["k"] == before["k"] and after["paused"] == before["paused"]
    assert after["model"] == before["model"]
    h = _hops(daemon)
    wait_for(lambda: _hops(daemon) > h + 5, 30, what="hops after control fuzzing")
    assert set(res.categories) == set(fuzzdrive.fuzzmsg.ZMQ_CATEGORIES)


def test_status_reports_rejections_and_valid_requests_still_work(daemon: Daemon) -> None:
    st_ = daemon.status()
    assert st_["rejected"] == st_["rejected_control"] + st_["rejected_osc"]
    assert st_["rejected_control"] >= N_ZMQ and st_["rejected_osc"] >= N_OSC
    assert st_["rate_limited"] == 0  # every fuzz message was parsed, none refused unread
    # A valid command after the storm is still obeyed (then undone).
    k = int(st_["k"])
    assert daemon.request("set_k", k=k + 1)["ok"] is True
    wait_for(lambda: int(daemon.status()["k"]) == k + 1, 10, what="k to change")
    assert daemon.request("set_k", k=k)["ok"] is True
    assert "Traceback" not in daemon.log_tail()


# ---------------------------------------------------------------- in-process parser fuzzing


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=3))
def test_decode_request_only_raises_valueerror(frames: list[bytes]) -> None:
    from emberd.daemon.control import decode_request

    try:
        decode_request(frames)
    except ValueError:
        pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values)
def test_decode_request_any_json(value: object) -> None:
    from emberd.daemon.control import decode_request

    try:
        text = json.dumps(value)
    except ValueError:
        return
    assert json.dumps(decode_request([text.encode()])) == text  # valid JSON is never refused


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_parse_control_only_raises_oscformaterror(dgram: bytes) -> None:
    from emberd.clients import osc_format

    logging.disable(logging.WARNING)  # python-osc warns on every unknown type tag
    try:
        osc_format.parse_control(dgram)
    except osc_format.OscFormatError:
        pass
    finally:
        logging.disable(logging.NOTSET)
