"""The session soak, short: the whole set-up at once for about a minute.

:func:`emberd.testing.soak.run` (what ``bench/soak.py`` runs for 30 minutes): a JACK
dummy server with a player looping a 4-channel hydrogen performance into the daemon's
capture (and into the bare-capture anchor's), hits and matches out over OSC, ZeroMQ and
JACK MIDI, ``emberd watch`` and the panel in headless Chromium, set_k / capture /
reload every 2 s, and an OSC fuzzer at 300 messages/s. The DSP baseline encoder keeps
it short (the hit ladder, which names the hits, does not use the encoder).

Asserted: behaviour only, never timing. Nothing crashed and every client stayed
connected; the daemon's open fds did not grow (but for about one per input reconnection:
the stream a stall leaves open by design); its RSS grew by less than
RSS_GROWTH_BOUND_MIB; every drop is counted (per output, and every fuzzed datagram is
rejected or a kernel drop); hits were published on every transport and named the
played files. Needs jackd, JACK-Client, chromium + chromedriver, selenium and
hydrogen-drumkits: skipped locally without them, failed in CI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from emberd.testing import smalllib, soak

DURATION_S = 60.0  # after warm-up; the whole test takes about two minutes
WINDOW_S = 20.0  # hit accuracy windows at the start and the end
RSS_GROWTH_BOUND_MIB = 10.0  # the 30-minute goal; a leak per request shows sooner
SLIP_EVERY_S = 3.0  # the scoring test: one JACK period lost this often (7.7 ms/s; the
# 150 s aiSFX soak of 2026-12-02 13:00 UTC slipped 0.85 s in 110 s)
EXTRA_SHARE = 0.5  # the scoring test: detections that pair with no played onset, per hit
NAMED_SHARE = 0.5  # of the hits paired with a played onset, named as the played file


def test_session_soak_short(tmp_path: Path) -> None:
    missing = soak.missing_component()
    require(missing is None, str(missing))
    lines: list[str] = []
    r = soak.run(soak.SoakConfig(
        duration=DURATION_S, model=smalllib.FAST_MODEL, window_s=WINDOW_S, sample_s=2.0,
        control_s=2.0, warmup_s=10.0, work=tmp_path, progress=lines.append))  # fmt: skip
    summary = {k: v for k, v in r.items() if k != "samples"}
    # Nothing crashed; every client stayed connected to the end.
    assert r["alive"] and r["daemon_exit"] == 0, summary
    assert r["clients_alive"] == {"watch": True, "panel": True}, summary
    assert r["panel_final"][1] == "connected", summary
    panel_counts = [s["panel"][0] for s in r["samples"] if s["panel"]]
    assert panel_counts and panel_counts[-1] > panel_counts[0], panel_counts  # still updating
    # No fd growth (lowest count in the first vs the last quarter: a connection or a file
    # open for a moment is not a leak), bounded RSS growth (medians of the same quarters).
    # A reconnection after an input stall (a starved server) keeps the old stream open by
    # design (emberd/dsp/device.py: it may be wedged); measured on a paused jackd: 38 -> 40,
    # 40, 41 fds after 1, 2, 3 reconnections. Without a stall: no growth at all.
    reconnects = r["input_reconnects"]
    allowed = reconnects + 1 if reconnects else 0
    assert r["fd_growth"] <= allowed, (reconnects, r["proc_samples"]["daemon"])
    assert r["rss_growth_mib"] <= RSS_GROWTH_BOUND_MIB, r["proc_samples"]["daemon"]
    # Every drop counted: per output, the total is its parts; each fuzzed datagram was
    # refused and counted (or dropped by the kernel, read from /proc); the flood was
    # rate-limited.
    outs = r["outputs"]
    assert set(outs) >= {"osc", "zmq", "midi"}, outs
    for name, o in outs.items():
        assert o["published"] > 0 and o["errors"] == 0 and not o["disabled"], (name, o)
        assert o["dropped"] == o["queue_dropped"] + o["transport_dropped"], (name, o)
    assert r["dropped_hops"] >= 0 and r["hops"] > 0, summary
    fz = r["fuzzer"]
    assert fz["sent"] > 0 and fz["counted"] + fz["kernel_drops"] == fz["sent"], fz
    assert r["rate_limited_osc"] > 0, summary
    # Every control request got a reply (a starved worker may answer "no answer from the
    # worker within ..."; never silence), and each command succeeded at least once.
    replies = r["control_replies"]
    assert not any(k.endswith("no reply") for k in replies), replies
    assert {k.split()[0] for k in replies if k.endswith(" ok")} == {"set_k", "capture",
                                                                    "reload"}, replies
    # Hits published on every transport and named.
    assert r["zmq_subscriber"]["kinds"].get("hit", 0) > 0, r["zmq_subscriber"]
    assert all(n > 0 for n in r["osc_datagrams_received"]), summary
    assert outs["midi"]["counters"]["notes"] > 0 and r["midi_received"]["notes_on"] > 0, summary
    # A hit number names one hit for the whole run, reloads (every 6 s here) included:
    # every stage of (channel, hit) carries the same onset (the numbers restarted with
    # each reload's ladder, and the soak's scoring merged different hits under one).
    recorded = json.loads((tmp_path / "hits.json").read_text())["hits"]
    onsets: dict[tuple[int, int], set[float]] = {}
    for ch, hit, _stage, _arrival, onset_s, _top in recorded:
        onsets.setdefault((ch, hit), set()).add(onset_s)
    assert recorded and all(len(v) == 1 for v in onsets.values()), sorted(
        (k, v) for k, v in onsets.items() if len(v) > 1)[:5]
    for window in ("accuracy_first", "accuracy_last"):
        acc = r[window]
        assert acc["paired"] > 0, (window, acc, lines[-5:])
        assert acc["final_top1"] >= NAMED_SHARE, (window, acc)


def made_up_run(speed: float) -> tuple[list[tuple[int, int, str, float, float, str | None]],
                                        list[tuple[int, float, str]], list[tuple[float, float]],
                                        float, float]:
    """A made-up soak run: every played onset detected once, hit numbers restarting every
    9 s (as they did with each reload), the daemon's stream losing a 23 ms JACK period
    every 3 s against the player's loop (as on a loaded server), extra detections, and
    the server at ``speed`` x real time. Returns hits, truth, the player's clock samples,
    the Unix time of stream 0 and the loop length."""
    loop_s, period_s = 30.0, 1024 / soak.SR
    rng = np.random.default_rng(3)
    truth = [(c, float(o), f"f{c}-{i}") for c in range(4)
             for i, o in enumerate(np.sort(rng.uniform(0.2, loop_s - 0.2, 25)))]  # fmt: skip
    hits: list[tuple[int, int, str, float, float, str | None]] = []
    t_start, shift = 1.0e9, 0.3  # Unix time of stream 0; stream minus loop position (slips
    # past 0 in the window: the offset must stay continuous)

    def stream_of(t: float) -> float:  # the daemon's stream clock when the loop is at t
        return t + shift - period_s * int(t // SLIP_EVERY_S)

    numbers: dict[tuple[int, int], int] = {}  # (channel, reload) -> hits numbered
    for loop in range(4):
        for c, o, path in sorted(truth, key=lambda t: t[1]):
            t = loop * loop_s + o
            onset_s = stream_of(t)
            ident = numbers[c, int(t // 9.0)] = numbers.get((c, int(t // 9.0)), -1) + 1
            for stage in ("provisional", "refined", "final"):
                hits.append((c, ident, stage, t_start + onset_s / speed + 0.2, onset_s, path))
            # an extra detection (half the soak's: 101 a minute against 223 played)
            if rng.random() < EXTRA_SHARE:
                x = onset_s + float(rng.uniform(0.05, 0.6))
                hits.append((c, -1 - len(hits), "final", t_start + x / speed + 0.2, x, None))
    clock = [(t_start + stream_of(t) / speed, float(t)) for t in np.arange(0.0, 4 * loop_s, 2.0)]
    return hits, truth, clock, t_start, loop_s


@pytest.mark.parametrize("with_clock", [True, False], ids=["player-clock", "no-clock"])
@pytest.mark.parametrize("speed", [1.0, 0.7], ids=["real-time", "slow-server"])
def test_scoring_pairs_hits_across_reloads_and_clock_slips(speed: float, with_clock: bool) -> None:
    """The soak's scoring, on a made-up run (:func:`made_up_run`, the server at ``speed``
    x real time; 0.7: 50 s of stream in 73 s at load 15): every hit is paired and named,
    and the played count is the loop's, not the wall clock's, with the player's clock
    and without it. Keyed by hit number with one offset per window, 0.21 of the hits
    were found in a 150 s run whose hits were all published."""
    hits, truth, clock, t_start, loop_s = made_up_run(speed)
    t0, t1 = t_start + 10.0, t_start + 70.0
    acc = soak.accuracy(hits, truth, t0, t1, loop_s, clock if with_clock else None)
    assert acc["detected"] >= 0.95, acc
    assert abs(acc["played"] - 200 * speed) <= 4, acc  # 2 loops of 100 hits at real time
    assert acc["final_top1"] >= 0.95 and acc["provisional_top1"] >= 0.95, acc  # an extra
    # may land within the tolerance of a played onset first
    # the slip and the speed are reported: a period every 3 s of stream
    period_s = 1024 / soak.SR
    slipped = 60.0 * speed / SLIP_EVERY_S * period_s
    assert abs(acc["drift_s"] - slipped) <= 2 * period_s, (acc, slipped)
    assert abs(acc["stream_per_wall_s"] - speed) <= 0.05, acc


def test_scoring_sees_detection_stop_and_lone_false_hits() -> None:
    """A daemon that stops detecting half-way through a window scores about half with the
    player's clock (counted between the first and the last detection it scored 1.0), and
    lone detections with no neighbours to agree on an offset are extras (each voting for
    itself, they paired with whatever onset their own offset named)."""
    hits, truth, clock, t_start, loop_s = made_up_run(1.0)
    t0, t1 = t_start + 10.0, t_start + 70.0
    cut = t_start + 40.0
    kept = [h for h in hits if h[3] <= cut]
    lone = [(0, 10_000 + i, "final", t_start + x + 0.2, x, None) for i, x in
            enumerate((50.0, 55.3, 61.7))]  # fmt: skip
    stopped = soak.accuracy(kept, truth, t0, t1, loop_s, clock)
    assert 0.4 <= stopped["detected"] <= 0.6, stopped
    acc = soak.accuracy(kept + lone, truth, t0, t1, loop_s, clock)
    assert acc["paired"] == stopped["paired"], (acc, stopped)
    assert acc["extra"] == stopped["extra"] + len(lone), (acc, stopped)
