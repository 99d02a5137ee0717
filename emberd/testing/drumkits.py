"""Real drum samples (Debian's hydrogen-drumkits) and synthetic distractors for identification.

Shared by ``tests/test_library_identify.py``, ``bench/identify.py`` and
``bench/fit_identify.py``, so the tests, the fit and the benchmark agree on:

* :func:`kit_files`: every sample a kit's ``drumkit.xml`` names, with a
  category from its instrument name;
* :func:`kit_half`: the fixed split of the kits into ``"A"`` (the fit's
  tuning kits) and ``"B"`` (held out: other kits, other files); the fit uses
  transform seed :data:`FIT_SEED`, the held-out evaluation :data:`EVAL_SEED`;
* :func:`transforms`: the query transforms (gain and noise, detune and
  low-pass, reverb, a mix with another sample);
* :func:`write_distractors`: deterministic synthetic one-shots and loops, so a
  test library is larger than every identification candidate budget;
* :func:`level_copies`: files that are one recording at several levels.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    from emberd.library.query import Library

KITS = Path("/usr/share/hydrogen/data/drumkits")
SR = 44100  # Hz, the models' rate
NOISE_SNR_DB = 20.0
GAIN_DB = -6.0
DETUNE_CENTS = 30.0
LOWPASS_HZ = 6000.0
RT60_S = 0.6
IR_S = 0.8
WET_RATIO = 0.5
MIX_DB = -6.0
COPY_RHO = 0.999  # waveform correlation of two files that are one recording at two levels
COPY_MAX_LAG_S = 0.0044  # ... at some lag up to this either way (96 samples at 22.05 kHz)
COPY_PREFILTER_RHO = 0.98  # magnitude spectra this alike are searched over those lags
FIT_SEED = 1  # transform seed of the fit on kits A (bench/fit_identify.py)
EVAL_SEED = 2  # transform seed of the held-out evaluation on kits B (bench/identify.py)
TRANSFORMS = ("gain_noise", "detune_lowpass", "reverb", "mix")

CATEGORIES = (
    ("hi-hat", r"hi-?hat|\bhh\b|hat"),
    ("cymbal", r"cymbal|crash|ride|china|splash|bell"),
    ("kick", r"kick|bass ?drum|\bbd\b|bassdrum"),
    ("snare", r"snare|\bsd\b|rim|stick|clap"),
    ("tom", r"tom"),
)


def category(instrument: str) -> str:
    """Map a kit's instrument name to kick / snare / hi-hat / tom / cymbal / other."""
    name = instrument.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name):
            return cat
    return "other"


