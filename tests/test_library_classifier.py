"""The instrument-class head fitted at index time (emberd.library.classifier)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emberd.library.classifier import (
    ClassHead,
    classify_waveform,
    fit_head,
    head_path,
    library_labels,
)
from emberd.library.query import query_vector
from emberd.testing import smalllib


def test_fit_head_separates_and_drops_rare_classes() -> None:
    rng = np.random.default_rng(0)
    centres = {"kick": np.eye(16)[0], "snare": np.eye(16)[1], "pad": np.eye(16)[2]}
    x, y = [], []
    for cls, c in centres.items():
        for _ in range(20):
            x.append(c + 0.2 * rng.standard_normal(16))
            y.append(cls)
    x.append(np.eye(16)[3])
    y.append("vocal")  # one labelled vocal: too few to learn
    head = fit_head(np.array(x), y, model="m")
    assert head is not None
    assert head.classes == ["kick", "snare", "pad"]  # vocabulary order, vocal left out
    assert head.counts == {"kick": 20, "snare": 20, "pad": 20}
    test = np.stack([c + 0.2 * rng.standard_normal(16) for c in centres.values()])
    got = head.predict(test)
    assert [c for c, _ in got] == ["kick", "snare", "pad"]
    assert all(0.5 < p <= 1.0 for _, p in got)
    assert fit_head(np.array(x[:20]), y[:20]) is None  # one class: nothing to tell apart


def test_save_load_round_trip_and_damage(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 8))
    head = fit_head(x, ["kick"] * 6 + ["snare"] * 6, model="m")
    assert head is not None
    path = tmp_path / "classes-m.npz"
    head.save(path)
    back = ClassHead.load(path)
    assert back is not None and back.classes == head.classes and back.counts == head.counts
    np.testing.assert_allclose(back.probabilities(x), head.probabilities(x), atol=1e-5)
    path.write_bytes(b"not an npz")
    assert ClassHead.load(path) is None  # logged, classes from names only
    assert ClassHead.load(tmp_path / "absent.npz") is None


def test_labels_prefer_drumkit_xml(tmp_path: Path) -> None:
    kit = tmp_path / "Kit"
    kit.mkdir()
    (kit / "drumkit.xml").write_text(
        "<drumkit_info><instrumentList><instrument><name>Kick</name>"
        "<filename>take1.wav</filename></instrument></instrumentList></drumkit_info>"
    )
    for name in ("take1.wav", "take2.wav"):
        (kit / name).write_bytes(b"RIFF")
    other = tmp_path / "Snares" / "x.wav"
    labels = library_labels([str(kit / "take1.wav"), str(kit / "take2.wav"), str(other)],
                            [str(tmp_path)] * 3)  # fmt: skip
    assert labels == ["kick", None, "snare"]


def test_index_fits_a_head_that_names_nameless_sounds(tmp_path: Path) -> None:
    smalllib.write_sounds(tmp_path / "sounds", per_folder=6)
    lib = tmp_path / "lib"
    proc = smalllib.index([tmp_path / "sounds"], lib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "instrument classes learnt from named sounds: kick 6, snare 6, closed_hat 6, pad 6" in (
        proc.stdout + proc.stderr
    )
    head = ClassHead.load(head_path(lib, smalllib.FAST_MODEL))
    assert head is not None and head.classes == ["kick", "snare", "closed_hat", "pad"]
    # An index run that changes nothing keeps the head as it is (no refit).
    mtime = head_path(lib, smalllib.FAST_MODEL).stat().st_mtime_ns
    assert smalllib.index([tmp_path / "sounds"], lib).returncode == 0
    assert head_path(lib, smalllib.FAST_MODEL).stat().st_mtime_ns == mtime
    # New sounds (other seeds, other variants) under names that say nothing.
    fresh = smalllib.write_sounds(tmp_path / "fresh", per_folder=3, seed=5, start=40)
    truth = {"Kicks": "kick", "Snares": "snare", "Hats": "closed_hat", "Pads": "pad"}
    right = 0
    for path in fresh:
        y, sr = sf.read(path, dtype="float32")
        cls, _conf = head.predict(query_vector(y, sr, smalllib.FAST_MODEL))[0]
        right += cls == truth[path.parent.name]
    assert right / len(fresh) >= 0.75, right
    # The waveform entry point (what hits of non-library sounds use): the sound's first
    # 250 ms as a hit window, in stereo at another rate; silence has no class.
    from emberd.dsp.resample import mono_at
    from emberd.library.query import encoder_for

    encoder = encoder_for(smalllib.FAST_MODEL)
    right = 0
    for path in fresh:
        y, sr = sf.read(path, dtype="float32")
        hit = mono_at(y, sr, 48000)[: 48000 // 4]
        got = classify_waveform(np.stack([hit, hit], axis=1), 48000, head=head, encoder=encoder)
        assert got is not None and 0.0 < got[1] <= 1.0
        right += got[0] == truth[path.parent.name]
    assert right / len(fresh) >= 0.75, right
    assert classify_waveform(np.zeros(4410, np.float32), 44100, head=head, encoder=encoder) is None
    # Every match object carries the class its names give (hits and live matches alike).
    from emberd.library import Library

    y, sr = sf.read(fresh[0], dtype="float32")
    with Library.open(lib) as library:
        found = library.search(query_vector(y, sr, smalllib.FAST_MODEL)[None], 4,
                               model=smalllib.FAST_MODEL)[0]  # fmt: skip
    by_folder = {"Kicks": "kick", "Snares": "snare", "Hats": "closed_hat", "Pads": "pad"}
    assert found and all(m["class"] == by_folder[Path(m["path"]).parent.name] for m in found)
    # A library whose names teach nothing gets no head (and loses an old one).
    for i, path in enumerate(sorted((tmp_path / "sounds").rglob("*.wav"))):
        path.rename(tmp_path / "sounds" / f"take {i}.wav")
    for folder in ("Kicks", "Snares", "Hats", "Pads"):
        (tmp_path / "sounds" / folder).rmdir()
    proc = smalllib.index([tmp_path / "sounds"], lib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not head_path(lib, smalllib.FAST_MODEL).exists()


@pytest.mark.parametrize("bad", [np.nan, 0.0])
def test_predict_on_odd_vectors_never_crashes(bad: float) -> None:
    rng = np.random.default_rng(2)
    head = fit_head(rng.standard_normal((12, 4)), ["kick"] * 6 + ["snare"] * 6)
    assert head is not None
    if np.isnan(bad):
        return  # vectors are checked for NaN before they reach the head (store.check_vector)
    cls, conf = head.predict(np.full(4, bad))[0]
    assert cls in ("kick", "snare") and 0.0 <= conf <= 1.0
