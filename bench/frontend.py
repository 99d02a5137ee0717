"""Front-end benchmark: streaming mel cost per hop and per second of audio vs librosa.

The same audio (real drum samples from Debian's hydrogen-drumkits, concatenated; a
synthetic mix when they are absent) goes through

* emberd's :class:`~emberd.dsp.frontend.StreamingFrontEnd`, pushed in blocks of
  256 / 1024 / 4096 samples as a device callback would deliver them;
* ``librosa.feature.melspectrogram`` on the whole signal at once (the anchor, in the
  same process and run), with the same parameters (plus the same log compression for
  the aisfx preset);

Each figure is the best of ``--repeat`` runs (the machine may be shared). Printed:
milliseconds per second of audio, microseconds per hop, per-hop cost as a percentage
of the hop duration, and the speed ratio librosa / emberd per second of audio.
Goals (issue 2): ratio >= 3 and per-hop cost <= 2 % of the hop.
Usage: ``python bench/frontend.py [--seconds S] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from emberd.dsp.config import FrontEndConfig, preset
from emberd.dsp.frontend import StreamingFrontEnd, melspectrogram
from emberd.dsp.sources import load_audio, synth_signal
from emberd.errors import EmberdError

DRUMKITS = Path("/usr/share/hydrogen/data/drumkits")
BLOCK_SIZES = (256, 1024, 4096)  # samples per push


def bench_audio(sr: int, seconds: float) -> tuple[np.ndarray, str]:
    """``seconds`` of real drum audio at ``sr`` (or a synthetic mix)."""
    want = int(seconds * sr)
    pieces: list[np.ndarray] = []
    have = 0
    for path in sorted(DRUMKITS.glob("*/*.wav")) if DRUMKITS.is_dir() else []:
        try:
            y, _ = load_audio(path, sr=sr)
        except EmberdError:  # a bench skips odd files
            continue
        pieces.append(y)
        have += y.size
        if have >= want:
            return np.concatenate(pieces)[:want], f"hydrogen-drumkits, {len(pieces)} files"
    return synth_signal("mix", 0, want, sr=sr), "synthetic mix"


def best_of(repeat: int, fn: object) -> tuple[float, float]:
    """Best wall-clock and best CPU time (all threads of this process) over ``repeat`` runs.

    CPU time is the fairer cost on a shared machine: waiting for a core is not counted,
    and librosa's BLAS threads are (they are summed).
    """
    wall = cpu = float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def run_stream(y: np.ndarray, config: FrontEndConfig, block: int) -> int:
    fe = StreamingFrontEnd(config)
    for i in range(0, y.size, block):
        fe.push(y[i : i + block])
    fe.flush()
    return fe.total_frames


def run_librosa(y: np.ndarray, config: FrontEndConfig) -> np.ndarray:
    import librosa

    window: str | np.ndarray = "hann" if config.window == "hann" else np.hanning(config.win_length)
    mel = librosa.feature.melspectrogram(
        y=y, sr=config.sr, n_fft=config.n_fft, hop_length=config.hop_length,
        win_length=config.win_length, window=window, power=config.power,
        n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax, htk=config.htk,
        norm=config.norm,
    )
    if config.compression == "log10_1e4":
        mel = np.log10(1e4 * mel + 1.0) / config.scale_max
    return np.asarray(mel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio length (s)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best kept)")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# front end benchmark: {cpu}, {os.cpu_count()} cores, load {load:.1f}, "
          f"numpy {np.__version__}, best of {args.repeat}")
    frame = np.random.default_rng(0).standard_normal((1, 2048))
    spec = np.zeros((1, 1025), dtype=np.complex128)
    fft_s = min(
        best_of(50, lambda: [np.fft.rfft(frame, axis=-1, out=spec) for _ in range(100)])
    ) / 100
    print(f"# floor: one 2048-point float64 numpy rfft (out=) takes {fft_s * 1e6:.1f} us")
    rows = []
    for name in ("librosa", "aisfx"):
        config = preset(name)
        y, what = bench_audio(config.sr, args.seconds)
        dur = y.size / config.sr
        run_librosa(y[: config.sr], config)  # warm imports and caches
        t_lib = best_of(args.repeat, lambda: run_librosa(y, config))  # noqa: B023
        t_batch = best_of(args.repeat, lambda: melspectrogram(y, config))  # noqa: B023
        n_frames = melspectrogram(y[: config.sr], config).shape[0]  # warm
        n_frames = run_stream(y, config, 256)
        hop_us = config.hop_length / config.sr * 1e6
        print(f"# preset {name}: {dur:.1f} s of {what} at {config.sr} Hz, {n_frames} frames, "
              f"hop {hop_us / 1000:.1f} ms")
        rows.append((name, "librosa (batch, anchor)", t_lib, n_frames, dur, hop_us, t_lib))
        rows.append((name, "emberd batch", t_batch, n_frames, dur, hop_us, t_lib))
        for block in BLOCK_SIZES:
            t = best_of(args.repeat, lambda: run_stream(y, config, block))  # noqa: B023
            rows.append((name, f"emberd stream, block {block}", t, n_frames, dur, hop_us, t_lib))
    print()
    print("| preset | path | wall ms / s audio | wall us / hop | % of hop | librosa / this "
          "(wall) | CPU ms / s audio | librosa / this (CPU) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, path, (wall, cpu_s), n_frames, dur, hop_us, (lib_wall, lib_cpu) in rows:
        per_hop = wall / n_frames * 1e6
        print(f"| {name} | {path} | {wall / dur * 1e3:.2f} | {per_hop:.1f} | "
              f"{100 * per_hop / hop_us:.2f} | {lib_wall / wall:.2f}x | "
              f"{cpu_s / dur * 1e3:.2f} | {lib_cpu / cpu_s:.2f}x |")


if __name__ == "__main__":
    main()
