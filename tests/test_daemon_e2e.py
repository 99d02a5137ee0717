"""The daemon end to end, in process, with real sockets on random loopback ports.

A small synthetic library is indexed with the real ``emberd index`` (dsp-baseline: no
download). The daemon reads library samples and performances from files at ``fast``
pace (every hop analysed, deterministic) or real-time pace, and the tests read what it
publishes over ZeroMQ and OSC exactly as a client would.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from emberd.clients import osc_format as fmt
from emberd.clients import wire
from emberd.daemon.app import Daemon, DaemonConfig
from emberd.errors import EmberdError
from emberd.testing import smalllib
from emberd.testing.harness import wait_for

MODEL = smalllib.FAST_MODEL
RECV_TIMEOUT_MS = 20000  # generous: a busy 2-core CI machine
MAX_BYTES = 400  # --max-datagram in the OSC test: forces shortened paths and split blobs
LONG_DIR = "a folder with a rather long name " * 6  # 198 characters per path component


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A small indexed library whose files sit under very long folder names."""
    root = tmp_path_factory.mktemp("daemonlib")
    sounds_root = root.joinpath(*[LONG_DIR] * 2, "sounds")  # paths of ~450 bytes
    files = smalllib.write_sounds(sounds_root, per_folder=3)
    lib = root / "lib"
    proc = smalllib.index([sounds_root], lib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return lib, files


def _config(lib: Path, source: Path | str, **kw: Any) -> DaemonConfig:
    base: dict[str, Any] = dict(
        library=lib, input=str(source), pace="fast", model=MODEL, device="cpu",
        zmq_pub="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0", k=3,
    )  # fmt: skip
    base.update(kw)
    return DaemonConfig(**base)


def _sub(ctx: Any, endpoint: str) -> Any:
    import zmq

    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def _run_collect(
    cfg: DaemonConfig, before_input: Callable[[Daemon], None] | None = None
) -> tuple[list[wire.Message], dict[str, Any]]:
    """Run a file through the daemon; every ZeroMQ message until it ends.

    ``before_input`` sees the started daemon before its input starts (e.g. to wrap a part).
    """
    import zmq

    ctx = zmq.Context()
    msgs: list[wire.Message] = []
    daemon = Daemon(cfg).start(start_input=False)
    try:
        assert daemon.pub_endpoint is not None
        if before_input is not None:
            before_input(daemon)
        sub = _sub(ctx, daemon.pub_endpoint)
        # The worker publishes status every second even without audio: the first one
        # proves the subscription is live, so no hop can be missed.
        while True:
            first = wire.decode(sub.recv_multipart())
            if first.kind == wire.KIND_STATUS:
                break
        daemon.start_input()
        while True:  # until the publisher's last word at the end of the file
            msg = wire.decode(sub.recv_multipart())
            if msg.kind == wire.KIND_STATUS and msg.header["status"].get("final"):
                status = msg.header["status"]
                break
            msgs.append(msg)
    finally:
        daemon.close()
        sub.close(0)
        ctx.term()
    return msgs, status


def _padded_copy(src: Path, dest: Path, *, before_s: float, after_s: float) -> float:
    """Write ``src`` with silence around it; return the onset time in seconds."""
    y, sr = sf.read(src, dtype="float32")
    pad0, pad1 = np.zeros(int(before_s * sr), np.float32), np.zeros(int(after_s * sr), np.float32)
    sf.write(dest, np.concatenate([pad0, y, pad1]), sr)
    return pad0.size / sr


@pytest.mark.parametrize("pick", [0, 3, 7, 11], ids=["kick", "snare", "hat", "pad"])
def test_file_input_publishes_the_sample_as_top1(
    library: tuple[Path, list[Path]], pick: int, tmp_path: Path
) -> None:
    lib, files = library
    sample = files[pick]
    played = tmp_path / "played.wav"
    onset = _padded_copy(sample, played, before_s=1.0, after_s=1.0)
    msgs, status = _run_collect(_config(lib, played))
    matches = [m for m in msgs if m.kind == wire.KIND_MATCH]
    assert matches, "no match messages"
    # Audio-time criterion (not wall clock): some hop whose newest audio starts within
    # 1 s after the onset has the sample as its top-1.
    hop_s = status["hop_ms"] / 1000.0
    in_window = [m for m in matches if onset - hop_s <= m.header["stream_s"] <= onset + 1.0]
    tops = [Path(m.header["matches"][0]["path"]) for m in in_window if m.header["matches"]]
    assert sample.resolve() in {p.resolve() for p in tops}, (sample.name, [p.name for p in tops])
    # Fast pace is lossless (the feeder waits, the handoffs wait): every hop of the file is
    # analysed and published, one hop apart in audio time, none skipped, none dropped.
    starts = [m.header["stream_s"] for m in matches if m.channel == 0]
    assert len(starts) == status["hops"] >= sf.info(played).duration / hop_s - 1
    steps = np.diff(starts)[:-2]  # the end of input flushes up to two partial hops
    assert np.allclose(steps, hop_s, atol=1e-3), sorted(set(np.round(steps, 4).tolist()))


@pytest.fixture(scope="module")
def aisfx_library(
    aisfx_manifest_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Path]]:
    """The small library indexed with aiSFX (the session's fetched model, via EMBERD_DATA_DIR)."""
    import os

    data = tmp_path_factory.mktemp("aisfx-data")
    (data / "models").symlink_to(aisfx_manifest_path.parent.parent, target_is_directory=True)
    old = os.environ.get("EMBERD_DATA_DIR")
    os.environ["EMBERD_DATA_DIR"] = str(data)  # this process and the indexer child
    root = tmp_path_factory.mktemp("aisfxlib")
    files = smalllib.write_sounds(root / "sounds", per_folder=3)
    proc = smalllib.index([root / "sounds"], root / "lib", model="aisfx")
    assert proc.returncode == 0, proc.stderr[-2000:]
    yield root / "lib", files
    if old is None:
        os.environ.pop("EMBERD_DATA_DIR", None)
    else:
        os.environ["EMBERD_DATA_DIR"] = old


