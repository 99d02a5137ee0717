"""The live hit ladder: stages in order, ids, silence, non-library sounds, overlaps, the daemon.

A small synthetic library is indexed with the real ``emberd index`` (dsp-baseline: no
download; the hit index uses the stored snippets and templates, whatever the model).
Performances are built from its files at several gains over a noise floor and pushed
through :class:`~emberd.daemon.hits.HitLadder` in 256-sample blocks, as the worker does;
the last test runs a performance file through the daemon and reads ``hit.*`` over ZeroMQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from emberd.clients import wire
from emberd.daemon.app import Daemon, DaemonConfig
from emberd.daemon.hits import HitLadder, HitResult
from emberd.library import Library
from emberd.library.hitindex import HitIndex
from emberd.testing import smalllib

SR = 22050  # the ladder works at the daemon's (the model's) rate
BLOCK = 256
NOISE_DB = -50.0
RECV_TIMEOUT_MS = 30000
TAIL_S = 0.6  # the synthetic sounds are over by then (pads: not played here)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Path]]:
    """An indexed library, its files, and same-kind sounds NOT in it (another seed)."""
    root = tmp_path_factory.mktemp("hitlib")
    files = smalllib.write_sounds(root / "sounds", per_folder=3)
    others = smalllib.write_sounds(root / "others", per_folder=3, seed=7, start=4)
    lib = root / "lib"
    proc = smalllib.index([root / "sounds"], lib, model=smalllib.FAST_MODEL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return lib, files, others


def _load(path: Path) -> np.ndarray:
    from emberd.dsp.sources import load_audio

    y, _ = load_audio(path, sr=SR)
    return np.asarray(y, np.float32)


def _perform(
    parts: list[tuple[Path, float, float]], seconds: float, seed: int = 0
) -> tuple[np.ndarray, list[float]]:
    """(file, start s, gain dB) placed over a -50 dBFS noise floor; returns audio, starts."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(int(seconds * SR)).astype(np.float32)
    y *= np.float32(10 ** (NOISE_DB / 20))
    for path, start, gain in parts:
        s = _load(path) * np.float32(10 ** (gain / 20))
        a = int(start * SR)
        y[a : a + len(s)] += s[: len(y) - a]
    return y, [p[1] for p in parts]


def _ladder(lib_path: Path) -> tuple[HitLadder, Library]:
    lib = Library.open(lib_path)
    return HitLadder(HitIndex.from_library(lib), lib.files(), sr=SR, channels=[0], model="test",
                     time_of=lambda pos: pos / SR), lib  # fmt: skip


def _run(ladder: HitLadder, y: np.ndarray) -> list[HitResult]:
    out: list[HitResult] = []
    for i in range(0, len(y), BLOCK):
        out += ladder.push(0, y[i : i + BLOCK])
    return out + ladder.flush()


def _by_hit(results: list[HitResult]) -> dict[int, list[HitResult]]:
    hits: dict[int, list[HitResult]] = {}
    for r in results:
        hits.setdefault(r.hit, []).append(r)
    return hits


def test_stages_in_order_with_ids_and_the_right_file(library: Any) -> None:
    lib_path, files, _ = library
    picks = [files[0], files[3], files[6], files[1], files[4]]  # kick snare hat kick snare
    parts = [(p, 0.5 + 0.6 * i, -3.0 * (i % 3) * 3) for i, p in enumerate(picks)]
    y, starts = _perform(parts, 4.0)
    ladder, lib = _ladder(lib_path)
    with lib:
        results = _run(ladder, y)
    hits = _by_hit(results)
    assert sorted(hits) == list(range(len(picks)))
    for hit_id, stages in hits.items():
        names = [r.stage for r in stages]
        assert names == ["provisional", "refined", "refined", "final"], names
        windows = [r.window_ms for r in stages]
        assert windows == sorted(windows) and windows[0] <= 12.0
        assert abs(stages[0].onset_s - starts[hit_id]) < 0.01
        for r in stages:  # every stage names the played file
            assert r.matches and Path(r.matches[0]["path"]) == picks[hit_id].resolve()
        assert stages[-1].matches[0]["kind"] == "exact"
        assert 0.0 <= stages[-1].matches[0]["confidence"] <= 1.0
    # Results come out in time order of the audio: no stage before its hit's onset.
    assert all(r.capture_time >= r.onset_time for r in results)


