"""A file played once is analysed to its end: the tail is padded with silence, as indexed.

``emberd run --input kick.wav`` (no ``--loop``) must name kick.wav: the daemon pads the
end of the input with one window of silence and hops through it, so the window that
starts at the sound's onset is analysed exactly as the library embedded the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require
from test_daemon_e2e import _config, _run_collect

from emberd.clients import wire
from emberd.testing import smalllib


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("flushlib")
    files = smalllib.write_sounds(root / "sounds", per_folder=4)
    lib = root / "lib"
    proc = smalllib.index([root / "sounds"], lib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return lib, files


EXACT_SCORE = 0.999  # cosine of the very window the library indexed (float rounding only)


def _tops(lib: Path, played: Path, **kw: object) -> list[str]:
    return [path for path, _score in _top_scores(lib, played, **kw)]


def _top_scores(lib: Path, played: Path, **kw: object) -> list[tuple[str, float]]:
    msgs, _status = _run_collect(_config(lib, played, **kw))
    return [(m.header["matches"][0]["path"], m.header["matches"][0]["score"]) for m in msgs
            if m.kind == wire.KIND_MATCH and m.header["matches"]]  # fmt: skip


def test_every_library_file_played_once_gets_its_indexed_window(
    library: tuple[Path, list[Path]]
) -> None:
    lib, files = library
    best = {}
    for f in files:
        scores = [score for path, score in _top_scores(lib, f) if Path(path).name == f.name]
        best[f.name] = max(scores, default=0.0)
    missed = {name: round(score, 4) for name, score in best.items() if score < EXACT_SCORE}
    assert not missed, missed


def test_one_shots_played_once_in_real_time_are_named(library: tuple[Path, list[Path]]) -> None:
    lib, files = library
    missed = {}
    for kick in [f for f in files if f.parent.name == "Kicks"]:
        tops = _tops(lib, kick, pace="realtime")
        if not any(Path(t).name == kick.name for t in tops):
            missed[kick.name] = sorted({Path(t).name for t in tops})
    assert not missed, missed


def test_aisfx_streaming_names_one_shots_played_once(
    library: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    from emberd.models import registry

    aisfx = next(m for m in registry.list_models() if m.name == "aisfx")
    require(registry.available(aisfx), "the fetched aiSFX model (emberd models fetch aisfx)")
    _lib, files = library
    lib = tmp_path / "lib"
    proc = smalllib.index([files[0].parent.parent], lib, model="aisfx")
    assert proc.returncode == 0, proc.stderr[-2000:]
    missed = []
    for f in files:
        tops = _tops(lib, f, model="aisfx", encoder="streaming")
        if not any(Path(t).name == f.name for t in tops):
            missed.append((f.name, sorted({Path(t).name for t in tops})))
    assert not missed, missed