def kit_files(kits: Path = KITS) -> dict[str, str]:
    """Absolute path -> category for every sample a drumkit.xml names."""
    out: dict[str, str] = {}
    for xml in sorted(kits.glob("*/drumkit.xml")):
        root = ET.parse(xml).getroot()
        ns = {"h": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
        pre = "h:" if ns else ""
        for inst in root.iter(f"{{{ns['h']}}}instrument" if ns else "instrument"):
            name = inst.findtext(f"{pre}name", default="", namespaces=ns)
            for fn in inst.iter(f"{{{ns['h']}}}filename" if ns else "filename"):
                path = xml.parent / (fn.text or "")
                if path.is_file():
                    out[str(path.absolute())] = category(name)
    return out


def kit_half(path: str | os.PathLike[str], kits: Path = KITS) -> str:
    """``"A"`` (tuning) or ``"B"`` (held out) for a file of ``kits``: the kits sorted by name
    alternate A, B, A, ... (367 and 385 of the 752 files in Debian's 14 kits)."""
    names = sorted(p.name for p in kits.iterdir() if p.is_dir())
    kit = Path(path).resolve().relative_to(kits.resolve()).parts[0]
    return "AB"[names.index(kit) % 2]


def transforms(
    pool_audio: list[np.ndarray], seed: int, mixed_in: list[int] | None = None
) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """The query transforms (seeded), by name; each maps ``(audio, query index) -> audio``.

    * ``gain_noise``: -6 dB, plus white noise 20 dB below the sample's RMS;
    * ``detune_lowpass``: +30 cents (resampled, so also 1.7 % faster), 4th-order
      Butterworth low-pass at 6 kHz;
    * ``reverb``: synthetic diffuse reverb (exponentially decaying noise, RT60
      0.6 s), wet at half the dry RMS, tail kept;
    * ``mix``: another sample of ``pool_audio``, peak-normalised to 6 dB below
      this one, summed; ``mixed_in`` collects the other sample's index, in call order.
    """
    import soxr
    from scipy.signal import butter, fftconvolve, sosfilt

    rng = np.random.default_rng(seed)
    n_ir = int(IR_S * SR)
    ir = rng.standard_normal(n_ir) * np.exp(-6.91 * np.arange(n_ir) / (RT60_S * SR))
    ir /= np.sqrt(np.sum(ir**2))
    sos = butter(4, LOWPASS_HZ, fs=SR, output="sos")

    def rms(y: np.ndarray) -> float:
        return float(np.sqrt(np.mean(y.astype(np.float64) ** 2) + 1e-20))

    def gain_noise(y: np.ndarray, i: int) -> np.ndarray:
        y = y * 10 ** (GAIN_DB / 20)
        noise = rng.standard_normal(len(y)).astype(np.float32)
        return y + noise * rms(y) * 10 ** (-NOISE_SNR_DB / 20)

    def detune_lowpass(y: np.ndarray, i: int) -> np.ndarray:
        y2 = soxr.resample(y, SR * 2 ** (DETUNE_CENTS / 1200), SR)
        return np.asarray(sosfilt(sos, y2), np.float32)

    def reverb(y: np.ndarray, i: int) -> np.ndarray:
        wet = fftconvolve(y, ir)[: len(y) + n_ir // 2]
        out = np.pad(y, (0, len(wet) - len(y))) + WET_RATIO * wet * rms(y) / rms(wet)
        return out.astype(np.float32)

    def mix(y: np.ndarray, i: int) -> np.ndarray:
        j = int(rng.integers(len(pool_audio) - 1))
        j = j + 1 if j >= i else j
        other = pool_audio[j]
        other = other * (np.max(np.abs(y)) / (np.max(np.abs(other)) + 1e-9)) * 10 ** (MIX_DB / 20)
        out = np.zeros(max(len(y), len(other)), np.float32)
        out[: len(y)] += y
        out[: len(other)] += other
        if mixed_in is not None:
            mixed_in.append(j)
        return out

    return {
        "gain_noise": gain_noise,
        "detune_lowpass": detune_lowpass,
        "reverb": reverb,
        "mix": mix,
    }


def level_copies(lib: Library) -> dict[int, int]:
    """File id -> id of its level-copy group (files that are one recording at other levels).

    Two files are one recording when their stored onset snippets correlate COPY_RHO at
    some lag within COPY_MAX_LAG_S: a file whose first samples were trimmed has the
    library's onset rule land a few samples off the other's (hydrogen's PearlTom1-Med
    and -Hardest: 0.9999997 at a 21-sample offset, 0.95-0.97 at zero lag). The pairs
    worth that search are those whose magnitude spectra (blind to a lag) correlate
    COPY_PREFILTER_RHO. The one rule for the tests, ``bench/identify.py``,
    ``bench/timeline.py``, ``bench/fit_identify.py`` and ``bench/hits.py``.
    """
    from emberd.library.waveform import WAVE_SR

    ids = sorted(lib.files())
    snips = lib.store.snippets(ids)
    ids = [f for f in ids if f in snips]
    if not ids:
        return {}
    mat = np.stack([snips[f].samples() for f in ids]).astype(np.float64)
    unit = mat / (np.linalg.norm(mat, axis=1, keepdims=True) + 1e-12)
    n_fft = 1 << int(np.ceil(np.log2(2 * unit.shape[1])))
    spec = np.fft.rfft(unit, n_fft, axis=1)
    mag = np.abs(spec)
    mag /= np.linalg.norm(mag, axis=1, keepdims=True) + 1e-12
    max_lag = round(COPY_MAX_LAG_S * WAVE_SR)
    lags = np.r_[0 : max_lag + 1, n_fft - max_lag : n_fft]
    group = list(range(len(ids)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for a, b in np.argwhere(np.triu(mag @ mag.T, 1) >= COPY_PREFILTER_RHO).tolist():
        xc = np.fft.irfft(spec[a] * np.conj(spec[b]), n_fft)[lags]
        if float(xc.max()) >= COPY_RHO:
            group[root(a)] = root(b)
    return {f: ids[root(i)] for i, f in enumerate(ids)}


# --- synthetic distractors -------------------------------------------------------------------

DISTRACTOR_FAMILIES = ("kick", "snare", "hat", "tom", "clap", "bell", "pluck", "cymbal")
LOOP_EVERY = 25  # every 25th distractor is a 4-s loop of synthetic hits instead of a one-shot
LOOP_S = 4.0


def _bandpass(x: np.ndarray, lo_hz: float, hi_hz: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(2, [lo_hz, min(hi_hz, 0.45 * SR)], btype="band", fs=SR, output="sos")
    return np.asarray(sosfilt(sos, x))


def _one_shot(family: str, rng: np.random.Generator) -> np.ndarray:
    """One synthetic drum-like hit of ``family`` with random (seeded) parameters."""
    dur = {"kick": 0.5, "tom": 0.6, "bell": 1.2, "pluck": 0.8, "cymbal": 1.8}.get(family, 0.3)
    dur *= rng.uniform(0.7, 1.3)
    n = int(dur * SR)
    t = np.arange(n) / SR
    y: Any
    if family in ("kick", "tom"):
        f0 = rng.uniform(40, 80) if family == "kick" else rng.uniform(90, 250)
        sweep = f0 + rng.uniform(50, 200) * np.exp(-t * rng.uniform(20, 60))
        y = np.sin(2 * np.pi * np.cumsum(sweep) / SR) * np.exp(-t * rng.uniform(5, 14))
        y += 0.2 * rng.standard_normal(n) * np.exp(-t * 200)  # beater click
    elif family in ("snare", "hat", "clap"):
        noise = rng.standard_normal(n)
        if family == "snare":
            y = _bandpass(noise, rng.uniform(800, 2000), rng.uniform(5000, 9000))
            y = y * np.exp(-t * rng.uniform(12, 30))
            y += 0.5 * np.sin(2 * np.pi * rng.uniform(150, 260) * t) * np.exp(-t * 25)
        elif family == "hat":
            y = _bandpass(noise, rng.uniform(5000, 8000), 16000) * np.exp(-t * rng.uniform(15, 60))
        else:
            env = np.zeros(n)
            for k in range(int(rng.integers(3, 5))):
                start = int((k * rng.uniform(0.008, 0.014)) * SR)
                env[start:] += np.exp(-(t[: n - start]) * (180 if k < 3 else 25))
            y = _bandpass(noise, 900, 3500) * env
    elif family == "bell":
        f0 = rng.uniform(300, 1200)
        ratios = (1.0, 2.76, 5.40, 8.93) if rng.random() < 0.5 else (1.0, 1.47, 2.09, 2.56, 3.9)
        y = sum(
            np.sin(2 * np.pi * f0 * r * t + rng.uniform(0, 6)) * np.exp(-t * rng.uniform(2, 8) * r)
            / (1 + k)
            for k, r in enumerate(ratios)
        )
    elif family == "pluck":
        f0 = 55.0 * 2 ** (rng.integers(0, 36) / 12)
        y = sum(
            np.sin(2 * np.pi * f0 * h * t) * np.exp(-t * (3 + 2 * h)) / h for h in range(1, 9)
        ) * np.minimum(1.0, t / 0.002)
    else:  # cymbal: many inharmonic partials plus bright noise
        partials = rng.uniform(300, 9000, size=40)
        y = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in partials) / 8
        y += _bandpass(rng.standard_normal(n), 3000, 14000)
        y *= np.exp(-t * rng.uniform(1.5, 4))
    y = np.asarray(y, np.float64)
    return (rng.uniform(0.3, 0.95) * y / (np.max(np.abs(y)) + 1e-12)).astype(np.float32)


def _loop(rng: np.random.Generator) -> np.ndarray:
    """A LOOP_S beat of synthetic hits on a 16-step grid at a random tempo."""
    out = np.zeros(int(LOOP_S * SR), np.float64)
    step = int(SR * 60.0 / rng.uniform(85, 140) / 4)
    hits = [_one_shot(f, rng) for f in ("kick", "snare", "hat", "clap")]
    for s in range(len(out) // step):
        for k, hit in enumerate(hits):
            if rng.random() < (0.9, 0.5, 0.7, 0.2)[k] * (1.0 if s % (4, 8, 2, 8)[k] == 0 else 0.15):
                end = min(len(out), s * step + len(hit))
                out[s * step : end] += hit[: end - s * step]
    return (0.9 * out / (np.max(np.abs(out)) + 1e-12)).astype(np.float32)


def write_distractors(root: str | os.PathLike[str], n: int, *, seed: int = 0) -> list[Path]:
    """Write ``n`` deterministic synthetic sounds (one-shots of DISTRACTOR_FAMILIES, every
    LOOP_EVERY-th a loop) as 16-bit WAVs under ``root/<family>/``; return their paths."""
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        if i % LOOP_EVERY == LOOP_EVERY - 1:
            family, y = "loop", _loop(rng)
        else:
            family = DISTRACTOR_FAMILIES[i % len(DISTRACTOR_FAMILIES)]
            y = _one_shot(family, rng)
        path = Path(root) / family / f"synth_{family}_{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            sf.write(path, y, SR, subtype="PCM_16")
        paths.append(path)
    return paths


# --- a cached identification library ---------------------------------------------------------

STALE_BUILD_S = 86400.0  # a cached build of another code version unused this long is removed
N_DISTRACTORS = 400  # 752 kit files + 400 > every candidate budget (union at most 300 files)
# What a stored library depends on (query-time modules such as query.py and rerank.py are not).
_CODE = ("dsp/*.py", "models/*.py", "library/indexer.py", "library/fingerprint.py",
         "library/waveform.py", "library/store.py", "library/scan.py", "library/search.py")


def _cache_key(model: str, kits: Path, n_distractors: int) -> str:
    """Changes with the code that builds a library, the kit files and the distractor count."""
    import hashlib

    h = hashlib.sha256(f"{model} {n_distractors} {kits}".encode())
    pkg = Path(__file__).resolve().parents[1]
    for pattern in _CODE:
        for src in sorted(pkg.glob(pattern)):
            h.update(src.read_bytes())
    h.update(Path(__file__).read_bytes())
    for f in sorted(kits.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def identification_library(
    model: str, *, kits: Path = KITS, n_distractors: int = N_DISTRACTORS, jobs: int = 2
) -> tuple[Path, list[Path]]:
    """All of ``kits`` plus ``n_distractors`` synthetic sounds, indexed with ``model``.

    Built once per code version and kept in emberd's cache folder (a changed
    library, fingerprint, model or this module's source rebuilds it; builds of
    other versions unused for a day are removed); concurrent callers wait for
    one builder. Returns the library folder and the distractor paths.
    """
    import fcntl
    import shutil
    import tempfile
    import time

    from emberd.library.indexer import Indexer
    from emberd.paths import cache_dir

    base = cache_dir() / "identify-library"
    base.mkdir(parents=True, exist_ok=True)
    key = _cache_key(model, kits, n_distractors)
    final = base / f"{model}-{key}"
    # One builder at a time (parallel test runs share the cache): the others wait, then reuse.
    with open(base / f".{model}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "lib" / "library.sqlite").is_file():
            shutil.rmtree(final, ignore_errors=True)  # a half-built one
            for tmp_old in base.glob(f".{model}-*"):  # builds interrupted (we hold the lock)
                shutil.rmtree(tmp_old, ignore_errors=True)
            for old in base.glob(f"{model}-*"):  # builds of other code versions, unused a day
                if time.time() - old.stat().st_mtime > STALE_BUILD_S:
                    shutil.rmtree(old, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{model}-", dir=base))
            # Distractors live at their final path (the library stores absolute paths).
            write_distractors(final / "synth", n_distractors)
            ix = Indexer(tmp / "lib", model, jobs=jobs)
            try:
                ix.run([str(kits), str(final / "synth")])
            finally:
                ix.close()
            (tmp / "lib").rename(final / "lib")
            shutil.rmtree(tmp, ignore_errors=True)
        distractors = write_distractors(final / "synth", n_distractors)
        os.utime(final)  # in use: not stale
    return final / "lib", distractors
