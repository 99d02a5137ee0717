"""A ``reload`` of an unchanged library keeps the hit index, its class model and sounds.

The daemon answers ``reload`` on its analysis thread, and building the hit index is
its costly part (the class model's fit: 0.4-0.8 CPU-s for the session soak's 62 files,
3.3 s for 663). The session soak reloads every 9 s; each rebuild held the hops back,
and on a busy moment the backlog passed the catch-up limit and hops were dropped. The
index is now rebuilt only when the library's files, paths or snippets changed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from emberd.daemon import status
from emberd.daemon.worker import HitIndexReloads, _IndexBuilder
from emberd.library import Library
from emberd.library.hitindex import HitIndex, IndexSource
from emberd.testing import smalllib
from emberd.testing.harness import Daemon, wait_for

WAIT_S = 60.0  # generous: a busy 2-core machine


@pytest.fixture()
def sounds(tmp_path: Path) -> tuple[Path, Path]:
    """A library of the first sounds, and a folder of more sounds not yet in it."""
    smalllib.write_sounds(tmp_path / "a", per_folder=2)
    smalllib.write_sounds(tmp_path / "b", per_folder=2, start=50)
    lib = tmp_path / "lib"
    proc = smalllib.index([tmp_path / "a"], lib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return lib, tmp_path / "b"


def _sources(lib: Path, more: Path) -> tuple[IndexSource, IndexSource, dict[int, Any]]:
    """The library's index source, then the changed library's and its files."""
    with Library.open(lib) as first:
        before = IndexSource.read(first)
    assert smalllib.index([more], lib).returncode == 0  # the library changes
    with Library.open(lib) as changed:
        return before, IndexSource.read(changed), changed.files()


def _wait_built(reloads: HitIndexReloads) -> None:
    """Wait until the builder has posted a result, leaving it to be taken."""
    results = reloads._builder.results if reloads._builder is not None else None
    assert results is not None
    results.put(results.get(timeout=WAIT_S))


def test_an_unchanged_library_keeps_the_index(sounds: tuple[Path, Path]) -> None:
    lib, more = sounds
    before, after, files = _sources(lib, more)
    index = HitIndex.build(before)
    with Library.open(lib) as again:  # another connection, the same files: the same key
        assert IndexSource.read(again).key == after.key
    assert index.content_key == before.key != after.key
    reloads = HitIndexReloads(index)
    try:
        assert reloads.reload(before, files) == "kept" and reloads.index is index
        assert reloads.reload(after, files) == "building" and reloads.building
        built = reloads.take(wait_s=WAIT_S)
        assert built is not None and built[1] is files and reloads.builds == 2
        assert built[0] is reloads.index and len(built[0]) > len(index)
        assert reloads.reload(after, files) == "kept" and not reloads.building
    finally:
        reloads.stop(WAIT_S)


def test_an_index_built_for_a_replaced_reload_is_dropped(sounds: tuple[Path, Path]) -> None:
    """A -> B (building) -> A (kept) while B builds: A's index keeps answering, and B's is
    neither counted nor handed over (the builder never writes the worker's state)."""
    lib, more = sounds
    before, after, files = _sources(lib, more)
    index = HitIndex.build(before)
    reloads = HitIndexReloads(index)
    try:
        assert reloads.reload(after, files) == "building"
        _wait_built(reloads)  # B is built (the builder thread is done), not yet taken
        assert reloads.reload(before, files) == "kept"
        assert reloads.take() is None  # B's result is dropped
        assert reloads.index is index and reloads.builds == 1
    finally:
        reloads.stop(WAIT_S)


def test_a_failed_build_is_retried_by_the_next_reload(sounds: tuple[Path, Path]) -> None:
    """A build that raises ends the wait: the next reload of the same library builds again
    (it used to answer 'building' for ever, the key being the one still 'pending')."""
    lib, more = sounds
    before, after, files = _sources(lib, more)
    broken = dataclasses.replace(after, snippets=after.snippets[:, :0])  # build raises
    with pytest.raises(ValueError):
        HitIndex.build(broken)
    failed = status.swallowed_counts().get("hit index build", 0)
    reloads = HitIndexReloads(HitIndex.build(before))
    try:
        assert reloads.reload(broken, files) == "building"
        assert reloads.take(wait_s=WAIT_S) is None and reloads.builds == 1
        assert status.swallowed_counts()["hit index build"] == failed + 1
        assert not reloads.building, "a failed build still counts as being built"
        assert reloads.reload(after, files) == "building"  # the same key: built again
        built = reloads.take(wait_s=WAIT_S)
        assert built is not None and built[0].content_key == after.key
        assert reloads.builds == 2
    finally:
        reloads.stop(WAIT_S)


def test_stopping_drops_queued_builds_and_a_finished_result(sounds: tuple[Path, Path]) -> None:
    lib, more = sounds
    before, after, files = _sources(lib, more)
    # queued jobs are never built once a stop is queued behind them
    builder = _IndexBuilder()  # not started: run() below drains the queue on this thread
    for i in range(3):
        builder.submit(dataclasses.replace(after, key=bytes([i]) * 16))
    builder.stop()
    builder.run()
    assert builder.results.empty(), "queued builds ran before the stop"
    # a result the builder posted before the stop is never taken
    reloads = HitIndexReloads(HitIndex.build(before))
    assert reloads.reload(after, files) == "building"
    _wait_built(reloads)
    reloads.stop(WAIT_S)
    assert reloads.take() is None and reloads.builds == 1 and not reloads.building


def test_daemon_reload_builds_the_hit_index_only_when_the_library_changed(
    sounds: tuple[Path, Path], tmp_path: Path
) -> None:
    lib, more = sounds
    perf = smalllib.write_performance(tmp_path / "perf.wav", seconds=4.0)
    with Daemon(smalllib.daemon_args(lib, perf), tmp_path / "daemon.log", osc_in=False) as d:
        st = d.status()
        assert st["hit_index_builds"] == 1 and st["reload_ms"] == 0.0
        files = st["hit_index_files"]
        for _ in range(3):
            reply = d.request("reload")
            assert reply["ok"] and reply["hit_index"] == "kept", reply
        st = d.status()
        assert st["hit_index_builds"] == 1, "a reload of an unchanged library rebuilt it"
        assert st["reload_ms"] > 0.0 and st["hit_index_files"] == files
        assert smalllib.index([more], lib).returncode == 0
        reply = d.request("reload")
        # built beside the analysis thread, which answers at once and goes on with the hops
        assert reply["ok"] and reply["hit_index"] == "building", reply
        wait_for(lambda: d.status()["hit_index_builds"] == 2, WAIT_S, what="the new index")
        # the hit thread answers from the new index once the old ladder's hits are done
        wait_for(lambda: d.status()["hit_index_files"] > files, WAIT_S, what="its ladder")
        reply = d.request("reload")
        assert reply["hit_index"] == "kept" and d.status()["hit_index_builds"] == 2, reply
        assert d.alive(), d.log_tail()


def test_whole_sounds_are_kept_without_their_trailing_zeros(
    sounds: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole-sound cache keeps a file up to its last non-zero sample, answers exactly
    as the whole 2-s window did, and never holds more than SOUND_CACHE_BYTES."""
    import numpy as np

    from emberd.dsp.sources import load_audio
    from emberd.library import hitindex as hx

    lib, _ = sounds
    with Library.open(lib) as library:
        index = HitIndex.from_library(library)
        files = library.files()
    n = round(hx.SOUND_MAX_S * hx.WAVE_SR)
    loaded = []
    for row, fid in enumerate(index.file_ids.tolist()):
        path = files[fid].path
        if index.load_sound(row, path) != n:
            continue  # did not match its snippet: the snippet is used
        loaded.append(row)
        y, _ = load_audio(path, sr=hx.WAVE_SR)
        assert len(y) < n  # the test sounds are shorter than SOUND_MAX_S
        window = index.aligned_sound(row, path)  # the 2-s window before its zeros are cut
        assert window is not None and len(window) == n
        whole = np.float32(0.5) * window
        tail = int(np.flatnonzero(whole)[-1]) + 1
        assert tail < n - 400, "no trailing zeros to trim"
        for start, length in ((0, n), (tail - 300, 600), (tail, 400), (-50, 100)):
            got = index.placed(row, 0.5, start, length)
            want = np.zeros(length, np.float32)
            a, b = max(start, 0), min(start + length, n)
            want[a - start : b - start] = whole[a:b]
            np.testing.assert_array_equal(got, want)
    assert loaded, "no library sound matched its snippet"
    held = index.sound_bytes()
    assert held == sum(s[0].nbytes for s in index._sounds.values() if s is not None)
    assert held < len(loaded) * n * 4 // 2, "the zeros after the files' ends were kept"
    # the byte bound: a cache of half of what was held keeps the newest sounds under it
    monkeypatch.setattr(hx, "SOUND_CACHE_BYTES", held // 2)
    with Library.open(lib) as library:
        small = HitIndex.from_library(library)
    for row in loaded:
        small.load_sound(row, files[int(small.file_ids[row])].path)
        assert small.sound_bytes() <= held // 2 or len(small._sounds) == 1
    assert 0 < small.sound_bytes() <= held // 2