def test_silence_and_noise_floor_give_no_hit(library: Any) -> None:
    lib_path, _, _ = library
    ladder, lib = _ladder(lib_path)
    with lib:
        noise, _ = _perform([], 6.0)
        assert _run(ladder, noise) == []
        assert _run(ladder, np.zeros(3 * SR, np.float32)) == []


def test_sound_not_in_library_is_never_exact(library: Any) -> None:
    lib_path, _files, others = library
    picks = [others[0], others[3], others[6], others[2], others[5], others[8]]
    parts = [(p, 0.5 + 0.6 * i, -6.0) for i, p in enumerate(picks)]
    y, _ = _perform(parts, 4.5)
    ladder, lib = _ladder(lib_path)
    with lib:
        results = _run(ladder, y)
    assert len(_by_hit(results)) == len(picks)
    kinds = {m["kind"] for r in results for m in r.matches}
    claims = [(r.hit, r.stage, m["name"], m["rho"]) for r in results for m in r.matches
              if m["kind"] == "exact"]  # fmt: skip
    assert "exact" not in kinds, claims
    assert all(r.matches for r in results)  # a near answer, labelled as one


def test_sound_not_in_library_gets_a_library_sound_of_its_instrument(library: Any) -> None:
    """Sounds of another seed (not in the library): the final answer is a library sound of
    the played instrument, chosen by the class model fitted on the library's sounds."""
    from emberd.library.hitindex import file_class

    lib_path, _files, others = library
    picks = [p for p in others if file_class(str(p)) in ("kick", "snare", "closed_hat")]
    parts = [(p, 0.5 + 0.6 * i, -6.0 * (i % 3)) for i, p in enumerate(picks)]
    y, _ = _perform(parts, 0.5 + 0.6 * len(picks) + 0.5)
    ladder, lib = _ladder(lib_path)
    assert ladder.index is not None and ladder.index.class_model is not None
    with lib:
        hits = _by_hit(_run(ladder, y))
    assert sorted(hits) == list(range(len(picks)))
    named = [(file_class(str(p)), hits[i][-1].matches[0]["class"]) for i, p in enumerate(picks)]
    assert all(a == b for a, b in named), named


def test_hit_thread_reads_the_ring_itself(library: Any) -> None:
    """The hit thread answers from the ring with no worker reading it (so it never waits
    for a worker busy in a hop's encoder): every hit, every stage, the right file, and the
    ring's consumer position untouched."""
    import time

    from emberd.daemon.feed import FeederInput, array_blocks
    from emberd.daemon.hits import HitThread

    lib_path, files, _ = library
    picks = [files[0], files[3], files[6]]
    y, _ = _perform([(p, 0.3 + 0.5 * i, -6.0) for i, p in enumerate(picks)], 2.0)
    source = FeederInput(array_blocks(y[:, None]), sr=SR, channels=1, pace="realtime",
                         loop=False, description="test")  # fmt: skip
    out: list[HitResult] = []
    ladder, lib = _ladder(lib_path)
    with lib:
        thread = HitThread(ladder, [type("Sink", (), {"put": staticmethod(out.append)})()],
                           source=source, channel_index=[0], realtime=True)  # fmt: skip
        thread.start()
        source.start()
        deadline = time.monotonic() + 30.0
        while not source.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        thread.flush()
        thread.stop()
        thread.join(5)
    assert source.ring.total_read == 0 and thread.lost_frames == 0
    hits = _by_hit(out)
    assert sorted(hits) == [0, 1, 2]
    for i, stages in hits.items():
        assert [r.stage for r in stages] == ["provisional", "refined", "refined", "final"]
        assert Path(stages[-1].matches[0]["path"]) == picks[i].resolve()


def test_later_stages_stop_where_a_quiet_hit_sinks_into_the_noise(library: Any) -> None:
    """A loud kick is compared over all 245 ms; the same kick 30 dB quieter only while it
    stands above the -50 dBFS floor (its decay is noise after that), and every stage of
    both names it."""
    lib_path, files, _ = library
    parts = [(files[0], 0.5, 0.0), (files[0], 1.5, -30.0)]
    y, _ = _perform(parts, 2.5)
    ladder, lib = _ladder(lib_path)
    with lib:
        hits = _by_hit(_run(ladder, y))
    assert sorted(hits) == [0, 1]
    loud, quiet = hits[0], hits[1]
    assert loud[-1].window_ms > 240.0
    assert quiet[-1].window_ms < 0.8 * loud[-1].window_ms, [r.window_ms for r in quiet]
    for r in loud + quiet:
        assert Path(r.matches[0]["path"]) == files[0].resolve(), (r.stage, r.matches[0])