@pytest.mark.parametrize("encoder", ["windowed", "streaming"])
def test_aisfx_encoders_find_the_sample_and_its_folder(
    aisfx_library: tuple[Path, list[Path]], encoder: str, tmp_path: Path
) -> None:
    """aiSFX, both strategies, on the real model. aiSFX places the synthetic siblings of
    a folder (kicks 15 Hz apart) very close together, so the property checked is the
    product's: within the second after the onset the played file is among the top 3 and
    most hops put a file of its folder first. The streaming encoder (exact edges) has
    no look-ahead, so both are held to the same second."""
    lib, files = aisfx_library
    for pick in (0, 4, 11):  # a kick, a snare, a pad
        sample = files[pick]
        played = tmp_path / f"played{pick}.wav"
        onset = _padded_copy(sample, played, before_s=1.0, after_s=2.0)
        msgs, status = _run_collect(_config(lib, played, model="aisfx", encoder=encoder))
        assert status["model"] == "aisfx" and status["encoder"] == encoder
        hops = [m for m in msgs if m.kind == wire.KIND_MATCH and m.header["matches"]
                and onset <= m.header["stream_s"] <= onset + 1.0]  # fmt: skip
        assert hops, "no hop in the second after the onset"
        top3 = {Path(x["path"]).name for m in hops for x in m.header["matches"][:3]}
        assert sample.name in top3, sorted(top3)
        settled = [m for m in hops if m.header["stream_s"] >= onset + 0.3]
        same_folder = [m for m in settled
                       if m.header["matches"][0]["tags"][-1] == sample.parent.name]  # fmt: skip
        assert len(same_folder) > len(settled) / 2, (sample.name, [
            m.header["matches"][0]["name"] for m in settled])  # fmt: skip


