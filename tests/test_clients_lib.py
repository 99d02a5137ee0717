"""Client library against real ZeroMQ sockets and real UDP/OSC datagrams.

Also holds :class:`Publisher`, the XPUB test publisher other client tests import:
XPUB tells us when a subscription has arrived, so no test syncs with sleep.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from emberd.clients import osc_format as fmt
from emberd.clients import wire
from emberd.clients.control_client import ControlClient
from emberd.clients.messages import (
    ConnectionEvent,
    EmbMessage,
    Item,
    LevelMessage,
    MatchMessage,
    SimilarityMessage,
    StatusMessage,
    TagMessage,
    decode_frames,
    to_json,
)
from emberd.clients.osc_client import OscDecoder, OscReceiver
from emberd.clients.subscriber import Subscriber
from emberd.errors import EmberdError

MODEL = "dsp-baseline"
WAIT_S = 10.0  # generous upper bound for anything to arrive on loopback


class Publisher:
    """An XPUB socket on a random loopback port that can wait for subscribers."""

    def __init__(self) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.seq: dict[str, int] = {}

    def wait_subscribed(self, count: int = 1) -> None:
        """Block until ``count`` subscription messages arrived."""
        got = 0
        while got < count:
            assert self.sock.poll(int(WAIT_S * 1000)), "no subscriber showed up"
            frame = self.sock.recv()
            if frame[:1] == b"\x01":
                got += 1

    def send(self, kind: str, channel: int | None = None, seq: int | None = None,
             array: np.ndarray | None = None, **fields: Any) -> None:
        topic = wire.topic_for(kind, channel).decode()
        if seq is None:
            seq = self.seq.get(topic, -1) + 1
        self.seq[topic] = seq
        self.sock.send_multipart(wire.encode(kind, seq=seq, capture_time=time.time() - 0.03,
                                             model=MODEL, channel=channel, array=array, **fields))

    def close(self) -> None:
        self.sock.close(0)


def match_fields(names: list[str], tag: str = "Kicks") -> dict[str, Any]:
    return {"matches": [
        {"path": f"/lib/{tag}/{n}", "name": n, "score": 0.9 - 0.1 * i, "distance": 0.1 + 0.1 * i,
         "segment_start_s": 0.0, "tags": [tag], "kind": "similar"} for i, n in enumerate(names)]}


@pytest.fixture
def pub() -> Iterator[Publisher]:
    p = Publisher()
    yield p
    p.close()


def next_data(sub: Subscriber, timeout_s: float = WAIT_S) -> Item:
    """Next item that is not a waiting/connected event."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        item = sub.recv(timeout_s=0.5)
        if item is None or (isinstance(item, ConnectionEvent) and item.state in
                            ("waiting", "connected")):
            continue
        return item
    raise AssertionError("nothing arrived")