@pytest.mark.parametrize("second, gain_db, gap_s", [(6, -22.0, 0.12), (2, -24.0, 0.12),
                                                    (1, -26.0, 0.2)], ids=["hat", "kick", "kick2"])
def test_quiet_hit_over_a_known_tail_is_found_and_named(
    library: Any, second: int, gain_db: float, gap_s: float
) -> None:
    """A loud kick, then a sound 22-26 dB quieter while the kick still rings: found (the
    known kick is subtracted before detection), named, and the end of the kick's known
    part is no onset."""
    lib_path, files, _ = library
    parts = [(files[0], 0.5, 0.0), (files[second], 0.5 + gap_s, gain_db)]
    y, starts = _perform(parts, 1.5)
    ladder, lib = _ladder(lib_path)
    with lib:
        hits = _by_hit(_run(ladder, y))
    assert len(hits) == 2, [h[0].onset_s for h in hits.values()]
    found = hits[1]
    assert abs(found[0].onset_s - starts[1]) < 0.01
    assert Path(found[-1].matches[0]["path"]) == files[second].resolve()


def test_hits_through_a_running_daemon(library: Any, tmp_path: Path) -> None:
    """A performance file through ``emberd run`` (fast pace): hit.0 messages in stage order."""
    import zmq

    lib_path, files, _ = library
    picks = [files[0], files[3], files[6]]
    y, starts = _perform([(p, 1.0 + 0.7 * i, -4.0 * i) for i, p in enumerate(picks)], 7.5)
    perf = tmp_path / "perf.wav"
    sf.write(perf, y, SR, subtype="FLOAT")
    cfg = DaemonConfig(library=lib_path, input=str(perf), pace="fast", device="cpu",
                       model=smalllib.FAST_MODEL, zmq_pub="tcp://127.0.0.1:0",
                       control="tcp://127.0.0.1:0")  # fmt: skip
    ctx = zmq.Context()
    daemon = Daemon(cfg).start(start_input=False)
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        assert daemon.pub_endpoint is not None
        sub.connect(daemon.pub_endpoint)
        while wire.decode(sub.recv_multipart()).kind != wire.KIND_STATUS:
            pass  # the first status proves the subscription is live
        daemon.start_input()
        hits: list[wire.Message] = []
        matches: list[wire.Message] = []
        while True:
            msg = wire.decode(sub.recv_multipart())
            if msg.kind == wire.KIND_STATUS and msg.header["status"].get("final"):
                status = msg.header["status"]
                break
            if msg.kind == wire.KIND_HIT:
                hits.append(msg)
            elif msg.kind == wire.KIND_MATCH:
                matches.append(msg)
    finally:
        daemon.close()
        sub.close(0)
        ctx.term()
    assert status["hits"] == len(picks)
    assert status["hit_lost_frames"] == 0 and status["hit_flush_stalls"] == 0
    # The level gate: hops whose whole encoder window is noise floor publish no match.
    window_s = status["window_ms"] / 1000.0
    late = [m for m in matches if m.header["stream_s"] - window_s > starts[-1] + TAIL_S]
    assert late and all(not m.header["matches"] for m in late)
    assert any(m.header["matches"] for m in matches if m.header["stream_s"] < starts[-1] + 1)
    assert [m.header["hit"] for m in hits if m.header["stage"] == "provisional"] == [0, 1, 2]
    for i, pick in enumerate(picks):
        mine = [m.header for m in hits if m.header["hit"] == i]
        assert [h["stage"] for h in mine] == ["provisional", "refined", "refined", "final"]
        assert all(abs(h["onset_s"] - starts[i]) < 0.01 for h in mine)
        assert Path(mine[-1]["matches"][0]["path"]) == pick.resolve()
        assert mine[-1]["answer"] == "exact"
        assert all(h["latency_ms"] == pytest.approx((h["publish_time"] - h["onset_time"]) * 1000,
                                                    abs=0.01) for h in mine)  # fmt: skip


