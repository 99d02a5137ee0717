"""OSC address space: datagram sizes, round trips, control parsing, malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonosc.osc_message import OscMessage

from emberd.clients import osc_format as fmt
from emberd.testing.fuzzmsg import osc_datagrams

TIMES = (7, 1234, 1240)


@given(
    name=st.text(min_size=0, max_size=400),
    path=st.text(min_size=0, max_size=3000),
    max_bytes=st.sampled_from([fmt.MIN_MAX_DATAGRAM_BYTES, 512, 1200, 9000]),
)
@settings(max_examples=200, deadline=None)
def test_match_datagram_fits_and_decodes(name: str, path: str, max_bytes: int) -> None:
    dgram = fmt.encode_match(TIMES, channel=3, rank=1, score=0.5, name=name, path=path,
                             max_bytes=max_bytes)  # fmt: skip
    assert len(dgram) <= max_bytes
    packet = fmt.decode(dgram)
    assert packet.address == fmt.ADDR_MATCH
    assert packet.fields["seq"] == 7 and packet.fields["channel"] == 3
    assert packet.fields["rank"] == 1 and packet.fields["score"] == pytest.approx(0.5)
    sent_path = packet.fields["path"]
    clean = path.replace("\x00", "")
    if len(clean.encode()) + len(name.encode()) < max_bytes // 3:
        assert sent_path == clean  # short paths travel whole
    else:  # long ones keep their end (the file name) behind "..."
        tail = sent_path.removeprefix(fmt.ELLIPSIS)
        assert clean.endswith(tail)


def test_long_path_keeps_file_name() -> None:
    path = "/home/me/" + "very long folder name/" * 100 + "Kicks/kick 01.wav"
    dgram = fmt.encode_match(TIMES, channel=0, rank=0, score=0.9, name="kick 01", path=path)
    assert len(dgram) <= fmt.DEFAULT_MAX_DATAGRAM_BYTES
    sent = fmt.decode(dgram).fields["path"]
    assert sent.startswith("...") and sent.endswith("Kicks/kick 01.wav")
    # a second, independent decoder agrees
    assert OscMessage(dgram).params[-1] == sent


@pytest.mark.parametrize("dim", [1, 96, 128, 512, 2048])
@pytest.mark.parametrize("max_bytes", [256, 1200])
def test_embedding_parts_fit_and_reassemble(dim: int, max_bytes: int) -> None:
    vec = np.random.default_rng(dim).standard_normal(dim).astype(np.float32)
    parts = fmt.encode_embedding(TIMES, channel=2, vector=vec, max_bytes=max_bytes)
    assert all(len(p) <= max_bytes for p in parts)
    out = np.zeros(dim, np.float32)
    for i, p in enumerate(parts):
        f = fmt.decode(p).fields
        assert f["part"] == i and f["parts"] == len(parts) and f["channel"] == 2
        chunk = np.frombuffer(f["data"], dtype="<f4")
        out[f["offset"] : f["offset"] + chunk.size] = chunk
    np.testing.assert_array_equal(out, vec)


def test_tags_are_cut_to_fit() -> None:
    tags = [(f"tag-{i}-" + "x" * 50, 1.0 / (i + 1)) for i in range(100)]
    dgram = fmt.encode_tags(TIMES, channel=0, tags=tags, max_bytes=600)
    assert len(dgram) <= 600
    packet = fmt.decode(dgram)
    names = packet.tail[0::2]
    assert 0 < len(names) < 100
    assert names[0].startswith("tag-0-")


def test_similarity_and_projection_limits() -> None:
    for max_bytes in (256, 1200):
        n = fmt.max_floats(fmt.ADDR_SIMILARITY, "iiiii", max_bytes)
        dgram = fmt.encode_floats(fmt.ADDR_SIMILARITY, "iiiii", [*TIMES, 0, n], np.ones(n),
                                  max_bytes=max_bytes)  # fmt: skip
        assert len(dgram) <= max_bytes
        with pytest.raises(fmt.OscFormatError):
            fmt.encode_floats(fmt.ADDR_SIMILARITY, "iiiii", [*TIMES, 0, n], np.ones(n + 1),
                              max_bytes=max_bytes)  # fmt: skip


def test_status_and_reply_round_trip() -> None:
    status = {"uptime_s": 3.5, "latency_p50_ms": 20.0, "latency_p99_ms": 30.0,
              "inference_ms": 4.0, "overflows": 2, "dropped_hops": 1, "rejected": 5,
              "channels": 2, "start_s": 1_800_000_000, "start_ms": 123,
              "provider": "CPUExecutionProvider", "model": "aisfx"}  # fmt: skip
    f = fmt.decode(fmt.encode_status(TIMES, status)).fields
    assert f["model"] == "aisfx" and f["overflows"] == 2 and f["start_ms"] == 123
    assert f["latency_p99_ms"] == pytest.approx(30.0)
    reply = fmt.decode(fmt.encode_reply("set_k", False, {"ok": False, "error": "x" * 5000}))
    assert reply.fields["cmd"] == "set_k" and reply.fields["ok"] == 0
    assert len(fmt.encode_reply("set_k", False, {"error": "x" * 5000})) <= 1200


def _ctl(address: str, *args: object) -> bytes:
    from pythonosc.osc_message_builder import OscMessageBuilder

    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return bytes(b.build().dgram)


def test_parse_control_accepts_pd_floats() -> None:
    assert fmt.parse_control(_ctl("/emberd/ctl/set_k", 8.0)) == {"cmd": "set_k", "k": 8}
    assert fmt.parse_control(_ctl("/emberd/ctl/capture", 2, 1)) == {
        "cmd": "capture", "seconds": 2.0, "channel": 1}  # fmt: skip
    assert fmt.parse_control(_ctl("/emberd/ctl/status")) == {"cmd": "status"}
    assert fmt.parse_control(_ctl("/emberd/ctl/set_model", "aisfx"))["model"] == "aisfx"


@pytest.mark.parametrize(
    "dgram",
    [
        b"",
        b"\x00\x00\x00\x00",
        b"/emberd/ctl/set_k\x00\x00\x00,i\x00\x00\x00\x00",  # int arg cut short
        _ctl("/emberd/ctl/set_k", 2.5),
        _ctl("/emberd/ctl/set_k", "ten"),
        _ctl("/emberd/ctl/nope"),
        _ctl("/other/thing", 1),
        _ctl("/emberd/ctl/status", 1),
    ],
)
def test_parse_control_rejects(dgram: bytes) -> None:
    with pytest.raises(fmt.OscFormatError):
        fmt.parse_control(dgram)


def test_parse_control_never_raises_anything_else() -> None:
    """The seeded fuzz corpus: every datagram is refused with OscFormatError or yields a
    request the controller validates further; nothing else escapes."""
    for _cat, dgram in osc_datagrams(600, seed=5):
        try:
            request = fmt.parse_control(dgram)
        except fmt.OscFormatError:
            continue
        assert isinstance(request, dict) and request["cmd"] in fmt.CONTROL_ARGS
