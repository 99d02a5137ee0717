"""A ``reload`` of an unchanged library keeps the hit index, its class model and sounds.

The daemon answers ``reload`` on its analysis thread, and building the hit index is
its costly part (the class model's fit: 0.4-0.8 CPU-s for the session soak's 62 files,
3.3 s for 663). The session soak reloads every 9 s; each rebuild held the hops back,
and on a busy moment the backlog passed the catch-up limit and hops were dropped. The
index is now rebuilt only when the library's files, paths or snippets changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emberd.library import Library
from emberd.library.hitindex import HitIndex
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


def test_an_unchanged_library_gives_back_the_same_index(sounds: tuple[Path, Path]) -> None:
    lib, more = sounds
    with Library.open(lib) as first:
        index = HitIndex.from_library(first)
    assert index.content_key is not None and index.class_model is not None
    with Library.open(lib) as again:  # another connection, the same generation
        assert HitIndex.from_library(again, reuse=index) is index
        fresh = HitIndex.from_library(again)
    assert fresh is not index and fresh.content_key == index.content_key
    assert smalllib.index([more], lib).returncode == 0  # the library changes
    with Library.open(lib) as changed:
        rebuilt = HitIndex.from_library(changed, reuse=index)
    assert rebuilt is not index and rebuilt.content_key != index.content_key
    assert len(rebuilt) > len(index)


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
        whole = index.placed(row, 0.5, 0, n)
        tail = int(np.flatnonzero(whole)[-1]) + 1
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