def test_subscriber_yields_every_typed_message(pub: Publisher) -> None:
    with Subscriber(pub.endpoint) as sub:
        assert sub.recv(timeout_s=0) == ConnectionEvent(
            "waiting", f"waiting for daemon at {pub.endpoint}")
        pub.wait_subscribed()
        pub.send("match", 0, **match_fields(["kick 01.wav", "kick 02.wav"]))
        pub.send("tag", 0, tags=[{"tag": "Kicks", "confidence": 0.8},
                                 {"tag": "Snares", "confidence": 0.2}])
        pub.send("emb", 1, array=np.arange(64, dtype=np.float32))
        pub.send("level", 0, rms_db=-12.5, peak_db=-3.0, onset=True)
        pub.send("similarity", channels=[0, 1], array=np.array([[1, 0.5], [0.5, 1]], np.float32))
        pub.send("status", status={"model": MODEL, "provider": "CPUExecutionProvider",
                                   "latency_p50_ms": 30.0, "start_time": 1.0})
        first = sub.recv(timeout_s=WAIT_S)
        assert isinstance(first, ConnectionEvent) and first.state == "connected"
        got = [next_data(sub) for _ in range(6)]
    m, t, e, lv, s, st = got
    assert isinstance(m, MatchMessage) and m.channel == 0
    assert [x.name for x in m.matches] == ["kick 01.wav", "kick 02.wav"]
    assert m.matches[0].score == pytest.approx(0.9) and m.matches[0].tags == ("Kicks",)
    assert m.matches[1].rank == 1 and m.model == MODEL and 0 < m.latency_s < 1
    assert isinstance(t, TagMessage) and t.tags[0].tag == "Kicks"
    assert t.tags[0].confidence == pytest.approx(0.8)
    assert isinstance(e, EmbMessage) and e.channel == 1
    np.testing.assert_array_equal(e.embedding, np.arange(64, dtype=np.float32))
    assert isinstance(lv, LevelMessage) and lv.onset and lv.rms_db == -12.5
    assert isinstance(s, SimilarityMessage) and s.channels == (0, 1)
    assert s.matrix[0, 1] == pytest.approx(0.5)
    assert isinstance(st, StatusMessage) and st.status["provider"] == "CPUExecutionProvider"
    assert to_json(s)["matrix"] == [[1.0, 0.5], [0.5, 1.0]]
    assert to_json(lv)["rms_db"] == -12.5
    nan_status = StatusMessage(seq=0, capture_time=0.0, publish_time=0.0, model="m",
                               status={"p99": float("nan"), "drops": {"osc": float("inf")}})
    assert to_json(nan_status)["status"] == {"p99": None, "drops": {"osc": None}}


def test_subscriber_topic_filter(pub: Publisher) -> None:
    with Subscriber(pub.endpoint, ["tag.1"]) as sub:
        pub.wait_subscribed()
        pub.send("tag", 0, tags=[{"tag": "Kicks", "confidence": 1.0}])
        pub.send("match", 1, **match_fields(["x.wav"]))
        pub.send("tag", 1, tags=[{"tag": "Pads", "confidence": 1.0}])
        item = next_data(sub)
    assert isinstance(item, TagMessage) and item.channel == 1 and item.tags[0].tag == "Pads"


def test_subscriber_detects_restart_gap_and_silence(pub: Publisher) -> None:
    with Subscriber(pub.endpoint, ["match"], silence_s=0.3) as sub:
        pub.wait_subscribed()
        for seq in (5, 6, 9):  # 7 and 8 lost
            pub.send("match", 0, seq=seq, **match_fields(["a.wav"]))
        items = [next_data(sub) for _ in range(3)]
        assert all(isinstance(i, MatchMessage) for i in items)
        assert sub.dropped == 2
        silent = next_data(sub)  # nothing sent any more: the daemon "stopped"
        assert silent == ConnectionEvent("silent", f"no message from {pub.endpoint} for 0.3 s")
        pub.send("match", 0, seq=0, **match_fields(["b.wav"]))  # a new daemon counts from 0
        restarted = next_data(sub)
        assert isinstance(restarted, ConnectionEvent) and restarted.state == "restarted"
        again = next_data(sub)
        assert isinstance(again, MatchMessage) and again.matches[0].name == "b.wav"
        assert sub.restarts == 1 and sub.state == "connected"


def test_subscriber_restart_by_status_start_time(pub: Publisher) -> None:
    with Subscriber(pub.endpoint, ["status"]) as sub:
        pub.wait_subscribed()
        pub.send("status", seq=0, status={"start_time": 100.0})
        pub.send("status", seq=1, status={"start_time": 100.0})
        pub.send("status", seq=7, status={"start_time": 200.0})  # seq grew, process did not
        kinds = [next_data(sub) for _ in range(4)]
    assert [type(k).__name__ for k in kinds] == [
        "StatusMessage", "StatusMessage", "ConnectionEvent", "StatusMessage"]
    assert isinstance(kinds[2], ConnectionEvent) and "start time" in kinds[2].detail


