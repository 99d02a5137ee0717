"""A small synthetic sample library for reliability tests and benches.

:func:`write_sounds` synthesises distinct one-shots into tag folders
(``Kicks/``, ``Snares/``, ``Hats/``, ``Pads/``); :func:`index` runs the real
``emberd index`` CLI on them in a child process, so a crash or a signal shows
up as a return code instead of taking the caller down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100  # Hz
FAST_MODEL = "dsp-baseline"  # no download, fast on CPU
INDEX_TIMEOUT_S = 600.0  # generous: a busy 2-core CI machine

_FOLDERS = ("Kicks", "Snares", "Hats", "Pads")


def _sound(folder: str, i: int, rng: np.random.Generator) -> np.ndarray:
    """One sound per (folder, i): kicks are pitched sweeps, snares noise bursts, and so on."""
    if folder == "Kicks":
        dur = 0.35
    elif folder == "Pads":
        dur = 1.5
    else:
        dur = 0.25
    n = int(dur * SR)
    t = np.arange(n) / SR
    if folder == "Kicks":
        f = 40.0 + 15.0 * i + 120.0 * np.exp(-t * 30.0)
        y = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-t * (8.0 + i))
    elif folder == "Snares":
        y = rng.standard_normal(n) * np.exp(-t * (15.0 + 2 * i)) + 0.3 * np.sin(
            2 * np.pi * (180.0 + 20 * i) * t
        ) * np.exp(-t * 20.0)
    elif folder == "Hats":
        noise = rng.standard_normal(n)
        hp = np.diff(noise, prepend=0.0)  # crude high-pass: hats are bright
        y = hp * np.exp(-t * (30.0 + 5 * i))
    else:
        base = 110.0 * (1.0 + 0.125 * i)
        y = np.sum([np.sin(2 * np.pi * base * h * t) / h for h in (1, 2, 3, 5)], axis=0)
        y = y * np.minimum(1.0, t * 4.0) * np.minimum(1.0, (dur - t) * 4.0)
    y = 0.8 * y / max(1e-9, float(np.max(np.abs(y))))
    return y.astype(np.float32)


def write_sounds(root: str | os.PathLike[str], *, per_folder: int = 4, seed: int = 0,
                 start: int = 0) -> list[Path]:
    """Write ``per_folder`` sounds into each tag folder under ``root``; return their paths.

    ``start`` offsets the numbering, so calling again with another ``start``
    adds new, different files.
    """
    rng = np.random.default_rng(seed + 7919 * start)
    out = []
    for folder in _FOLDERS:
        (Path(root) / folder).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_folder):
            path = Path(root) / folder / f"{folder.lower()[:-1]}_{i:03d}.wav"
            sf.write(path, _sound(folder, i % 12, rng), SR, subtype="PCM_16")
            out.append(path)
    return out


def index_command(sources: Sequence[str | os.PathLike[str]], library: str | os.PathLike[str],
                  *extra: str, model: str = FAST_MODEL) -> list[str]:
    """The ``emberd index`` command line (run with this interpreter)."""
    return [sys.executable, "-m", "emberd", "index", *[os.fspath(s) for s in sources],
            "--library", os.fspath(library), "--model", model, *extra]


def index(sources: Sequence[str | os.PathLike[str]], library: str | os.PathLike[str],
          *extra: str, model: str = FAST_MODEL,
          timeout: float = INDEX_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``emberd index`` in a child process and return it (output captured as text)."""
    return subprocess.run(
        index_command(sources, library, *extra, model=model),
        capture_output=True, text=True, errors="surrogateescape", timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def write_performance(path: str | os.PathLike[str], *, seconds: float = 10.0,
                      seed: int = 1, channels: int = 1) -> Path:
    """A live-input stand-in: the library's kinds of sounds, one every 0.5 s, for ``seconds``.

    With ``channels > 1`` each channel gets its own sequence (stems).
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros((n, channels), dtype=np.float32)
    step = SR // 2
    for c in range(channels):
        for k, start in enumerate(range(0, n, step)):
            folder = _FOLDERS[(k + c) % len(_FOLDERS)]
            y = _sound(folder, (k * 5 + c) % 12, rng)[: n - start]
            out[start : start + y.size, c] += 0.5 * y
    sf.write(path, out if channels > 1 else out[:, 0], SR, subtype="PCM_16")
    return Path(path)


def build_library(root: str | os.PathLike[str], *, per_folder: int = 4,
                  model: str = FAST_MODEL) -> Path:
    """Write sounds into ``root/sounds`` and index them into ``root/lib``; return ``root/lib``.

    Raises
    ------
    RuntimeError
        ``emberd index`` failed; the message is its standard error.
    """
    write_sounds(Path(root) / "sounds", per_folder=per_folder)
    lib = Path(root) / "lib"
    proc = index([Path(root) / "sounds"], lib, model=model)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return lib


def daemon_args(library: str | os.PathLike[str], perf: str | os.PathLike[str], *extra: str,
                model: str = FAST_MODEL) -> list[str]:
    """``emberd run`` arguments: ``perf`` looped at real-time pace against ``library``."""
    return ["--library", os.fspath(library), "--model", model, "--input", os.fspath(perf),
            "--loop", "--pace", "realtime", *extra]
