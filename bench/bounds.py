"""The measurements behind the tests' tolerances (issue 20: each bound within ~10x of these).

Printed, each next to the bound its test asserts:

* front end: streaming vs batch (both presets, the tests' block sizes and
  random splits), the librosa preset vs librosa (the tests' overrides, 3
  drum files, edge lengths, uncentred), the aisfx preset vs Essentia (4 drum
  files, every end-of-stream edge length) -- worst relative error
  ``max |ours - ref| / max |ref|`` (as ``tests/test_dsp_frontend.py``);
* bad audio: peak resident memory (whole process tree) of ``emberd index`` on
  the broken corpus of :mod:`emberd.testing.badcorpus` (as
  ``tests/test_reliability_badaudio.py``).

Usage: ``python bench/bounds.py [--skip-corpus]`` (librosa and Essentia are dev dependencies).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from emberd.dsp.config import preset
from emberd.dsp.frontend import melspectrogram
from emberd.dsp.sources import load_audio, synth_signal
from emberd.testing import badcorpus, smalllib
from emberd.testing.parity import drum_files, essentia_aisfx, rel, stream

DRUMKITS = Path("/usr/share/hydrogen/data/drumkits")
# The tests' bounds (tests/test_dsp_frontend.py, tests/test_reliability_badaudio.py):
BOUNDS = {"stream": 1e-6, "librosa": 2e-5, "essentia": 1e-4, "peak_mib": 750.0}
LIBROSA_OVERRIDES = (
    {}, {"htk": True}, {"norm": None}, {"compression": "db"}, {"power": 1.0},
    {"sr": 44100, "n_fft": 1024, "hop_length": 256, "win_length": 800, "n_mels": 64,
     "fmin": 40.0, "fmax": 12000.0},
)  # fmt: skip


def stream_vs_batch() -> float:
    worst = 0.0
    mix = synth_signal("mix", 0, 3 * 44100 + 123, sr=44100, seed=3)
    rng = np.random.default_rng(0)
    for name in ("librosa", "aisfx"):
        config = preset(name)
        for block in (1, 64, 256, 1000, 4096):
            y = mix if block > 1 else mix[: 44100 // 2 + 7]
            worst = max(worst, rel(stream(y, config, [block]), melspectrogram(y, config)))
        for _ in range(25):
            n = int(rng.integers(1, 20000))
            y = synth_signal("noise", 0, n, sr=44100, seed=n) + synth_signal(
                "sine", 0, n, sr=44100, freq_hz=1234.5)
            splits = rng.integers(1, 3000, size=int(rng.integers(1, 12))).tolist()
            worst = max(worst, rel(stream(y, config, splits), melspectrogram(y, config)))
    return worst


def librosa_parity() -> float:
    librosa = importlib.import_module("librosa")
    worst = 0.0
    for overrides in LIBROSA_OVERRIDES:
        config = preset("librosa", **overrides)
        for path in drum_files(DRUMKITS, 3):
            y, _ = load_audio(path, sr=config.sr)
            ref = librosa.feature.melspectrogram(
                y=y, sr=config.sr, n_fft=config.n_fft, hop_length=config.hop_length,
                win_length=config.win_length, power=config.power, n_mels=config.n_mels,
                fmin=config.fmin, fmax=config.fmax, htk=config.htk, norm=config.norm,
            ).T
            if config.compression == "db":
                ref = librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=None)
            worst = max(worst, rel(melspectrogram(y, config), ref),
                        rel(stream(y, config, [256]), ref))
    for length in (2048, 2600, 5000):
        y = synth_signal("noise", 0, length, sr=22050, seed=4) + 0.01
        ref = librosa.feature.melspectrogram(y=y, sr=22050, center=False).T
        config = preset("librosa", center=False)
        worst = max(worst, rel(melspectrogram(y, config), ref), rel(stream(y, config, [300]), ref))
    for length in (2048, 5000):
        y = synth_signal("noise", 0, length, sr=22050, seed=2) + 0.01
        ref = librosa.feature.melspectrogram(y=y, sr=22050).T
        worst = max(worst, rel(stream(y, preset("librosa"), [100]), ref))
    return worst


def essentia_parity() -> float:
    worst = 0.0
    config = preset("aisfx")
    for path in drum_files(DRUMKITS, 4):
        y, _ = load_audio(path, sr=44100)
        ref = essentia_aisfx(y)
        worst = max(worst, rel(melspectrogram(y, config), ref), rel(stream(y, config, [256]), ref))
    for length in (2, 500, 1023, 1024, 1025, 2047, 2048, 2049, 3000, 5000):
        y = synth_signal("noise", 0, length, sr=44100, seed=1) + 0.01
        worst = max(worst, rel(stream(y, config, [256]), essentia_aisfx(y)))
    return worst


def corpus_peak_mib() -> float:
    """Peak RSS of ``emberd index`` over the broken corpus, whole process tree, in MiB."""
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        badcorpus.build(corpus, seed=3)
        cmd = smalllib.index_command([corpus], Path(tmp) / "lib")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        peak, stop = [0], threading.Event()

        def watch() -> None:
            while not stop.wait(0.05):
                try:
                    p = psutil.Process(proc.pid)
                    procs = [p, *p.children(recursive=True)]
                    peak[0] = max(peak[0], sum(q.memory_info().rss for q in procs))
                except psutil.NoSuchProcess:
                    continue

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        proc.wait(timeout=600)
        stop.set()
        t.join()
    return peak[0] / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-corpus", action="store_true")
    args = ap.parse_args()
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"bench/bounds.py, {now:%Y-%m-%d %H:%M} UTC, {platform.machine()} "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    rows = [("stream vs batch", "stream", stream_vs_batch())]
    rows.append(("librosa preset vs librosa", "librosa", librosa_parity()))
    rows.append(("aisfx preset vs Essentia", "essentia", essentia_parity()))
    for label, key, got in rows:
        ratio = BOUNDS[key] / got if got > 0 else float("inf")
        print(f"  {label:28s} measured {got:.2e}  bound {BOUNDS[key]:.0e}  bound/measured "
              f"{ratio:.1f}")
    if not args.skip_corpus:
        peak = corpus_peak_mib()
        print(f"  {'bad-audio index peak RSS':28s} measured {peak:.0f} MiB  bound "
              f"{BOUNDS['peak_mib']:.0f} MiB  bound/measured {BOUNDS['peak_mib'] / peak:.1f}")


if __name__ == "__main__":
    main()