def test_subscriber_reports_a_final_status_as_stopped(pub: Publisher) -> None:
    with Subscriber(pub.endpoint, ["status", "match"]) as sub:
        pub.wait_subscribed(2)
        pub.send("match", 0, seq=3, **match_fields(["a.wav"]))
        pub.send("status", seq=4, status={"start_time": 1.0, "final": True})
        pub.send("match", 0, seq=0, **match_fields(["b.wav"]))
        items = [next_data(sub) for _ in range(5)]
    assert [type(i).__name__ for i in items] == [
        "MatchMessage", "ConnectionEvent", "StatusMessage", "ConnectionEvent", "MatchMessage"]
    assert isinstance(items[1], ConnectionEvent) and items[1].state == "stopped"
    assert isinstance(items[3], ConnectionEvent) and items[3].state == "restarted"


def test_subscriber_counts_malformed_without_raising(pub: Publisher) -> None:
    with Subscriber(pub.endpoint) as sub:
        pub.wait_subscribed()
        pub.sock.send_multipart([b"match.0", b"{not json"])
        pub.sock.send_multipart([b"match.x", b'{"kind":"match","seq":0}'])
        pub.sock.send_multipart([b"emb.0", wire.encode("emb", seq=0, capture_time=0.0,
                                                        model="m", channel=0)[1]])
        pub.send("tag", 0, tags=[{"tag": "ok", "confidence": 1.0}])
        item = next_data(sub)
        assert isinstance(item, TagMessage)
        assert sub.malformed == 3


def test_decode_frames_rejects_bad_match() -> None:
    # A score that is not a number is malformed; an absent one means "not measured".
    frames = wire.encode("match", seq=0, capture_time=0.0, model="m", channel=0,
                         matches=[{"name": "bad score", "score": "high"}])
    with pytest.raises(wire.WireError):
        decode_frames(frames)
    frames = wire.encode("match", seq=0, capture_time=0.0, model="m", channel=0,
                         matches=[{"name": "no score"}])
    msg = decode_frames(frames)
    assert isinstance(msg, MatchMessage) and math.isnan(msg.matches[0].score)


