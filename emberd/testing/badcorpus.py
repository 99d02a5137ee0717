"""A deterministic corpus of broken (and a few good) audio files for indexing tests.

``build(root)`` writes every entry and returns a list of :class:`CorpusEntry`
saying what is wrong with each file and what an indexer should do with it:

* ``"index"`` -- readable audio; must be indexed (short sounds are padded);
* ``"skip"`` -- must be skipped *with a reason* (never crash, never hang);
* ``"either"`` -- indexed or skipped with a reason are both correct (for
  example a truncated FLAC that libsndfile decodes in part);
* ``"absent_or_skip"`` -- not a regular file (a directory called ``x.wav``, a
  FIFO, a dangling link, a link loop): a scanner may leave it out of its file
  list or skip it with a reason, but must not hang on it or crash.

Unreadable files and root
-------------------------
CI runs as root, and root bypasses permission bits (``CAP_DAC_OVERRIDE``), so a
``chmod 000`` file is *readable* there; it is still generated (it is a real
``EACCES`` for a normal user) but expected as ``"either"`` when running as
root. Entries that are unreadable even for root are the dangling symlink
(``ENOENT``), the directory named ``.wav`` (``EISDIR``), the FIFO (``open``
would block forever without ``O_NONBLOCK``) and the symlink loops (``ELOOP``,
and a directory link back to its parent that a scanner following links would
recurse into forever).

The two-hour file is written as a sparse WAV: a header, ``ftruncate`` to the
full size (reads back as silence) and a short noise burst every minute, so it
costs a few MiB of disk and no memory to create, while a reader that loads it
whole would need over a gigabyte.

Everything is seeded: the same ``seed`` gives the same bytes.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100  # Hz, sample rate of the ordinary files
LONG_SECONDS = 7200.0  # s, the "two-hour file"
LONG_BURST_PERIOD_S = 60.0  # s between noise bursts in the sparse long file
LONG_BURST_S = 0.5  # s, length of each burst
HI_SR = 192000  # Hz, the 8-channel high-rate file
HI_CHANNELS = 8
WAVE_FORMAT_VORBIS1 = 0x674F  # Vorbis-in-RIFF mode 1 (ACM codec tag, refused by libsndfile)
WAV_HEADER_BYTES = 44  # canonical PCM WAV header

EXPECT_INDEX = "index"
EXPECT_SKIP = "skip"
EXPECT_EITHER = "either"
EXPECT_ABSENT_OR_SKIP = "absent_or_skip"


@dataclass(frozen=True)
class CorpusEntry:
    """One generated entry.

    Attributes
    ----------
    name : str
        Path relative to the corpus root (``/``-separated).
    problem : str
        What is wrong with it (``"ok"`` for the good files).
    expect : str
        One of ``"index"``, ``"skip"``, ``"either"``, ``"absent_or_skip"``.
    """

    name: str
    problem: str
    expect: str


def _tone(seconds: float, *, sr: int, freq: float, rng: np.random.Generator) -> np.ndarray:
    """A decaying tone plus a little noise: not silent, not NaN."""
    n = max(1, round(seconds * sr))
    t = np.arange(n, dtype=np.float64) / sr
    env = np.exp(-t * 6.0)
    y = 0.5 * env * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(n)
    return y.astype(np.float32)


def _riff_wav(
    fmt_tag: int, *, channels: int, sr: int, bits: int, data: bytes, extra: bytes
) -> bytes:
    """A RIFF/WAVE file with an arbitrary format tag (``WAVEFORMATEX`` with cbSize)."""
    block = max(1, channels * bits // 8)
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, sr, sr * block, block, bits)
    fmt += struct.pack("<H", len(extra)) + extra
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _pcm16_header(n_frames: int, *, channels: int, sr: int) -> bytes:
    """Canonical 44-byte PCM 16-bit WAV header for ``n_frames`` frames."""
    block = channels * 2
    data_bytes = n_frames * block
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sr, sr * block, block, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def write_sparse_long_wav(
    path: Path,
    *,
    seconds: float = LONG_SECONDS,
    sr: int = SR,
    seed: int = 0,
    burst_period_s: float = LONG_BURST_PERIOD_S,
    burst_s: float = LONG_BURST_S,
) -> None:
    """Write a long mono 16-bit WAV cheaply: sparse silence with periodic noise bursts.

    Parameters
    ----------
    path : Path
        Destination.
    seconds : float
        Duration of the file.
    sr : int
        Sample rate in Hz.
    seed : int
        Seed of the burst noise.
    burst_period_s, burst_s : float
        A burst of ``burst_s`` seconds starts every ``burst_period_s`` seconds.
    """
    rng = np.random.default_rng(seed)
    n_frames = int(seconds * sr)
    burst = max(1, int(burst_s * sr))
    with open(path, "wb") as fh:
        fh.write(_pcm16_header(n_frames, channels=1, sr=sr))
        fh.truncate(WAV_HEADER_BYTES + 2 * n_frames)  # a hole: reads back as zeros
        start = 0
        while start < n_frames:
            n = min(burst, n_frames - start)
            noise = (rng.standard_normal(n) * 3000.0).clip(-32767, 32767).astype("<i2")
            fh.seek(WAV_HEADER_BYTES + 2 * start)
            fh.write(noise.tobytes())
            start += int(burst_period_s * sr)


def build(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    long_seconds: float | None = LONG_SECONDS,
) -> list[CorpusEntry]:
    """Write the corpus under ``root`` (created if needed; must be empty or absent).

    Parameters
    ----------
    root : path-like
        Destination folder.
    seed : int
        Seed for every random byte and sample.
    long_seconds : float or None
        Duration of the sparse long file; ``None`` leaves it out.

    Returns
    -------
    list of CorpusEntry
        Every entry written, in a fixed order.
    """
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries: list[CorpusEntry] = []
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0

    def add(name: str, problem: str, expect: str, make: Callable[[Path], object]) -> None:
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        entries.append(CorpusEntry(name, problem, expect))

    def soundfile_writer(y: np.ndarray, sr: int, **kw: str) -> Callable[[Path], None]:
        def write(p: Path) -> None:
            # Through a file object: soundfile cannot encode a non-UTF-8 file name itself.
            kw.setdefault("format", "WAV")
            with open(p, "wb") as fh:
                sf.write(fh, y, sr, **kw)

        return write

    # --- good files: the run must index something and exit 0 ---
    for i, freq in enumerate((60.0, 180.0, 440.0)):
        y = _tone(0.5, sr=SR, freq=freq, rng=rng)
        add(f"good/tone_{i}.wav", "ok", EXPECT_INDEX, soundfile_writer(y, SR, subtype="PCM_16"))
    add("good/tone.flac", "ok", EXPECT_INDEX,
        soundfile_writer(_tone(1.0, sr=SR, freq=330.0, rng=rng), SR, format="FLAC"))
    add("good/tick_20ms.wav", "20 ms sound (padded, not skipped)", EXPECT_INDEX,
        soundfile_writer(_tone(0.02, sr=SR, freq=2000.0, rng=rng), SR, subtype="PCM_16"))

    # --- empty and tiny ---
    add("zero_length.wav", "zero-length file", EXPECT_SKIP, lambda p: p.write_bytes(b""))
    add("header_only.wav", "valid WAV header, 0 frames", EXPECT_SKIP,
        lambda p: p.write_bytes(_pcm16_header(0, channels=1, sr=SR)))
    add("one_sample.wav", "one sample long", EXPECT_EITHER,
        soundfile_writer(np.array([0.5], dtype=np.float32), SR, subtype="PCM_16"))
    add("silent.wav", "all zeros", EXPECT_SKIP,
        soundfile_writer(np.zeros(SR, dtype=np.float32), SR, subtype="PCM_16"))

    # --- truncated / lying / garbage ---
    flac_full = base / ".flac_full.tmp"
    soundfile_writer(_tone(2.0, sr=SR, freq=220.0, rng=rng), SR, format="FLAC")(flac_full)
    flac_bytes = flac_full.read_bytes()
    flac_full.unlink()
    add("truncated_half.flac", "FLAC cut at half its length", EXPECT_EITHER,
        lambda p: p.write_bytes(flac_bytes[: len(flac_bytes) // 2]))
    add("truncated_header.flac", "FLAC cut inside its header (60 bytes)", EXPECT_SKIP,
        lambda p: p.write_bytes(flac_bytes[:60]))
    add("lying_header.wav", "header claims 10 s, file holds 0.1 s", EXPECT_EITHER,
        lambda p: p.write_bytes(_pcm16_header(10 * SR, channels=1, sr=SR)
                                + (_tone(0.1, sr=SR, freq=500.0, rng=rng) * 20000)
                                .astype("<i2").tobytes()))
    garbage = rng.bytes(65536)
    add("garbage.wav", "random bytes named .wav", EXPECT_SKIP, lambda p: p.write_bytes(garbage))
    add("garbage.mp3", "random bytes named .mp3", EXPECT_SKIP,
        lambda p: p.write_bytes(rng.bytes(16384)))
    add("text.aiff", "a text file named .aiff", EXPECT_SKIP,
        lambda p: p.write_bytes(b"not audio, just a note\n" * 40))

    # --- wrong extension on valid audio ---
    add("wav_named.flac", "a valid WAV named .flac", EXPECT_EITHER,
        soundfile_writer(_tone(0.5, sr=SR, freq=700.0, rng=rng), SR, subtype="PCM_16"))
    add("flac_named.ogg", "a valid FLAC named .ogg", EXPECT_EITHER,
        soundfile_writer(_tone(0.5, sr=SR, freq=900.0, rng=rng), SR, format="FLAC"))

    # --- exotic or extreme formats ---
    add("vorbis_in_riff.wav", "Vorbis-in-RIFF (format tag 0x674f), libsndfile refuses it",
        EXPECT_SKIP,
        lambda p: p.write_bytes(_riff_wav(WAVE_FORMAT_VORBIS1, channels=2, sr=SR, bits=16,
                                          data=rng.bytes(8192), extra=b"")))
    hi_t = np.arange(HI_SR, dtype=np.float64) / HI_SR
    hi = np.stack([0.3 * np.sin(2 * np.pi * (110.0 * (c + 1)) * hi_t)
                   for c in range(HI_CHANNELS)], axis=1).astype(np.float32)
    add("eight_ch_192k.wav", "8 channels at 192 kHz, 1 s", EXPECT_INDEX,
        soundfile_writer(hi, HI_SR, subtype="FLOAT"))
    add("nan.wav", "float WAV full of NaN", EXPECT_SKIP,
        soundfile_writer(np.full(SR // 2, np.nan, dtype=np.float32), SR, subtype="FLOAT"))
    partial = _tone(0.5, sr=SR, freq=250.0, rng=rng)
    partial[1000:1010] = np.nan
    partial[2000] = np.inf
    add("nan_partial.wav", "float WAV with a few NaN/inf samples", EXPECT_EITHER,
        soundfile_writer(partial, SR, subtype="FLOAT"))
    add("huge_values.wav", "float WAV with samples at 1e30", EXPECT_EITHER,
        soundfile_writer(_tone(0.5, sr=SR, freq=350.0, rng=rng) * np.float32(1e30), SR,
                         subtype="FLOAT"))
    if long_seconds:
        add("two_hours.wav", f"{long_seconds:.0f} s sparse WAV (mostly silence)", EXPECT_EITHER,
            lambda p: write_sparse_long_wav(p, seconds=long_seconds, seed=seed))

    # --- names and file-system oddities ---
    # Not valid UTF-8 on disk (os.fsencode -> b"\xff"); soundfile.read(str) raises
    # UnicodeEncodeError on it, not LibsndfileError.
    odd_name = "name_\udcff_latin1.wav"
    add(odd_name, "file name that is not valid UTF-8", EXPECT_EITHER,
        soundfile_writer(_tone(0.3, sr=SR, freq=600.0, rng=rng), SR, subtype="PCM_16"))

    def make_unreadable(p: Path) -> None:
        soundfile_writer(_tone(0.3, sr=SR, freq=800.0, rng=rng), SR, subtype="PCM_16")(p)
        p.chmod(0)

    add("unreadable_mode000.wav",
        "mode 000 (EACCES for a normal user; root reads it anyway)",
        EXPECT_EITHER if is_root else EXPECT_SKIP, make_unreadable)
    add("dangling.wav", "symlink to a missing file (ENOENT, even for root)",
        EXPECT_ABSENT_OR_SKIP, lambda p: p.symlink_to("does_not_exist.wav"))
    add("directory.wav", "a directory named .wav (EISDIR)", EXPECT_ABSENT_OR_SKIP,
        lambda p: p.mkdir())
    add("fifo.wav", "a FIFO named .wav (open() blocks forever)", EXPECT_ABSENT_OR_SKIP,
        lambda p: os.mkfifo(p))

    def make_loop(p: Path) -> None:
        p.symlink_to("loop_b.wav")
        (p.parent / "loop_b.wav").symlink_to(p.name)

    add("loops/loop_a.wav", "symlink loop a -> b -> a (ELOOP)", EXPECT_ABSENT_OR_SKIP, make_loop)
    entries.append(CorpusEntry("loops/loop_b.wav", "symlink loop b -> a (ELOOP)",
                               EXPECT_ABSENT_OR_SKIP))
    add("loops/parent", "directory symlink to its parent (infinite recursion if followed)",
        EXPECT_ABSENT_OR_SKIP, lambda p: p.symlink_to(".."))
    return entries


def main(argv: list[str] | None = None) -> int:
    """``python -m emberd.testing.badcorpus DIR``: write the corpus and list it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long-seconds", type=float, default=LONG_SECONDS,
                        help="duration of the sparse long file (0 leaves it out)")
    args = parser.parse_args(argv)
    for e in build(args.root, seed=args.seed, long_seconds=args.long_seconds or None):
        print(f"{e.expect:15s} {e.name!a:40s} {e.problem}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
