"""``emberd run --osc-changes-only``: OSC receivers get a channel's matches only when its
top-1 changes, its tags only when the top tag changes, its levels only on onsets."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest
from test_daemon_e2e import _config, _run_collect

from emberd.clients import osc_format as fmt
from emberd.clients import wire
from emberd.testing import smalllib


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smalllib.build_library(tmp_path_factory.mktemp("osclib"), per_folder=2)


def _osc_run(lib: Path, perf: Path, changes_only: bool) -> tuple[list[fmt.OscPacket], int]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    rx.bind(("127.0.0.1", 0))
    target = f"127.0.0.1:{rx.getsockname()[1]}"
    msgs, _status = _run_collect(_config(lib, perf, osc=[target], osc_changes_only=changes_only))
    rx.setblocking(False)
    packets = []
    while True:
        try:
            packets.append(fmt.decode(rx.recv(65536)))
        except BlockingIOError:
            break
    rx.close()
    return packets, sum(1 for m in msgs if m.kind == wire.KIND_MATCH and m.header["matches"])


def test_osc_changes_only(library: Path, tmp_path: Path) -> None:
    perf = smalllib.write_performance(tmp_path / "perf.wav", seconds=4.0)
    every, hops = _osc_run(library, perf, changes_only=False)
    changes, _ = _osc_run(library, perf, changes_only=True)
    rank0 = [p for p in changes if p.address == fmt.ADDR_MATCH and p.fields["rank"] == 0]
    assert rank0, "no match sent"
    paths = [p.fields["path"] for p in rank0]
    assert all(a != b for a, b in itertools.pairwise(paths)), paths  # changes only
    assert len(rank0) < hops / 4, (len(rank0), hops)  # a sound lasts many hops
    every0 = [p for p in every if p.address == fmt.ADDR_MATCH and p.fields["rank"] == 0]
    assert len(every0) == hops  # without the option: every hop that names something
    assert {p.fields["path"] for p in every0} == set(paths)  # the same answers, fewer times
    tags = [p for p in changes if p.address == fmt.ADDR_TAGS]
    tops = [p.tail[0] for p in tags if p.tail]
    assert tags and all(a != b for a, b in itertools.pairwise(tops)), tops
    levels = [p for p in changes if p.address == fmt.ADDR_LEVEL]
    assert levels and all(p.fields["onset"] for p in levels)
