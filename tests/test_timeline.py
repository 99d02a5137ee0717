"""``emberd query TRACK --timeline``: every library sample in a track, where, how loud, how fast.

A small real library (hydrogen one-shots and a loop made of them, DSP baseline) and
short deterministic tracks built from it with :mod:`emberd.testing.beats`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emberd.cli import main
from emberd.library import Library, timeline
from emberd.library.timeline import WAVE_SR, Timeline, _Stream
from emberd.testing import beats
from emberd.testing import drumkits as dk

KIT = "ColomboAcousticDrumkit"
OUTSIDER_KIT = "HardElectro1"  # not in the library
N_FILES = 10
START_TOL_S = 0.025
SPEED_TOL = 0.01
LONG_PIECES = 15  # x 20 s: a 5-minute track for the memory test


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, drumkit_dir: Path) -> dict:
    root = tmp_path_factory.mktemp("timeline")
    files = sorted(p for p in dk.kit_files(drumkit_dir) if Path(p).parent.name == KIT)
    sounds = root / "sounds"
    sounds.mkdir()
    picked = []
    for p in files[:: max(1, len(files) // N_FILES)][:N_FILES]:
        picked.append(sounds / Path(p).name)
        shutil.copy(p, picked[-1])
    # A one-bar loop at 120 bpm starting on its loudest hit: kick, hat, snare, hat, kick.
    loop = sounds / "loop120.wav"
    step = beats.SR // 8  # one 8th note
    y = np.zeros(8 * step, np.float32)
    for k, (i, gain) in enumerate([(0, 1.0), (5, 0.5), (9, 0.7), (5, 0.4), (0, 0.8)]):
        hit = beats.load_mono(picked[i])[: 8 * step - 2 * k * step] * np.float32(gain)
        y[2 * k * step : 2 * k * step + len(hit)] += hit if k < 4 else 0
    sf.write(loop, y / max(1.0, float(np.abs(y).max()) / 0.9), beats.SR, subtype="PCM_16")
    assert main(["index", str(sounds), "--library", str(root / "lib"), "--model",
                 "dsp-baseline", "--jobs", "0", "--quiet"]) == 0
    outsider = sorted(p for p in dk.kit_files(drumkit_dir) if Path(p).parent.name == OUTSIDER_KIT)
    return {"root": root, "lib": root / "lib", "sounds": picked, "loop": loop,
            "outsider": outsider[0]}


def _track(path: Path, parts: list[tuple[np.ndarray, float, float, float]], dur_s: float) -> None:
    y = np.zeros(int(dur_s * beats.SR), np.float32)
    for sound, start, speed, gain_db in parts:
        beats._add(y, beats.at_speed(sound, speed), start, gain_db)
    sf.write(path, y, beats.SR, subtype="FLOAT")


def _beat(lib: dict, track: Path) -> list[tuple[Path, float, float, float]]:
    """Write a 10.5-s beat of library sounds (a loop, speeds, a quiet hat under a crash)
    and two non-library sounds to ``track``; return its library events (file, start s,
    speed, gain dB)."""
    s = lib["sounds"]
    truth = [  # (file, start s, speed, gain dB)
        (s[0], 0.30, 1.0, -3.0),
        (s[5], 1.10, 0.92, -6.0),
        (s[7], 2.00, 1.08, -9.0),
        (lib["loop"], 3.00, 0.95, -4.0),
        (s[3], 7.00, 1.0, 0.0),  # a loud crash ...
        (s[6], 7.30, 1.03, -14.0),  # ... and a quiet hat under its tail: found in the residual
        (s[9], 9.00, 1.05, 0.0),
    ]
    rng = np.random.default_rng(0)
    others = [(beats.load_mono(lib["outsider"]), 1.6, 1.0, -3.0),
              (beats.synth_distractor(rng), 2.6, 1.0, -3.0)]
    _track(track, [(beats.load_mono(p), t, v, g) for p, t, v, g in truth] + others, 10.5)
    return truth


def test_a_beat_gives_its_samples_with_start_speed_and_gain(lib: dict, tmp_path: Path) -> None:
    track = tmp_path / "beat.wav"
    truth = _beat(lib, track)
    with Library.open(lib["lib"]) as library:
        res = Timeline(library).run(track)
    exact = [e for e in res.entries if e.kind == "exact"]
    got = [(Path(e.path).name, e.start_s, e.speed, e.gain_db) for e in exact]
    assert len(exact) == len(truth), got
    for (path, start, speed, gain), e in zip(truth, exact, strict=True):
        assert Path(e.path).name == Path(path).name, got
        assert abs(e.start_s - start) <= START_TOL_S, got
        assert abs(e.speed / speed - 1) <= SPEED_TOL, got
        assert abs(e.gain_db - gain) <= 1.5, got
        assert 0.5 < e.confidence <= 1.0


def test_entries_do_not_depend_on_detector_batching_or_the_decode_cache(
    lib: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The detector's speculative pushes (SPECULATE_BLOCKS at once, put back when they find
    an onset) give what a push per block gives, and a second run with every candidate
    already decoded gives what the first gave."""
    track = tmp_path / "beat.wav"
    _beat(lib, track)

    def entries(tl: Timeline) -> list[tuple[object, ...]]:
        return [(e.path, e.kind, round(e.start_s, 6), round(e.speed, 6), round(e.rho, 6))
                for e in tl.run(track).entries]

    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        first = entries(tl)
        again = entries(tl)  # the same engine: the files it decoded are cached now
        monkeypatch.setattr(timeline, "SPECULATE_BLOCKS", 1)
        one_by_one = entries(Timeline(library))
    assert first, "the beat gave no entries"
    assert again == first
    assert one_by_one == first