def test_two_channels_hitting_at_once_are_two_hits(library: Any) -> None:
    lib_path, files, _ = library
    a, _ = _perform([(files[0], 0.5, 0.0)], 1.5, seed=1)
    b, _ = _perform([(files[6], 0.5, -6.0)], 1.5, seed=2)
    lib = Library.open(lib_path)
    with lib:
        ladder = HitLadder(HitIndex.from_library(lib), lib.files(), sr=SR, channels=[3, 5],
                           model="test", time_of=lambda pos: pos / SR)  # fmt: skip
        out: list[HitResult] = []
        for i in range(0, len(a), BLOCK):
            out += ladder.push(0, a[i : i + BLOCK]) + ladder.push(1, b[i : i + BLOCK])
        out += ladder.flush()
    finals = {r.channel: r for r in out if r.stage == "final"}
    assert sorted(finals) == [3, 5] and all(r.hit == 0 for r in finals.values())
    assert Path(finals[3].matches[0]["path"]) == files[0].resolve()
    assert Path(finals[5].matches[0]["path"]) == files[6].resolve()


class _Sink:
    """An output that keeps what it is given (``delay_s``: a slow consumer)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.items: list[HitResult] = []
        self.delay_s = delay_s

    def put(self, item: HitResult) -> None:
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        self.items.append(item)


def test_hits_after_the_tap_lost_frames_keep_their_times(library: Any) -> None:
    """The live producer laps the tap (it fell a whole ring behind): the lost frames are
    counted, and the hits in what is left carry the onset of their ring position, not
    one early by the lost time."""
    from emberd.daemon.feed import FeederInput, array_blocks
    from emberd.daemon.hits import HitThread

    lib_path, files, _ = library
    picks = [files[0], files[3], files[6]] * 3
    y, starts = _perform([(p, 0.7 + 1.0 * i, -6.0) for i, p in enumerate(picks)], 9.0)
    source = FeederInput(array_blocks(y[:, None]), sr=SR, channels=1, pace="realtime",
                         loop=False, description="test")  # fmt: skip
    sink = _Sink()
    ladder, lib = _ladder(lib_path)
    with lib:
        thread = HitThread(ladder, [sink], source=source, channel_index=[0], realtime=True)
        consumed = np.zeros((BLOCK, 1), np.float32)
        for i in range(0, len(y), BLOCK):  # the producer and the worker, before the tap runs
            source.ring.write(y[i : i + BLOCK, None])
            source.clock.mark(source.ring.total_written)
            source.ring.read(consumed)
        thread.start()
        assert thread.flush(stall_s=30.0)
        thread.stop()
        thread.join(5)
    held_from = (len(y) - source.ring.capacity) / SR
    assert thread.lost_frames == len(y) - source.ring.capacity
    assert thread.describe()["hit_lost_frames"] == thread.lost_frames
    finals = [r for r in sink.items if r.stage == "final"]
    expected = [s for s in starts if s > held_from + 0.1]
    assert len(finals) == len(expected), [r.onset_s for r in finals]
    for r, s in zip(finals, expected, strict=True):
        assert abs(r.onset_s - s) < 0.01 and abs(r.onset_time - s) < 0.01, (r.onset_s, s)
        assert r.capture_time > r.onset_time


def test_a_gap_in_the_input_ends_open_hits_and_is_no_onset(library: Any) -> None:
    """Input jumps ahead mid-sound (audio read while paused, frames lost): the open hit
    gets its final answer at once, the splice into a loud ringing sound starts no hit,
    and the next hits carry their true onsets."""
    lib_path, files, _ = library
    parts = [(files[0], 0.5, 0.0), (files[0], 1.9, 0.0), (files[3], 2.6, -6.0)]
    y, starts = _perform(parts, 3.5)
    gap = (int(0.6 * SR), int(1.95 * SR))  # from 100 ms into hit 0 to 50 ms into hit 1
    ladder, lib = _ladder(lib_path)
    out: list[HitResult] = []
    with lib:
        for i in range(0, len(y), BLOCK):
            if gap[0] <= i < gap[1]:
                continue
            out += ladder.push(0, y[i : i + BLOCK], at=i)
        out += ladder.flush()
    hits = _by_hit(out)
    assert sorted(hits) == [0, 1], [h[0].onset_s for h in hits.values()]
    assert hits[0][-1].stage == "final" and hits[0][-1].capture_time < gap[0] / SR + 0.01
    assert abs(hits[1][0].onset_s - starts[2]) < 0.01
    assert abs(hits[1][0].onset_time - starts[2]) < 0.01
    assert Path(hits[1][-1].matches[0]["path"]) == files[3].resolve()


def test_flush_waits_while_the_hit_thread_makes_progress(library: Any) -> None:
    """End of input with answers still to give, slower than the flush's stall time in
    all (a slow output, a loaded machine): the flush waits as long as answers keep
    coming, and every hit gets its final answer before it returns."""
    from emberd.daemon.feed import FeederInput, array_blocks
    from emberd.daemon.hits import HitThread

    lib_path, files, _ = library
    picks = [files[0], files[3], files[6], files[1], files[4]]
    y, _ = _perform([(p, 0.3 + 0.5 * i, -6.0) for i, p in enumerate(picks)], 3.0)
    source = FeederInput(array_blocks(y[:, None]), sr=SR, channels=1, pace="fast",
                         loop=False, description="test")  # fmt: skip
    sink = _Sink(delay_s=0.1)  # 20 answers: 2 s in all, 0.1 s each
    ladder, lib = _ladder(lib_path)
    with lib:
        thread = HitThread(ladder, [sink], source=source, channel_index=[0], realtime=False)
        for i in range(0, len(y), BLOCK):
            source.ring.write(y[i : i + BLOCK, None])
        thread.start()
        assert thread.flush(stall_s=0.5)
        thread.stop()
        thread.join(5)
    finals = [r for r in sink.items if r.stage == "final"]
    assert len(finals) == len(picks), [(r.onset_s, r.matches[0]["name"]) for r in finals]
    assert thread.flush_stalls == 0


def test_a_reload_finishes_open_hits_and_keeps_numbering(library: Any) -> None:
    """A reload swaps in a new ladder while a hit is still sounding: that hit gets its
    final answer (from what it has), and the new ladder's hits go on numbering, so
    ``(channel, hit)`` names one hit for the whole run (with the numbers restarting at 0,
    the session soak's scoring merged different hits and lost most of them)."""
    import time

    from emberd.daemon.feed import FeederInput, array_blocks
    from emberd.daemon.hits import HitThread

    lib_path, files, _ = library
    picks = [files[0], files[3], files[6], files[1]]
    starts = [0.3, 0.8, 1.6, 2.1]
    y, _ = _perform([(p, s, -6.0) for p, s in zip(picks, starts, strict=True)], 3.0)
    cut = int(0.9 * SR)  # 0.1 s into the second hit: its later stages are not due yet
    source = FeederInput(array_blocks(y[:, None]), sr=SR, channels=1, pace="fast",
                         loop=False, description="test")  # fmt: skip
    sink = _Sink()
    ladder, lib = _ladder(lib_path)
    ladder2, lib2 = _ladder(lib_path)
    with lib, lib2:
        thread = HitThread(ladder, [sink], source=source, channel_index=[0], realtime=False)
        thread.start()
        for i in range(0, cut, BLOCK):
            source.ring.write(y[i : min(i + BLOCK, cut), None])
        deadline = time.monotonic() + 30.0
        while thread._pos < cut and time.monotonic() < deadline:
            time.sleep(0.01)
        thread.replace(ladder2)
        for i in range(cut, len(y), BLOCK):
            source.ring.write(y[i : i + BLOCK, None])
        assert thread.flush(stall_s=5.0)
        thread.stop()
        thread.join(5)
    hits = _by_hit(sink.items)
    assert sorted(hits) == [0, 1, 2, 3], {i: [r.onset_s for r in h] for i, h in hits.items()}
    for i, stages in hits.items():
        assert stages[-1].stage == "final", (i, [r.stage for r in stages])
        assert abs(stages[0].onset_s - starts[i]) < 0.02, (i, stages[0].onset_s)
    assert ladder2.hits_started == 4


def test_annoy_answers_of_several_queries_are_rectangular() -> None:
    """Annoy may answer one query with fewer than k items (approximate search; not
    reproducible on demand): several queries still make one [queries, k] array, a short
    row padded with its own last id, an empty one with -1 (dropped by the callers), and
    the rows found for the other queries kept."""
    from emberd.library.hitindex import _AnnoyVectors, rectangular

    ids = np.arange(10) + 1000
    rows, scores = rectangular([([3, 1, 2], [0.1, 0.2, 0.3]), ([], []), ([5], [0.0])], ids, 3)
    assert rows.tolist() == [[1003, 1001, 1002], [-1, -1, -1], [1005, 1005, 1005]]
    assert scores[1].tolist() == [-1.0] * 3 and scores[2, 0] == 1.0 and scores[2, 1] == -1.0
    # and the real forest: k above the items gives every item once, best first
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows, scores = _AnnoyVectors(np.arange(40) + 1000, vectors).search(vectors[:3], 60)
    assert rows.shape == scores.shape == (3, 40)
    assert rows[:, 0].tolist() == [1000, 1001, 1002]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
