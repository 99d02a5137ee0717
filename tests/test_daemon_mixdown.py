"""The worker's mix-down analysis: rate limits, no-signal state, classes, messages."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import signal

from emberd.clients import osc_format as fmt
from emberd.clients import wire
from emberd.daemon.mixdown import MixdownAnalyser, osc_datagrams, zmq_messages
from emberd.library.classifier import fit_head

SR = 44100


def _stems(seconds: float) -> np.ndarray:
    """kick, bass (covering the kick's band), silence."""
    n = int(SR * seconds)
    t = np.arange(n) / SR
    kick = np.zeros(n)
    m = int(0.3 * SR)
    tk = np.arange(m) / SR
    hit = np.sin(2 * np.pi * (50 + 80 * np.exp(-tk * 40)) * tk) * np.exp(-tk * 15)
    for s in range(0, n - m, SR // 2):
        kick[s : s + m] += 0.8 * hit
    sos = signal.butter(4, [50, 140], "bandpass", fs=SR, output="sos")
    bass = 1.6 * signal.sosfilt(sos, signal.sawtooth(2 * np.pi * 55 * t))
    return np.stack([kick, bass, np.zeros(n)]).astype(np.float32)


def _decoded(result: Any) -> list[wire.Message]:
    """The result's ZeroMQ messages, encoded and decoded as a subscriber sees them."""
    return [wire.decode(wire.encode(k, seq=0, capture_time=result.capture_time, model="m",
                                    channel=ch, array=a, **f))
            for k, ch, f, a in zmq_messages(result)]  # fmt: skip


def _feed(an: MixdownAnalyser, x: np.ndarray, block: int) -> list:
    out = []
    for i in range(0, x.shape[1], block):
        out += an.push(x[:, i : i + block], 1000.0 + i / SR)
    return out


@pytest.mark.parametrize("block", [256, 2048, 44100])
def test_rate_limited_whatever_the_block_size(block: int) -> None:
    an = MixdownAnalyser(sr=SR, channels=[0, 1, 2])
    results = _feed(an, _stems(6.0), block)
    loud = [r for r in results if r.loudness_fresh]
    masking = [r for r in results if r.masking is not None]
    assert len(loud) == 30  # loudness 5 per second of audio, at 0.2, 0.4, ... 6.0 s
    assert len(masking) == 14  # class + masking 2.5 per second, at 0.5, 0.9, ... 5.7 s
    assert not [r for r in loud if r.masking is not None]  # never both in one tick
    assert [r.seq for r in results] == list(range(44))
    times = [r.capture_time for r in results]
    assert times == sorted(times) and times[-1] - times[0] == pytest.approx(5.8, abs=0.01)
    kinds = [k for r in results for k, *_ in zmq_messages(r)]
    assert kinds.count("loudness") == 3 * 30 and kinds.count("masking") == 14


def test_no_signal_state_and_suggestion() -> None:
    head = fit_head(np.eye(4)[[0] * 5 + [1] * 5], ["kick"] * 5 + ["bass"] * 5)
    an = MixdownAnalyser(sr=SR, channels=[3, 5, 7], head=head)
    an.on_hop(np.eye(4)[[0, 1, 1]].astype(np.float32))
    results = _feed(an, _stems(6.0), 4096)
    last = [r for r in results if r.masking is not None][-1]
    loud_last = [r for r in results if r.loudness_fresh][-1]
    assert last.signal == [True, True, False]
    assert last.classes is not None
    assert [c for c, _ in last.classes] == ["kick", "bass", None]  # silent: no class
    assert last.momentary[2] <= -120.0
    top = last.suggestions[0]
    assert (top.masker, top.maskee) == (1, 0)
    assert top.text.startswith("bass (ch 5) masks kick (ch 3) at 20 Hz")
    # --- ZeroMQ: channel numbers, not indexes; every frame decodes
    msgs = _decoded(loud_last) + _decoded(last)
    by_kind: dict[str, list[wire.Message]] = {}
    for m in msgs:
        by_kind.setdefault(m.kind, []).append(m)
    assert [m.channel for m in by_kind["loudness"]] == [3, 5, 7]
    assert [m.header["class"] for m in by_kind["class"]] == ["kick", "bass", None]
    (mask,) = by_kind["masking"]
    assert mask.header["channels"] == [3, 5, 7]
    assert mask.header["suggestions"][0]["masker"] == 5
    bands = len(mask.header["band_edges_hz"]) - 1
    assert mask.array is not None and mask.array.shape == (3, 3, bands)
    assert mask.array[1, 0, 0] >= 0.9
    # --- OSC: every datagram fits and decodes
    dgrams = [d for m in msgs for d in osc_datagrams(m.header, m.array, (1, 2, 3), 400)]
    packets = [fmt.decode(d) for d in dgrams]
    assert all(len(d) <= 400 for d in dgrams)
    cls = [p for p in packets if p.address == fmt.ADDR_CLASS]
    assert [(p.fields["class"], p.fields["signal"]) for p in cls] == [
        ("kick", 1), ("bass", 1), ("none", 0)]  # fmt: skip
    masking = [p for p in packets if p.address == fmt.ADDR_MASKING]
    assert masking[0].fields["count"] == len(masking) and masking[0].fields["masker"] == 5
    loud = [p for p in packets if p.address == fmt.ADDR_LOUDNESS]
    assert len(loud) == 3 and len(loud[0].tail) == len(last.balance_hz)


def test_silence_everywhere_says_nothing_masked_over_osc() -> None:
    an = MixdownAnalyser(sr=SR, channels=[0, 1])
    results = _feed(an, np.zeros((2, SR * 2), np.float32), 1024)
    last = [r for r in results if r.masking is not None][-1]
    assert last.signal == [False, False] and not last.suggestions
    msgs = _decoded(last)
    packets = [fmt.decode(d) for m in msgs for d in osc_datagrams(m.header, m.array, (0, 0, 0),
                                                                   1200)]  # fmt: skip
    (masking,) = [p for p in packets if p.address == fmt.ADDR_MASKING]
    assert masking.fields["count"] == 0


def test_typed_messages_and_panel_json_never_carry_nan() -> None:
    import json

    from emberd.clients.messages import (
        ClassMessage,
        LoudnessMessage,
        MaskingMessage,
        SimilarityMessage,
        from_wire,
        to_json,
    )
    from emberd.daemon.mixdown import centred_similarity

    an = MixdownAnalyser(sr=SR, channels=[0, 1, 2])
    results = _feed(an, _stems(3.0), 4096)
    last = [r for r in results if r.masking is not None][-1]
    loud_last = [r for r in results if r.loudness_fresh][-1]
    typed = [from_wire(m) for m in _decoded(loud_last) + _decoded(last)]
    assert {type(t) for t in typed} == {ClassMessage, LoudnessMessage, MaskingMessage}
    (mask,) = [t for t in typed if isinstance(t, MaskingMessage)]
    assert np.isnan(mask.fraction[0, 2]).all()  # the silent stem never played
    sim = centred_similarity(np.eye(3, 8), None, [False, False, True])
    frames = wire.encode(wire.KIND_SIMILARITY, seq=0, capture_time=0.0, model="m",
                         channels=[0, 1, 2], array=sim)  # fmt: skip
    typed.append(from_wire(wire.decode(frames)))
    assert isinstance(typed[-1], SimilarityMessage)
    for t in typed:
        json.dumps(to_json(t), allow_nan=False)  # browsers reject NaN in JSON
    assert to_json(typed[-1])["matrix"][2] == [None, None, None]
    assert to_json(mask)["fraction"][0][2][0] is None


def test_reference_curves(tmp_path: Any) -> None:
    import soundfile as sf

    from emberd.daemon.mixdown import load_reference
    from emberd.dsp.bands import third_octave_centres
    from emberd.errors import EmberdError

    bands = len(third_octave_centres(sr=SR))
    pink = load_reference("pink", sr=SR)
    assert pink.shape == (bands,) and np.ptp(pink) < 1e-9
    csv = tmp_path / "target.csv"
    csv.write_text("# Hz,dB\n20,6\n1000,0\n20000,-6\n")
    tilt = load_reference(str(csv), sr=SR)
    assert tilt[0] > tilt[-1] + 10
    wav = tmp_path / "ref.wav"
    sf.write(wav, _stems(2.0)[1], SR)  # the bass: all its energy low
    ref = load_reference(str(wav), sr=SR)
    assert ref.argmax() < 8
    (tmp_path / "bad.csv").write_text("twenty,six\n")
    with pytest.raises(EmberdError, match="Hz,dB"):
        load_reference(str(tmp_path / "bad.csv"), sr=SR)
    with pytest.raises(EmberdError):
        load_reference(str(tmp_path / "missing.wav"), sr=SR)
    an = MixdownAnalyser(sr=SR, channels=[0, 1, 2], reference_db=tilt)
    last = [r for r in _feed(an, _stems(1.0), 4096) if r.loudness_fresh][-1]
    (loud, *_rest) = [m for m in _decoded(last) if m.kind == "loudness"]
    assert loud.header["reference_db"] == [round(float(v), 2) for v in tilt]


def test_cli_bad_reference_is_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from emberd.cli import main
    from emberd.testing import smalllib

    lib = smalllib.build_library(tmp_path, per_folder=3)
    perf = smalllib.write_performance(tmp_path / "perf.wav", seconds=1.0)
    rc = main(["run", "--library", str(lib), "--input", str(perf), "--model", smalllib.FAST_MODEL,
               "--pace", "fast", "--zmq-pub", "tcp://127.0.0.1:0", "--control", "none",
               "--mix-reference", str(tmp_path / "nope.wav")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.wav" in err[0], err