def test_non_library_sounds_give_no_entry(lib: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    track = tmp_path / "others.wav"
    _track(track, [(beats.load_mono(lib["outsider"]), 0.5, 1.0, -2.0),
                   (beats.synth_distractor(rng), 1.5, 1.0, -2.0),
                   (beats.synth_distractor(rng), 2.5, 1.0, -2.0)], 4.0)
    with Library.open(lib["lib"]) as library:
        res = Timeline(library).run(track)
    assert res.onsets >= 3  # the sounds were heard ...
    assert [e for e in res.entries if e.kind == "exact"] == []  # ... and claimed as nothing


def _peak_rss_mb(library: Path, track: Path) -> tuple[float, int]:
    """Run the timeline on ``track`` in a fresh process: its peak RSS (MB) and entries."""
    code = (
        "import resource, sys\n"
        "from emberd.library import Library\n"
        "from emberd.library.timeline import Timeline\n"
        "with Library.open(sys.argv[1]) as lib:\n"
        "    res = Timeline(lib).run(sys.argv[2])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(res.entries))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(library), str(track)], check=True,
                         capture_output=True, text=True, timeout=1200).stdout.split()
    return float(out[0]), int(out[1])


def _sparse_track(path: Path, hit: np.ndarray, pieces: int) -> None:
    """``pieces`` x 20 s: a quiet noise floor and one library hit per piece, written in
    pieces so the test never holds the whole file either."""
    rng = np.random.default_rng(2)
    with sf.SoundFile(path, "w", beats.SR, 1, subtype="PCM_16") as f:
        for _ in range(pieces):
            y = (rng.standard_normal(20 * beats.SR) * 1e-4).astype(np.float32)
            y[beats.SR : beats.SR + len(hit)] += hit * np.float32(0.5)
            f.write(y)


def test_a_long_file_streams_in_bounded_memory(lib: dict, tmp_path: Path) -> None:
    hit = beats.load_mono(lib["sounds"][2])
    _sparse_track(tmp_path / "short.wav", hit, 1)
    _sparse_track(tmp_path / "long.wav", hit, LONG_PIECES)
    short_mb, n_short = _peak_rss_mb(lib["lib"], tmp_path / "short.wav")
    long_mb, n_long = _peak_rss_mb(lib["lib"], tmp_path / "long.wav")
    assert (n_short, n_long) == (1, LONG_PIECES)
    # The whole file decoded at the engine's rate would be 26 MB (float32), twice that as
    # read: the peak must not grow by anything near it.
    full_mb = LONG_PIECES * 20 * WAVE_SR * 4 / 2**20
    assert long_mb - short_mb < full_mb / 3, (short_mb, long_mb)


def test_bad_file_is_one_line_and_exit_2(lib: dict, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    capsys.readouterr()
    rc = main(["query", str(bad), "--timeline", "--library", str(lib["lib"])])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "Traceback" not in err


def test_silence_gives_an_empty_timeline_with_a_reason(
    lib: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = tmp_path / "silence.wav"
    sf.write(quiet, np.zeros(3 * beats.SR, np.float32), beats.SR)
    dc = tmp_path / "dc.wav"
    sf.write(dc, np.full(3 * beats.SR, 0.3, np.float32), beats.SR, subtype="FLOAT")
    capsys.readouterr()
    rc = main(["query", str(quiet), str(dc), "--timeline", "--json", "--library",
               str(lib["lib"])])
    out, _err = capsys.readouterr()
    assert rc == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["timeline"] for r in records] == [[], []]
    assert "digital silence" in records[0]["reason"]
    assert "DC offset" in records[1]["reason"]


def _corrupt_flac(path: Path) -> None:
    """A FLAC file whose header reads but whose stream is damaged a third of the way in
    (the decoder loses sync: soundfile raises, not emberd)."""
    y = (np.random.default_rng(3).standard_normal(3 * beats.SR) * 0.1).astype(np.float32)
    sf.write(path, y, beats.SR, format="FLAC")
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : third + 2000] = bytes((b * 7 + 13) % 256 for b in data[third : third + 2000])
    path.write_bytes(bytes(data))


def test_a_damaged_file_is_skipped_with_its_reason(
    lib: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.wav"
    _track(good, [(beats.load_mono(lib["sounds"][0]), 0.3, 1.0, -3.0)], 1.5)
    bad = tmp_path / "damaged.flac"
    _corrupt_flac(bad)
    capsys.readouterr()
    rc = main(["query", str(bad), str(good), "--timeline", "--json", "--library",
               str(lib["lib"])])
    out, err = capsys.readouterr()
    assert rc == 1  # some files answered, one not
    assert [json.loads(line)["query"] for line in out.splitlines()] == [str(good)]
    assert len(err.strip().splitlines()) == 1 and str(bad) in err, err
    assert "Traceback" not in err


def test_precision_is_refused_with_timeline(lib: dict, tmp_path: Path) -> None:
    track = tmp_path / "t.wav"
    _track(track, [(beats.load_mono(lib["sounds"][0]), 0.3, 1.0, -3.0)], 1.0)
    run = subprocess.run([sys.executable, "-m", "emberd", "query", str(track), "--timeline",
                          "--precision", "int8", "--library", str(lib["lib"])],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "emberd: error: --precision does not apply to --timeline (the timeline compares "
        "waveforms; it runs no encoder)"]


def test_reference_cache_is_bounded_in_bytes(lib: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    bound = 2**20  # 1 MiB: a few of the kit's files, far below all of them
    monkeypatch.setattr(timeline, "REF_CACHE_BYTES", bound)
    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        total = 0
        for fid in tl.files:
            total += tl._ref(fid).y.nbytes + tl._ref(fid).up.nbytes
            held = sum(r.y.nbytes + r.up.nbytes for r in tl._refs.refs.values())
            assert held <= bound or len(tl._refs.refs) == 1, (held, len(tl._refs.refs))
            assert fid in tl._refs.refs  # the newest is always kept
    assert total > 4 * bound  # the files would not have fitted


def test_an_entry_is_compared_only_with_sounds_still_playing(lib: dict) -> None:
    """Adding an entry must not decode (nor compare with) every earlier entry's file: a long
    track with many distinct files made that quadratic, decoding evicted files again."""
    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        s = _Stream(tl)
        fids = list(tl.files)
        s.det_pos = 100 * WAVE_SR
        # 200 exact entries long over, and a few that ended just before the new one.
        for k in range(200):
            f = fids[k % len(fids)]
            s.entries.append(timeline.Entry(f, tl.files[f].path, k * 0.25, k * 0.25 + 0.2,
                                            -3.0, 1.0, 0.95, 0.9, "exact"))
        for k in range(3):
            f = fids[k]
            s.entries.append(timeline.Entry(f, tl.files[f].path, 98.0 + k * 0.5,
                                            98.3 + k * 0.5, -3.0, 1.0, 0.95, 0.9, "exact"))
        tl._refs.refs.clear()
        before = tl.decodes if hasattr(tl, "decodes") else 0
        decoded: list[int] = []
        real = tl._ref
        tl._ref = lambda fid: decoded.append(fid) or real(fid)  # type: ignore[method-assign]
        f = fids[-1]
        s._add(timeline.Entry(f, tl.files[f].path, 100.0, 100.5, -6.0, 1.0, 0.7, 0.5,
                              "similar"))
        assert decoded == [], decoded  # no earlier entry's file was looked at
        assert tl.decodes == before
        assert len(s.entries) <= 4  # the 200 long over are set aside, not scanned again
        assert len(s.done) + len(s.entries) == 204


def _long_sound(seconds: float) -> np.ndarray:
    """A deterministic sound of ``seconds``: a different decaying tone every 0.4 s."""
    rng = np.random.default_rng(5)
    y = np.zeros(int(seconds * beats.SR), np.float32)
    t = np.arange(int(0.4 * beats.SR)) / beats.SR
    for k in range(int(seconds / 0.4)):
        f = rng.uniform(200, 2000)
        hit = np.sin(2 * np.pi * f * t) * np.exp(-t * 8) * np.minimum(t / 0.002, 1.0)
        hit += 0.2 * rng.standard_normal(len(t)) * np.exp(-t * 40)
        a = int(k * 0.4 * beats.SR)
        y[a : a + len(t)] += (0.4 * hit).astype(np.float32)
    return y


def test_a_slowed_long_sound_is_judged_once_all_of_it_is_read(tmp_path: Path) -> None:
    """A sound of MAX_SOUND_S played slower lasts longer than MAX_SOUND_S: the engine must
    not judge it before its end has been read (it would compare it with silence)."""
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    long_y = _long_sound(timeline.MAX_SOUND_S)
    sf.write(sounds / "long.wav", long_y, beats.SR, subtype="FLOAT")
    assert main(["index", str(sounds), "--library", str(tmp_path / "lib"), "--model",
                 "dsp-baseline", "--jobs", "0", "--quiet"]) == 0
    speed = 0.88
    y = np.zeros(int(12.0 * beats.SR), np.float32)
    beats._add(y, beats.at_speed(long_y, speed), 1.0, -2.0)
    import soxr

    x = np.asarray(soxr.resample(y, beats.SR, WAVE_SR, quality="HQ"), np.float32)
    with Library.open(tmp_path / "lib") as library:
        s = _Stream(Timeline(library))
        early: list[tuple[int, int]] = []
        real = s._residual

        def residual(a: int, b: int) -> np.ndarray:
            if b > s.end + 1:  # read past what the track has given so far
                early.append((b, s.end))
            return real(a, b)

        s._residual = residual  # type: ignore[method-assign]
        for k in range(0, len(x), 4096):
            s.feed(x[k : k + 4096])
        assert early == [], early[:3]
        res = s.finish()
    exact = [e for e in res.entries if e.kind == "exact"]
    assert len(exact) == 1, res.entries
    assert abs(exact[0].start_s - 1.0) <= START_TOL_S
    assert abs(exact[0].speed / speed - 1) <= SPEED_TOL


def test_a_loop_is_placed_to_its_exact_speed(lib: dict, tmp_path: Path) -> None:
    """A loop's speed comes from the lags of its parts: within 1e-4 (a 2e-4 error left its
    hats in the residual, claimed as one-shots), its gain within 0.5 dB, and none of its
    hits is listed on its own."""
    track = tmp_path / "loop.wav"
    _track(track, [(beats.load_mono(lib["loop"]), 0.5, 0.955, -3.0)], 3.0)
    with Library.open(lib["lib"]) as library:
        res = Timeline(library).run(track)
    exact = [e for e in res.entries if e.kind == "exact"]
    assert [Path(e.path).name for e in exact] == [lib["loop"].name], res.entries
    assert abs(exact[0].speed / 0.955 - 1) < 1e-4, exact
    assert abs(exact[0].gain_db + 3.0) < 0.5, exact
    assert abs(exact[0].start_s - 0.5) < 0.002, exact


def test_speed_probes_in_one_product_match_the_fits_one_by_one(lib: dict) -> None:
    """_fit_many (the first window's probes in one product) gives what _fit gives for each
    speed: the same correlation and place."""
    y = np.zeros(3 * beats.SR, np.float32)
    beats._add(y, beats.at_speed(beats.load_mono(lib["sounds"][5]), 1.03), 1.0, -4.0)
    import soxr

    x = np.asarray(soxr.resample(y, beats.SR, WAVE_SR, quality="HQ"), np.float32)
    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        s = _Stream(tl)
        s.x[-s.base : -s.base + len(x)] = x  # track sample 0 is absolute 0
        s.end = len(x)
        fid = next(f for f, r in tl.files.items() if Path(r.path).name == lib["sounds"][5].name)
        ref = tl._ref(fid)
        # Where the file's sample onset - PRE_SAMPLES plays (a file padded before a very
        # early onset starts earlier): the best of a scan around the nominal place.
        nominal = WAVE_SR * 1.0 + (ref.onset - timeline.PRE_SAMPLES) / 1.03
        pos = max((s._fit(ref, 1.03, nominal + d, 384)[0], nominal + d + 0.3)
                  for d in range(-48, 49, 8))[1]
        speeds = [1.03 * (1 + 0.001 * j) for j in range(-4, 5)]
        many = s._fit_many(ref, speeds, pos, timeline.FINE_START_WINDOW)
        one = [s._fit(ref, v, pos, timeline.FINE_START_WINDOW) for v in speeds]
        assert max(r for r, _ in many) > 0.9  # the sound is there
        for (r1, p1), (r2, p2) in zip(many, one, strict=True):
            assert abs(r1 - r2) < 1e-5
            assert abs(p1 - p2) < 0.05


def test_coarse_correlation_by_fft_matches_the_lag_by_lag_one(lib: dict) -> None:
    """The coarse stage's one-transform correlation over the bank spectra gives, for every
    candidate and grid speed, the best normalised correlation and lag that
    :func:`~emberd.library.hitindex.ncc` finds lag by lag over the same attacks; and the
    sound placed in the window is found at its own speed and lag."""
    import scipy.fft

    from emberd.library.hitindex import ncc

    speed, at = 1.05, 150  # the file played 5 % fast, its attack's first sample at win[at]
    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        rows = np.arange(len(tl.index))
        bank = timeline._attack_bank(tl.index, rows)  # [files, speeds, n_t] in time
        k = timeline.SPEED_GRID.index(min(timeline.SPEED_GRID, key=lambda s: abs(s - speed)))
        n_t = bank.shape[2]
        rng = np.random.default_rng(3)
        win = (1e-4 * rng.standard_normal(n_t + 2 * timeline.LAG_SAMPLES)).astype(np.float32)
        win[at : at + n_t] += 0.5 * bank[5, k]
        rho, lag = timeline._coarse_ncc(win, tl.bank[rows], tl.bank_energy[rows])
        # The engine's bank is the spectra of those attacks.
        spectra = np.conj(scipy.fft.rfft(bank, timeline.COARSE_FFT, axis=2))
        assert np.allclose(tl.bank, spectra, atol=1e-4)
    every, _, _ = ncc(win, bank.reshape(-1, n_t), tl.bank_energy.reshape(-1))
    assert every.shape[1] == 2 * timeline.LAG_SAMPLES + 1
    want_lag = np.argmax(every, axis=1).reshape(rho.shape)
    want_rho = np.max(every, axis=1).reshape(rho.shape)
    assert np.abs(rho - want_rho).max() < 1e-4
    assert np.mean(lag == want_lag) > 0.999  # float ties aside
    assert rho[5, k] > 0.99 and lag[5, k] == at


def test_snippet_cache_is_bounded_and_gives_the_same_entries(
    lib: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upsampled stored snippets are kept up to HEAD_CACHE_BYTES (the newest always),
    and a track gives the same entries whether they come from the cache or not."""
    track = tmp_path / "beat.wav"
    _beat(lib, track)

    def entries(tl: Timeline) -> list[tuple[object, ...]]:
        return [(e.path, e.kind, round(e.start_s, 6), round(e.speed, 6), round(e.rho, 6))
                for e in tl.run(track).entries]

    with Library.open(lib["lib"]) as library:
        cached = Timeline(library)
        first = entries(cached)
        assert len(cached._heads.refs) > 1
        assert cached._heads.nbytes == sum(h.nbytes for h in cached._heads.refs.values())
        one = next(iter(cached._heads.refs.values())).nbytes
        monkeypatch.setattr(timeline, "HEAD_CACHE_BYTES", one)  # room for one snippet
        small = Timeline(library)
        for fid in small.files:
            head = small._head(fid)
            assert small._head(fid) is head  # served from the cache
            assert len(small._heads.refs) == 1 and fid in small._heads.refs
        assert entries(small) == first


def test_a_second_sound_is_looked_for_only_where_the_residual_holds_one(
    lib: dict, tmp_path: Path
) -> None:
    """After a claim the onset is searched again only when the residual there keeps more
    than SECOND_SOUND_DB of the track's energy: not under a lone explained sound, still
    under two sounds starting together (and both are found)."""
    kick, hat = lib["sounds"][0], lib["sounds"][6]  # a kick and an open hat
    import soxr

    y = np.zeros(2 * beats.SR, np.float32)
    beats._add(y, beats.load_mono(kick), 0.5, -3.0)
    x = np.asarray(soxr.resample(y, beats.SR, WAVE_SR, quality="HQ"), np.float32)
    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        s = _Stream(tl)
        s.x[-s.base : -s.base + len(x)] = x
        s.end = len(x)
        onset = int(np.argmax(np.abs(x) > 0.05 * np.abs(x).max()))
        assert not s._explained_at(onset)  # nothing explained yet
        s.known[:] = s.x  # the sound claimed (placed as it plays)
        assert s._explained_at(onset)
        s.known[:] = 0.98 * s.x  # 1/50 of the amplitude left: -34 dB, still explained
        assert s._explained_at(onset)
        s.known[:] = 0.7 * s.x  # -10 dB left: a sound may still start there
        assert not s._explained_at(onset)
        track = tmp_path / "together.wav"
        _track(track, [(beats.load_mono(kick), 0.5, 1.0, -3.0),
                       (beats.load_mono(hat), 0.5, 1.0, -6.0)], 2.0)
        names = {Path(e.path).name for e in tl.run(track).entries if e.kind == "exact"}
    assert {Path(kick).name, Path(hat).name} <= names, names


def test_candidate_searches_in_one_batch_match_them_one_by_one(lib: dict) -> None:
    """HitIndex.candidates_many (the residual and its speed-undone copies in one pass)
    gives each query the rows HitIndex.candidates gives it alone (real attacks: no
    near-ties for the products' rounding to reorder)."""
    import soxr

    with Library.open(lib["lib"]) as library:
        index = Timeline(library).index
        queries = [index.snippet(i)[off:] for i in range(len(index)) for off in (100, 140)]
        queries += [np.asarray(soxr.resample(q, WAVE_SR, WAVE_SR * 1.09), np.float32)
                    for q in queries[:6]]
        many = index.candidates_many(queries, timeline.EARLY_SAMPLES, 4)
        one = [index.candidates(q, timeline.EARLY_SAMPLES, 4)[0] for q in queries]
        silent = index.candidates_many([np.zeros(300, np.float32)], timeline.EARLY_SAMPLES, 4)
    assert len(many) == len(queries) and len(silent[0]) == 4
    for a, b in zip(many, one, strict=True):
        assert a.tolist() == b.tolist()
    assert all(len(set(a.tolist())) == 4 for a in many)


def test_placed_interpolates_the_upsampled_file_to_its_last_sample(lib: dict) -> None:
    """_placed (in place, reading the sample after each position without clipping: ``up``
    ends in a padding zero) is the linear interpolation of the upsampled file, up to and
    including its last sample, and zero outside it."""
    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        s = _Stream(tl)
        fid = next(f for f, r in tl.files.items() if Path(r.path).name == lib["sounds"][5].name)
        ref = tl._ref(fid)
        assert ref.up[-1] == 0.0 and ref.n_up == len(ref.up) - 1
        up = ref.up[: ref.n_up].astype(np.float64)
        first = ref.onset - timeline.PRE_SAMPLES
        for speed, pos in ((1.0, 1000.0), (1.0371, 1000.25), (0.9123, 999.6)):
            a = 900
            b = int(pos + (len(ref.y) - first) / speed) + 50  # past the file's end
            got = s._placed(ref, speed, pos, a, b)
            t = ((np.arange(a, b) - pos) * speed + first) * timeline.UPSAMPLE
            want = np.interp(t, np.arange(ref.n_up), up, left=0.0, right=0.0)
            inside = (t >= 0) & (t <= ref.n_up - 1)
            assert inside.sum() > 1000 and not inside[-1]
            np.testing.assert_allclose(got[inside], want[inside], atol=2e-6)
            assert not got[~inside].any()
            # Only the first n samples (from the pre-roll): the same values, zero after.
            n = 2000
            part = s._placed(ref, speed, pos, a, b, n)
            keep = t <= timeline.UPSAMPLE * (first + n) - 1
            np.testing.assert_array_equal(part[keep & inside], got[keep & inside])
            assert not part[~keep].any()


def test_a_sound_off_its_onset_is_found_from_an_anchor_that_its_attack_passes(
    lib: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sound starting 14 ms after the detected onset (beyond the attack search's
    +-LAG_SAMPLES) is found from the anchor ANCHOR_SHIFTS[0] later; the searches after an
    onset's first refine only attacks correlating RETRY_MIN_RHO or more, and the sound's own
    passes that gate (a gate above any correlation loses it)."""
    hat = lib["sounds"][6]
    import soxr

    y = np.zeros(2 * beats.SR, np.float32)
    beats._add(y, beats.at_speed(beats.load_mono(hat), 1.04), 0.5, -3.0)
    x = np.asarray(soxr.resample(y, beats.SR, WAVE_SR, quality="HQ"), np.float32)
    sound = int(np.argmax(np.abs(x) > 0.05 * np.abs(x).max()))
    onset = sound - 300  # 13.6 ms early

    def found(tl: Timeline) -> list[str]:
        s = _Stream(tl)
        s.x[-s.base : -s.base + len(x)] = x
        s.end = len(x)
        s._explain(onset)
        return [Path(e.path).name for e in s.entries if e.kind == "exact"]

    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        assert found(tl) == [hat.name]
        monkeypatch.setattr(timeline, "RETRY_MIN_RHO", 1.01)  # no retry refines anything
        assert found(tl) == []
        monkeypatch.setattr(timeline, "RETRY_MIN_RHO", 0.7)
        monkeypatch.setattr(timeline, "ANCHOR_SHIFTS", ())  # no anchors
        assert found(tl) == []


def test_a_file_missed_by_the_descriptor_search_is_found_as_a_neighbour_of_a_candidate(
    lib: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sound whose file the descriptor search does not return (on a mixed residual it may
    return only the file's velocity layers or siblings) is still found: the descriptor
    neighbours of the best attacks are candidates too. Without them (NEIGHBOUR_TOP 0) the
    sound is not claimed. (In this 10-file kit no other file's attack correlates
    NEIGHBOUR_MIN_RHO with the hat's, as a velocity layer's does: the gate is lowered to
    the search's own, COARSE_MIN_RHO.)"""
    monkeypatch.setattr(timeline, "NEIGHBOUR_MIN_RHO", timeline.COARSE_MIN_RHO)
    hat = lib["sounds"][6]
    import soxr

    y = np.zeros(2 * beats.SR, np.float32)
    beats._add(y, beats.at_speed(beats.load_mono(hat), 0.97), 0.5, -3.0)
    x = np.asarray(soxr.resample(y, beats.SR, WAVE_SR, quality="HQ"), np.float32)
    onset = int(np.argmax(np.abs(x) > 0.05 * np.abs(x).max()))

    with Library.open(lib["lib"]) as library:
        tl = Timeline(library)
        fid = next(f for f, r in tl.files.items() if Path(r.path).name == hat.name)
        assert any(fid in near for near in tl.neighbours.values())
        others = [f for f in tl.files if f != fid]

        def found() -> list[tuple[str, float]]:
            s = _Stream(tl)
            s.x[-s.base : -s.base + len(x)] = x
            s.end = len(x)
            # The descriptor search returning every file but the sound's own.
            monkeypatch.setattr(s, "_candidates", lambda onset, speeds=None: list(others))
            e = s._best(onset, set())
            return [] if e is None or e.kind != "exact" else [(Path(e.path).name, e.speed)]

        got = found()
        assert [n for n, _ in got] == [hat.name], got
        assert abs(got[0][1] / 0.97 - 1) <= SPEED_TOL
        monkeypatch.setattr(timeline, "NEIGHBOUR_TOP", 0)
        assert hat.name not in [n for n, _ in found()]