# ----------------------------------------------------------------------- control
def _router(replies: list[bytes | None]) -> tuple[str, threading.Thread, list[dict[str, Any]]]:
    """A ROUTER that answers each request with the next reply (None = drop the request)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    seen: list[dict[str, Any]] = []

    def serve() -> None:
        import json
        try:
            for reply in replies:
                if not sock.poll(int(WAIT_S * 1000)):
                    return
                ident, empty, body = sock.recv_multipart()
                seen.append(json.loads(body))
                if reply is not None:
                    sock.send_multipart([ident, empty, reply])
        finally:
            sock.close(0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{port}", thread, seen


def test_control_client_lazy_pirate_retries_on_a_new_socket() -> None:
    endpoint, thread, seen = _router([None, b'{"ok": true, "status": {"model": "m"}}'])
    with ControlClient(endpoint, timeout=0.3, retries=3) as ctl:
        reply = ctl.status()
        assert reply["status"] == {"model": "m"}
        assert ctl.timeouts == 1
    thread.join(WAIT_S)
    assert seen == [{"cmd": "status"}, {"cmd": "status"}]


def test_control_client_arguments_and_error_replies() -> None:
    endpoint, thread, seen = _router([b'{"ok": true, "k": 7}',
                                      b'{"ok": false, "error": "set_model: unknown model"}',
                                      b"not json"])
    with ControlClient(endpoint, timeout=2.0) as ctl:
        assert ctl.set_k(7)["k"] == 7
        with pytest.raises(EmberdError, match="unknown model"):
            ctl.set_model("nope")
        with pytest.raises(EmberdError, match="not JSON"):
            ctl.request("status")
    thread.join(WAIT_S)
    assert seen[0] == {"cmd": "set_k", "k": 7}
    assert seen[1] == {"cmd": "set_model", "model": "nope"}


def test_control_client_gives_up_with_a_clear_error() -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ControlClient(f"tcp://127.0.0.1:{port}", timeout=0.1, retries=2) as ctl, \
            pytest.raises(EmberdError, match="no reply to 'pause' after 2 tries"):
        ctl.pause()


def test_control_client_rejects_bad_settings() -> None:
    with pytest.raises(EmberdError):
        ControlClient("tcp://127.0.0.1:1", timeout=0)


# ----------------------------------------------------------------------- OSC
def test_osc_receiver_decodes_real_datagrams() -> None:
    times = (42, 1000, 1031)
    start_s = 1_700_000_000
    vec = np.linspace(-1, 1, 512, dtype=np.float32)  # 2 KiB: split into several datagrams
    sim = np.array([[1.0, 0.25], [0.25, 1.0]], np.float32)
    status = {"uptime_s": 1.0, "latency_p50_ms": 31.0, "latency_p99_ms": 40.0,
              "overflows": 0, "channels": 2, "start_s": start_s, "start_ms": 500,
              "provider": "CPUExecutionProvider", "model": MODEL}
    dgrams = [fmt.encode_status(times, status)]
    dgrams += [fmt.encode_match(times, channel=1, rank=r, score=0.9 - r / 10, name=f"s{r}.wav",
                                path=f"/lib/Snares/s{r}.wav") for r in (0, 1, 2)]
    dgrams.append(fmt.encode_tags(times, channel=1, tags=[("Snares", 0.75), ("Kicks", 0.25)]))
    dgrams.append(fmt.encode_level(times, channel=1, rms_db=-20.0, peak_db=-6.0, onset=True))
    dgrams += fmt.encode_embedding(times, channel=1, vector=vec)
    dgrams += [fmt.encode_floats(fmt.ADDR_SIMILARITY, "iiiii", [*times, row, 2], sim[row])
               for row in (0, 1)]
    dgrams.append(b"\x00garbage")
    assert len(fmt.encode_embedding(times, channel=1, vector=vec)) > 1
    with OscReceiver() as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for d in dgrams:
            tx.sendto(d, ("127.0.0.1", rx.port))
        got: dict[str, Any] = {}
        end = time.monotonic() + WAIT_S
        while len(got) < 6 and time.monotonic() < end:
            item = rx.recv(timeout_s=0.5)
            if item is not None:
                got[type(item).__name__] = item
        assert rx.decoder.malformed == 1
    st, m = got["StatusMessage"], got["MatchMessage"]
    assert st.status["provider"] == "CPUExecutionProvider" and st.model == MODEL
    assert [x.name for x in m.matches] == ["s0.wav", "s1.wav", "s2.wav"] and m.channel == 1
    assert m.matches[2].path == "/lib/Snares/s2.wav"
    assert m.capture_time == pytest.approx(start_s + 0.5 + 1.0)  # start + 1000 ms
    assert got["TagMessage"].tags[0].tag == "Snares"
    assert got["LevelMessage"].onset and got["LevelMessage"].peak_db == -6.0
    np.testing.assert_array_equal(got["EmbMessage"].embedding, vec)
    np.testing.assert_allclose(got["SimilarityMessage"].matrix, sim)


def test_osc_decoder_groups_matches_by_hop_and_sees_restarts() -> None:
    dec = OscDecoder()
    out = []
    for seq in (1, 2):
        for r in (0, 1):
            out += dec.feed(fmt.encode_match((seq, 0, 0), channel=0, rank=r, score=0.5,
                                             name=f"{seq}-{r}", path="p"), now=0.0)
    assert len(out) == 1 and [m.name for m in out[0].matches] == ["1-0", "1-1"]
    assert dec.flush(now=0.01, older_than_s=0.05) == []
    (last,) = dec.flush(now=1.0, older_than_s=0.05)
    assert isinstance(last, MatchMessage) and last.seq == 2
    base = {"start_s": 10, "start_ms": 0, "model": "a"}
    dec.feed(fmt.encode_status((0, 0, 0), base))
    items = dec.feed(fmt.encode_status((0, 0, 0), {**base, "start_s": 20}))
    assert isinstance(items[0], ConnectionEvent) and items[0].state == "restarted"
