"""The instrument-class head fitted at index time (emberd.library.classifier)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emberd.library.classifier import (
    ClassHead,
    classify_waveform,
    file_classes_path,
    fit_head,
    head_path,
    library_labels,
    load_file_classes,
    predict_file_classes,
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


def test_index_gives_nameless_files_a_class_the_hit_ladder_answers_with(tmp_path: Path) -> None:
    """Issue 19/12: every library file gets a class at index time (names where they say
    one, else the kernel head on vector + envelope), and the hit index answers a
    name-less file as a sound of that class."""
    from emberd.library import Library
    from emberd.library.hitindex import HitIndex, IndexSource

    sounds = tmp_path / "sounds"
    smalllib.write_sounds(sounds, per_folder=6)
    fresh = smalllib.write_sounds(tmp_path / "fresh", per_folder=3, seed=5, start=40)
    truth_of = {"Kicks": "kick", "Snares": "snare", "Hats": "closed_hat", "Pads": "pad"}
    (sounds / "takes").mkdir()
    truth: dict[str, str] = {}
    for i, path in enumerate(fresh):  # names and folder that say nothing
        dest = sounds / "takes" / f"take {i}.wav"
        path.rename(dest)
        truth[str(dest.resolve())] = truth_of[path.parent.name]
    lib = tmp_path / "lib"
    proc = smalllib.index([sounds], lib)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = load_file_classes(lib, smalllib.FAST_MODEL)
    with Library.open(lib) as library:
        files = library.files()
        source = IndexSource.read(library)
    by_path = {str(Path(files[f].path).resolve()): f for f in files}
    assert len(got) == len(files)  # every file has a class
    named = [f for p, f in by_path.items() if p not in truth]
    assert all(got[f][1] == 1.0 and got[f][0] == truth_of[Path(files[f].path).parent.name]
               for f in named)  # fmt: skip
    right = sum(got[by_path[p]][0] == cls for p, cls in truth.items())
    assert right / len(truth) >= 0.75, right
    assert all(0.0 < got[by_path[p]][1] <= 1.0 for p in truth)
    # The hit ladder's index: names stay the classes (and what the hit class model learns
    # from); a name-less file is a near answer of its guessed class when no named file of
    # that class is a candidate.
    from emberd.library import hitindex as hx

    index = HitIndex.build(source)
    row = {int(f): i for i, f in enumerate(index.file_ids.tolist())}
    src_row = {int(f): i for i, f in enumerate(source.file_ids)}
    for p in truth:
        r = row[by_path[p]]
        assert index.classes[r] is None and index.guessed[r] == got[by_path[p]][0]
        seg = source.snippets[src_row[by_path[p]]][hx.PRE_ROLL_SAMPLES - hx.DESC_OFFSET_SAMPLES :]
        named = index.candidates_of_class(seg, hx.EARLY_SAMPLES, 40, index.guessed[r])
        assert r not in named.tolist()
        near = index.candidates_of_class(seg, hx.EARLY_SAMPLES, 40, index.guessed[r],
                                         guessed=True)  # fmt: skip
        assert r in near.tolist() and all(index.classes[int(q)] is None for q in near)
    assert all(g is None for c, g in zip(index.classes, index.guessed, strict=True) if c)
    assert index.class_model is not None
    # An index run that changes nothing decodes nothing again (the file is not rewritten).
    mtime = file_classes_path(lib, smalllib.FAST_MODEL).stat().st_mtime_ns
    assert smalllib.index([sounds], lib).returncode == 0
    assert file_classes_path(lib, smalllib.FAST_MODEL).stat().st_mtime_ns == mtime


def test_folder_smoothing_follows_velocity_layers() -> None:
    """A sound whose own scores are ambiguous takes the class of its near-identical folder
    neighbours (velocity layers), never of a sound in another folder."""
    rng = np.random.default_rng(0)
    dim, n_env = 16, 139
    centres = {c: rng.standard_normal(dim) * 3 for c in ("kick", "snare", "tom")}
    whole, env, labels, folders = [], [], [], []
    for c, mu in centres.items():  # the labelled kit
        for _ in range(6):
            whole.append(mu + rng.standard_normal(dim))
            env.append(rng.standard_normal(n_env))
            labels.append(c)
            folders.append("kit-a")
    layer = (centres["tom"] + centres["kick"]) / 2  # a drum between tom and kick ...
    for k in range(4):  # ... as four velocity layers; three lean tom-wards
        lean = 0.05 if k == 0 else -0.05
        whole.append(layer + lean * (centres["kick"] - centres["tom"]) + 0.01 * k)
        env.append(np.zeros(n_env))
        labels.append(None)
        folders.append("kit-b")
    got = predict_file_classes(np.array(whole), np.array(env), labels, folders)
    assert got is not None
    classes, prob, best = got
    layers = [classes[int(b)] for b in best[-4:]]
    assert layers == ["tom"] * 4, layers  # the kick-ward layer follows its neighbours
    assert np.allclose(prob.sum(axis=1), 1.0)
    # Alone in its folder, the same sound is not pulled.
    alone = predict_file_classes(np.array(whole[:-3]), np.array(env[:-3]), labels[:-3],
                                 folders[:-3])  # fmt: skip
    assert alone is not None and alone[0][int(alone[2][-1])] == "kick"


@pytest.mark.parametrize("bad", [np.nan, 0.0])
def test_predict_on_odd_vectors_never_crashes(bad: float) -> None:
    rng = np.random.default_rng(2)
    head = fit_head(rng.standard_normal((12, 4)), ["kick"] * 6 + ["snare"] * 6)
    assert head is not None
    if np.isnan(bad):
        return  # vectors are checked for NaN before they reach the head (store.check_vector)
    cls, conf = head.predict(np.full(4, bad))[0]
    assert cls in ("kick", "snare") and 0.0 <= conf <= 1.0
