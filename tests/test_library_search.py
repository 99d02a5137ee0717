"""Search back ends, the Annoy manifest guard, ingestion checks, scanning, live windows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emberd.errors import EmberdError
from emberd.library import Library
from emberd.library.indexer import Indexer
from emberd.library.query import query_vector
from emberd.library.scan import scan
from emberd.library.search import AnnoySearch, ExactSearch, build_annoy, normalize
from emberd.library.store import Store, check_vector
from emberd.testing import smalllib

MODEL = "dsp-baseline"
SR = 44100


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    return (centres[rng.integers(20, size=n)] + 0.3 * rng.standard_normal((n, dim))).astype(
        np.float32
    )


def test_exact_search_matches_brute_force() -> None:
    data = _clustered(500, 32)
    ids = np.arange(1000, 1500)
    q = _clustered(7, 32, seed=1)
    got_ids, got_scores = ExactSearch(ids, data).search(q, 10)
    cos = normalize(q) @ normalize(data).T
    want = np.argsort(-cos, axis=1)[:, :10]
    np.testing.assert_array_equal(got_ids, ids[want])
    np.testing.assert_allclose(got_scores, np.take_along_axis(cos, want, 1), rtol=1e-5)
    assert ExactSearch(ids[:3], data[:3]).search(q, 10)[0].shape == (7, 3)


def test_annoy_recall_manifest_and_atomic_replace(tmp_path: Path) -> None:
    data, held_out = np.split(_clustered(2050, 24), [2000])
    ids = np.arange(2000)
    m1 = build_annoy(tmp_path, "m", "1", ids, data, trees=16)
    ann = AnnoySearch.open(tmp_path, "m", dim=24)
    assert ann is not None and len(ann) == 2000
    q = held_out  # same clusters, not library items: an item would find itself
    got, scores = ann.search(q, 10)
    want, _ = ExactSearch(ids, data).search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)])
    assert recall >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert (ann.search(data[:50], 1)[0][:, 0] == ids[:50]).all()  # an item finds itself
    ann.unload()
    # Rebuild: the manifest points at the new file, the old one is gone.
    m2 = build_annoy(tmp_path, "m", "1", ids[:100], data[:100], trees=4, generation=5)
    assert sorted(p.name for p in tmp_path.glob("*.ann")) == [m2.file] != [m1.file]
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["items"] == 100 and manifest["generation"] == 5
    assert manifest["dim"] == 24 and manifest["metric"] == "angular"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "truncated"),
        ("garble", "checksum"),
        ("dim", "dim"),
        ("escape", "bad index file name"),
        ("types", "wrong type"),
        ("junk", "unreadable index manifest"),
    ],
)
def test_damaged_index_refused_before_annoy_maps_it(tmp_path: Path, damage: str,
                                                    message: str) -> None:
    data = _clustered(300, 16)
    m = build_annoy(tmp_path, "m", "1", np.arange(300), data, trees=4)
    ann_path, man_path = tmp_path / m.file, tmp_path / "m.json"
    manifest = json.loads(man_path.read_text())
    if damage == "truncate":
        os.truncate(ann_path, ann_path.stat().st_size // 2)
    elif damage == "garble":
        raw = bytearray(ann_path.read_bytes())
        raw[100:140] = bytes(40)
        ann_path.write_bytes(bytes(raw))
    elif damage == "dim":
        man_path.write_text(json.dumps({**manifest, "dim": 17}))
    elif damage == "escape":
        man_path.write_text(json.dumps({**manifest, "file": "../x.ann"}))
    elif damage == "types":
        man_path.write_text(json.dumps({**manifest, "file_size": None}))
    else:
        man_path.write_bytes(b"\x00garbage")
    with pytest.raises(EmberdError, match=message):
        AnnoySearch.open(tmp_path, "m", dim=16)


def test_nan_and_zero_vectors_rejected_at_ingestion(tmp_path: Path) -> None:
    for bad, what in ((np.array([1.0, np.nan]), "NaN"), (np.zeros(4), "zero"),
                      (np.array([np.inf, 1.0]), "NaN or infinite"), (np.zeros((2, 2)), "1-D")):
        with pytest.raises(EmberdError, match=what):
            check_vector(bad, "x")
    store = Store(tmp_path / "lib")
    with pytest.raises(EmberdError, match="NaN"), store.transaction():
        store.ensure_model("m", "1", 2)
        fid = store.upsert_file("/a.wav", "/", 1, 1, "h", 1.0, SR, 1, [])
        store.put_vectors(fid, "m", np.array([1.0, 0.0]), [(1.0, np.array([np.nan, 1.0]))])
    assert store.counts() == {"files": 0, "vectors": 0, "fingerprints": 0}  # rolled back
    store.close()


def test_scan_loops_sniffing_hidden_and_tags(tmp_path: Path) -> None:
    root = tmp_path / "Samples"
    (root / "Drums" / "Kicks").mkdir(parents=True)
    y = np.sin(np.arange(4410) / 10.0).astype(np.float32)
    sf.write(root / "Drums" / "Kicks" / "k.wav", y, SR)
    sf.write(root / "Drums" / "noext", y, SR, format="WAV")
    sf.write(root / "Drums" / ".hidden.wav", y, SR)
    (root / "Drums" / "notes.txt").write_text("hello")
    (root / "Drums" / "Kicks" / "up").symlink_to(root)
    (root / "Drums" / "Kicks" / "self").symlink_to(root / "Drums" / "Kicks")
    res = scan([root])
    assert [Path(c.path).name for c in res.candidates] == ["k.wav", "noext"]
    assert res.candidates[0].tags == ["Drums", "Kicks"] and res.candidates[1].tags == ["Drums"]
    assert sorted(Path(s.path).name for s in res.skipped) == ["self", "up"]
    with pytest.raises(EmberdError, match="no such folder"):
        scan([tmp_path / "missing"])


def test_live_window_matches_segment_of_a_long_loop(tmp_path: Path) -> None:
    sounds = tmp_path / "sounds"
    smalllib.write_sounds(sounds, per_folder=2)
    (sounds / "Loops").mkdir()
    rng = np.random.default_rng(3)
    # Four 2.32 s sections (one window each), each a different kind of hit every 250 ms:
    # a window over one section must match that part of the loop, not the whole loop.
    section = 102400  # samples: 100 frames of 1024
    loop = np.zeros(4 * section, np.float32)
    for k, folder in enumerate(("Kicks", "Snares", "Hats", "Pads")):
        hits = [sf.read(p, dtype="float32")[0] for p in sorted((sounds / folder).glob("*.wav"))]
        for j, start in enumerate(range(k * section, (k + 1) * section - SR // 4, SR // 4)):
            h = hits[j % len(hits)][: SR // 4]
            loop[start : start + len(h)] += 0.5 * h
    sf.write(sounds / "Loops" / "loop.wav", loop, SR)
    ix = Indexer(tmp_path / "lib", MODEL, jobs=0)
    try:
        assert ix.run([str(sounds)]).indexed == 9
    finally:
        ix.close()
    with Library.open(tmp_path / "lib") as lib:
        hop_s = 1024 / SR
        start_s = 2 * 100 * hop_s  # the third section = the fifth segment (every 50 frames)
        n0 = round(start_s * SR)
        window = loop[n0 : n0 + round(100 * hop_s * SR)]
        best = lib.search(query_vector(window, SR, MODEL)[None, :], 3, model=MODEL)[0][0]
        assert best["name"] == "loop.wav" and best["tags"] == ["Loops"]
        assert best["segment_start_s"] == pytest.approx(start_s, abs=0.01)
        noisy = window + 0.02 * rng.standard_normal(len(window)).astype(np.float32)
        ident = lib.identify(noisy, SR)
        assert ident and ident[0]["name"] == "loop.wav" and ident[0]["kind"] == "exact"
        assert ident[0]["segment_start_s"] == pytest.approx(start_s, abs=0.05)