def test_pub_sub_multichannel_and_osc_targets(
    library: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    lib, _files = library
    perf = smalllib.write_performance(tmp_path / "stems.wav", seconds=3.0, channels=3)
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    got: list[list[bytes]] = [[] for _ in receivers]
    for r in receivers:
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        r.bind(("127.0.0.1", 0))
    targets = [f"127.0.0.1:{r.getsockname()[1]}" for r in receivers]
    msgs, status = _run_collect(
        _config(lib, perf, channels="0-2", osc=targets, osc_proj=8, k=4, max_datagram=MAX_BYTES)
    )
    for r, out in zip(receivers, got, strict=True):
        r.setblocking(False)
        while True:
            try:
                out.append(r.recv(65536))
            except BlockingIOError:
                break
        r.close()
    # --- ZeroMQ
    kinds: dict[str, list[wire.Message]] = {}
    for m in msgs:
        kinds.setdefault(m.kind, []).append(m)
    assert {"match", "tag", "level", "emb", "similarity", "status"} <= set(kinds)
    for kind in ("match", "tag", "level", "emb"):
        assert {m.channel for m in kinds[kind]} == {0, 1, 2}, kind
    for ch in range(3):  # per-topic sequence numbers, no gaps on a local socket
        seqs = [m.seq for m in kinds["match"] if m.channel == ch]
        assert seqs == list(range(len(seqs)))
    m0 = kinds["match"][-1]
    assert len(m0.header["matches"]) == 4
    for match in m0.header["matches"]:
        assert Path(match["path"]).is_absolute() and Path(match["path"]).is_file()
        assert {"name", "score", "tags", "distance", "kind"} <= set(match)
    assert m0.publish_time >= m0.capture_time
    emb = kinds["emb"][-1]
    assert emb.array is not None and emb.array.shape == (status["dim"],)
    sim = [m for m in kinds["similarity"] if not m.header["silent"]][-1]
    assert sim.array is not None and sim.array.shape == (3, 3)
    np.testing.assert_allclose(np.diag(sim.array), 1.0, atol=1e-4)
    np.testing.assert_allclose(sim.array, sim.array.T, atol=1e-6)
    assert sim.header["channels"] == [0, 1, 2]
    # Mix-down: rate-limited loudness/class per channel and one masking message.
    assert {"loudness", "class", "masking"} <= set(kinds)
    assert {m.channel for m in kinds["loudness"]} == {0, 1, 2}
    loud = kinds["loudness"][-1]
    assert loud.array is not None and loud.array.shape == (len(loud.header["bands_hz"]),)
    assert len(kinds["loudness"]) <= 3 * (5 * 3.0 + 2)  # 5/s per channel over 3 s of audio
    mask = kinds["masking"][-1]
    assert mask.array is not None and mask.array.shape[:2] == (3, 3)
    tag_msg = kinds["tag"][-1]
    assert sum(t["confidence"] for t in tag_msg.header["tags"]) <= 1.0 + 1e-6
    # --- OSC: every target got the same datagrams, none over the size limit
    assert got[0] and all(len(g) == len(got[0]) for g in got)
    assert all(len(d) <= MAX_BYTES for g in got for d in g)
    packets = [fmt.decode(d) for d in got[0]]
    addresses = {p.address for p in packets}
    assert {fmt.ADDR_MATCH, fmt.ADDR_TAGS, fmt.ADDR_LEVEL, fmt.ADDR_EMB, fmt.ADDR_PROJ,
            fmt.ADDR_SIMILARITY, fmt.ADDR_LOUDNESS, fmt.ADDR_CLASS,
            fmt.ADDR_MASKING} <= addresses  # fmt: skip
    osc_matches = [p for p in packets if p.address == fmt.ADDR_MATCH]
    assert all(p.fields["path"].startswith(fmt.ELLIPSIS) for p in osc_matches)  # long paths
    assert all(p.fields["path"].endswith(".wav") for p in osc_matches)
    proj = [p for p in packets if p.address == fmt.ADDR_PROJ]
    assert all(len(p.tail) == 8 and all(-1 < v < 1 for v in p.tail) for p in proj)


def test_non_loopback_listener_refused(library: tuple[Path, list[Path]]) -> None:
    lib, files = library
    for kw in ({"zmq_pub": "tcp://0.0.0.0:0"}, {"control": "tcp://*:0"},
               {"osc_in": "0.0.0.0:0"}):  # fmt: skip
        with pytest.raises(EmberdError, match="--listen-any"):
            Daemon(_config(lib, files[0], **kw)).start()


def test_cli_bind_refusal_is_one_line(
    library: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    from emberd.cli import main

    lib, files = library
    rc = main(["run", "--library", str(lib), "--input", str(files[0]),
               "--osc-in", "0.0.0.0:9000"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--listen-any" in err[0]


# ---------------------------------------------------------------------------- control


@pytest.fixture(scope="module")
def live(library: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A daemon on a looping real-time performance, with ZeroMQ and OSC control."""
    lib, _ = library
    perf = smalllib.write_performance(tmp_path_factory.mktemp("perf") / "p.wav", seconds=4.0)
    cfg = _config(lib, perf, pace="realtime", loop=True, osc_in="127.0.0.1:0")
    with Daemon(cfg) as d:
        yield d


def _request(d: Daemon, payload: bytes | list[bytes], timeout_ms: int = 30000) -> dict[str, Any]:
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    try:
        assert d.control_endpoint is not None
        sock.connect(d.control_endpoint)
        if isinstance(payload, list):
            sock.send_multipart(payload)
        else:
            sock.send(payload)
        return wire.decode_reply(sock.recv())
    finally:
        sock.close(0)


def _cmd(d: Daemon, cmd: str, **args: Any) -> dict[str, Any]:
    return _request(d, wire.encode_request(cmd, **args))


def test_control_commands(live: Daemon) -> None:
    st = _cmd(live, "status")
    assert st["ok"] and st["status"]["model"] == MODEL and st["status"]["k"] == 3
    assert st["status"]["provider"] == "CPUExecutionProvider"
    assert _cmd(live, "set_k", k=5) == {"ok": True, "k": 5}
    assert _cmd(live, "status")["status"]["k"] == 5
    cap = _cmd(live, "capture", seconds=0.5)
    assert cap["ok"] and cap["seconds"] == pytest.approx(0.5, abs=0.01)
    assert len(cap["results"]) == 1 and len(cap["results"][0]["matches"]) == 5
    assert all(Path(m["path"]).is_file() for m in cap["results"][0]["matches"])
    assert _cmd(live, "reload")["ok"]
    assert _cmd(live, "pause") == {"ok": True, "paused": True}
    hops = _cmd(live, "status")["status"]["hops"]
    assert _cmd(live, "capture", seconds=0.2)["ok"]  # capture still works while paused
    assert _cmd(live, "status")["status"]["hops"] == hops  # ...but nothing is published
    assert _cmd(live, "resume") == {"ok": True, "paused": False}
    wait_for(lambda: _cmd(live, "status")["status"]["hops"] > hops, 30, what="hops after resume")
    import zmq

    ctx = zmq.Context.instance()
    assert live.pub_endpoint is not None
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    sub.setsockopt(zmq.SUBSCRIBE, b"match.0")
    sub.connect(live.pub_endpoint)
    try:
        before = wire.decode(sub.recv_multipart())  # flowing
        swapped = _cmd(live, "set_model", model=MODEL)
        assert swapped["ok"] and swapped["model"] == MODEL
        times = [before.capture_time] + [wire.decode(sub.recv_multipart()).capture_time
                                         for _ in range(60)]  # fmt: skip
    finally:
        sub.close(0)
    # New front ends start counting at zero: capture times must still run forward.
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(times)), times
    _cmd(live, "set_k", k=3)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"cmd": 5}',
        b'{"cmd": "explode"}',
        b'{"cmd": "set_k", "k": 0}',
        b'{"cmd": "set_k", "k": true}',
        b'{"cmd": "set_k", "k": "3"}',
        b'{"cmd": "set_k", "k": 3, "extra": 1}',
        b'{"cmd": "capture", "seconds": NaN}',
        b'{"cmd": "capture", "seconds": 1, "channel": 7}',
        b'{"cmd": "set_model", "model": "no-such-model"}',
        b'{"cmd": "status", "n": ' + b"9" * 5000 + b"}",
        b"[" * 100000,
        [b'{"cmd": "status"}', b"second frame"],
    ],
)
def test_malformed_control_gets_error_and_is_counted(live: Daemon, payload: Any) -> None:
    before = _cmd(live, "status")["status"]["rejected_control"]
    reply = _request(live, payload)
    assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"]
    after = _cmd(live, "status")["status"]
    assert after["rejected_control"] == before + 1
    assert after["k"] == 3 and after["model"] == MODEL


def test_osc_control_replies_to_sender(live: Daemon) -> None:
    from pythonosc.osc_message_builder import OscMessageBuilder

    assert live.osc_in_address is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(30)

    def send(address: str, *args: Any) -> None:
        b = OscMessageBuilder(address)
        for a in args:
            b.add_arg(a)
        sock.sendto(b.build().dgram, live.osc_in_address)

    def reply() -> fmt.OscPacket:
        while True:
            p = fmt.decode(sock.recv(65536))
            if p.address == fmt.ADDR_REPLY:
                return p

    try:
        before = _cmd(live, "status")["status"]["rejected_osc"]
        send("/emberd/ctl/set_k", 4.0)  # Pd sends floats
        r = reply()
        assert r.fields["cmd"] == "set_k" and r.fields["ok"] == 1
        assert json.loads(r.fields["detail"]) == {"ok": True, "k": 4}
        send("/emberd/ctl/status")
        first = fmt.decode(sock.recv(65536))
        assert first.address == fmt.ADDR_STATUS and first.fields["model"] == MODEL
        assert reply().fields["ok"] == 1
        # Longer than the performance's 0.5-s onset spacing: a shorter window can fall
        # wholly in the quiet after a hat, and silence is rightly no match (6 % of 0.3-s
        # windows did, which made this test flaky).
        send("/emberd/ctl/capture", 0.6)
        caps = []
        while True:
            p = fmt.decode(sock.recv(65536))
            if p.address == fmt.ADDR_REPLY:
                break
            caps.append(p)
        assert p.fields["cmd"] == "capture" and p.fields["ok"] == 1
        assert [c.fields["rank"] for c in caps] == [0, 1, 2, 3]
        for bad in (b"garbage", b"/emberd/ctl/set_k\x00\x00\x00,s\x00\x00x\x00\x00\x00"):
            sock.sendto(bad, live.osc_in_address)
            assert reply().fields["ok"] == 0
        send("/emberd/ctl/set_k", 2.5)
        assert reply().fields["ok"] == 0
        send("/emberd/ctl/set_k", 3)
        assert reply().fields["ok"] == 1
        assert _cmd(live, "status")["status"]["rejected_osc"] == before + 3
    finally:
        sock.close()


def test_subscribers_report_what_they_lost(live: Daemon) -> None:
    """ZeroMQ drops silently at a slow reader's HWM: the reader counts the seq gaps and
    reports them over control, and the daemon's status shows them."""
    from test_clients_lib import Publisher, match_fields, next_data

    from emberd.clients.subscriber import Subscriber

    assert live.control_endpoint is not None
    pub = Publisher()  # the gaps a full HWM leaves, made on purpose
    try:
        with Subscriber(pub.endpoint, ["match"], report_to=live.control_endpoint,
                        name="e2e-slow-reader") as sub:  # fmt: skip
            pub.wait_subscribed()
            for seq in (5, 6, 9):  # 7 and 8 lost
                pub.send("match", 0, seq=seq, **match_fields(["a.wav"]))
            for _ in range(3):
                next_data(sub)
            assert sub.dropped == 2
            sub.recv(timeout_s=0.01)  # the next call reports (one short request)
            assert sub.report_errors == 0
    finally:
        pub.close()
    st = _cmd(live, "status")["status"]
    assert st["subscriber_lost_by"]["e2e-slow-reader"] == 2
    assert st["subscriber_lost"] >= 2 and st["outputs"]["zmq"]["subscriber_lost"] >= 2
    for bad in ({"subscriber": "no spaces", "messages": 1}, {"subscriber": "x", "messages": -1},
                {"subscriber": "x", "messages": True}, {"subscriber": "x", "messages": 1.5},
                {"subscriber": "x" * 65, "messages": 1}, {"subscriber": "x"}):
        reply = _cmd(live, "lost", **bad)
        assert reply["ok"] is False and reply["error"].startswith("lost:")
    assert "x" not in _cmd(live, "status")["status"]["subscriber_lost_by"]


def test_publishing_continues_while_control_is_flooded(live: Daemon) -> None:
    """Control requests run on their own threads: hops keep coming during a flood."""
    hops = _cmd(live, "status")["status"]["hops"]
    done = threading.Event()

    def flood() -> None:
        while not done.is_set():
            _request(live, b"{oops")

    t = threading.Thread(target=flood)
    t.start()
    try:
        # The flood is rate limited, and so is a status request caught in it: retried.
        wait_for(lambda: _cmd(live, "status").get("status", {"hops": 0})["hops"] > hops + 20,
                 60, what="hops during a control flood")  # fmt: skip
    finally:
        done.set()
        t.join()


def test_mix_is_the_mean_of_all_channels(library: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """--channels mix: a sample on the left and silence on the right is still found."""
    lib, files = library
    y, sr = sf.read(files[3], dtype="float32")
    stereo = np.zeros((y.size + sr, 2), np.float32)
    stereo[sr // 2 : sr // 2 + y.size, 0] = y
    path = tmp_path / "left.wav"
    sf.write(path, stereo, sr)
    msgs, status = _run_collect(_config(lib, path, channels="mix"))
    levels = [m.header["rms_db"] for m in msgs if m.kind == wire.KIND_LEVEL]
    assert status["channels"] == 1 and max(levels) > -40.0  # the left channel is heard
    tops = {m.header["matches"][0]["name"] for m in msgs
            if m.kind == wire.KIND_MATCH and m.header["matches"]}  # fmt: skip
    assert files[3].name in tops
