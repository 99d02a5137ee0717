"""Hit messages: ZeroMQ header and OSC datagram round trips into typed HitMessages."""

from __future__ import annotations

import math

import pytest

from emberd.clients import osc_format as fmt
from emberd.clients import wire
from emberd.clients.messages import HitMessage, decode_frames, to_json
from emberd.clients.osc_client import OscDecoder

MATCH = {
    "path": "/kits/GMkit/kick.wav", "name": "kick.wav", "score": 0.97, "distance": 0.2,
    "segment_start_s": 0.0, "tags": ["GMkit"], "kind": "exact", "confidence": 0.93,
}  # fmt: skip


def _frames(stage: str = "refined", matches: list[dict] | None = None) -> list[bytes]:
    fields = wire.hit_fields(
        hit=3, stage=stage, onset_time=1000.0, onset_s=12.5, window_ms=50.0, peak_db=-6.0,
        matches=[MATCH] if matches is None else matches, publish_time=1000.02,
    )  # fmt: skip
    return wire.encode(wire.KIND_HIT, seq=7, capture_time=1000.015, model="aisfx", channel=2,
                       publish_time=1000.02, **fields)  # fmt: skip


def test_zmq_hit_round_trip() -> None:
    frames = _frames()
    assert frames[0] == b"hit.2"
    msg = decode_frames(frames)
    assert isinstance(msg, HitMessage)
    assert (msg.channel, msg.hit, msg.stage, msg.answer) == (2, 3, "refined", "exact")
    assert msg.latency_ms == pytest.approx(20.0, abs=1e-3)
    assert msg.onset_s == 12.5 and msg.peak_db == -6.0
    assert msg.matches[0].confidence == pytest.approx(0.93)
    assert msg.matches[0].kind == "exact"
    assert to_json(msg)["matches"][0]["confidence"] == pytest.approx(0.93)


def test_zmq_hit_without_answer_says_none() -> None:
    msg = decode_frames(_frames(matches=[]))
    assert isinstance(msg, HitMessage) and msg.answer == "none" and msg.matches == ()


def test_zmq_hit_bad_stage_is_refused() -> None:
    with pytest.raises(wire.WireError):
        wire.hit_fields(hit=0, stage="early", onset_time=0.0, onset_s=0.0, window_ms=0.0,
                        peak_db=0.0, matches=[], publish_time=0.0)  # fmt: skip
    frames = _frames()
    frames[1] = frames[1].replace(b'"refined"', b'"sometime"')
    with pytest.raises(wire.WireError):
        decode_frames(frames)


def test_osc_hit_round_trip_and_size() -> None:
    long_path = "/very/long/" * 200 + "snare.wav"
    dgram = fmt.encode_hit((5, 100, 130), channel=1, hit=4, stage="final", onset_ms=110,
                           latency_ms=20.0, peak_db=-3.0, answer="similar", confidence=0.6,
                           name="snare.wav", path=long_path)  # fmt: skip
    assert len(dgram) <= fmt.DEFAULT_MAX_DATAGRAM_BYTES
    pkt = fmt.decode(dgram)
    assert pkt.fields["stage"] == "final" and pkt.fields["path"].endswith("snare.wav")
    dec = OscDecoder()
    out = dec.feed(dgram)
    assert len(out) == 1 and isinstance(out[0], HitMessage)
    hit = out[0]
    assert (hit.channel, hit.hit, hit.answer) == (1, 4, "similar")
    assert hit.matches[0].confidence == pytest.approx(0.6)
    assert math.isclose(hit.latency_ms, 20.0, abs_tol=1e-3)
