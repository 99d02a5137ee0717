"""Fit the int8 aiSFX calibration ranges on tuning kits; measure cosine to fp32 on held-out kits.

The hydrogen-drumkits kits sorted by name alternate "A" (tuning: calibration
windows) and "B" (held out: evaluation windows), as in bench/identify.py.
Every window of every A file (emberd's aisfx front end, 100-frame windows,
hop 50, padded tail) goes through ONNX Runtime's MinMax calibrator; the ranges
are written to ``emberd/models/builtin/aisfx-int8.calibration.json``, which
``emberd.models.quantize.build_int8`` uses to build ``aisfx-int8`` without data.

Then on the B windows: embedding cosine of int8 vs fp32 (min, 1st percentile,
mean). Identification figures come from bench/identify.py --model aisfx-int8.

Usage: ``python bench/fit_int8.py [--write]`` (without --write: fit into a
temporary cache and only report).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from emberd.dsp.frontend import melspectrogram
from emberd.dsp.sources import load_audio
from emberd.errors import EmberdError
from emberd.library.scan import scan
from emberd.models import quantize
from emberd.models.embedding import frame_windows
from emberd.models.registry import resolve
from emberd.models.runtime import Encoder

KITS = Path("/usr/share/hydrogen/data/drumkits")


def kit_windows(half: str) -> np.ndarray:
    """All 100-frame windows of the files of kits in ``half`` ("A" or "B")."""
    manifest = resolve("aisfx")
    config = manifest.frontend()
    names = sorted(p.name for p in KITS.iterdir() if p.is_dir())
    kits = [KITS / n for i, n in enumerate(names) if "AB"[i % 2] == half]
    out = []
    for cand in scan([str(k) for k in kits]).candidates:
        try:
            y, _ = load_audio(cand.path, sr=config.sr, mono=True)
        except EmberdError:
            continue
        if y.size == 0 or np.max(np.abs(y)) < 1e-4:
            continue
        if len(y) < config.n_fft:
            y = np.pad(y, (0, config.n_fft - len(y)))
        windows, _ = frame_windows(
            melspectrogram(y, config),
            window_frames=manifest.window_frames,
            hop_frames=manifest.hop_frames,
            tail="pad",
        )
        out.append(windows)
    return np.concatenate(out)


def main() -> None:
    """Fit, build, report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the shipped calibration file")
    args = ap.parse_args()
    fp32 = resolve("aisfx")
    tune = kit_windows("A")
    held = kit_windows("B")
    print(f"calibration: {len(tune)} windows of kits A; evaluation: {len(held)} of kits B")
    with tempfile.TemporaryDirectory(prefix="emberd-fit-int8-") as tmp:
        cache = quantize.calibration_path() if args.write else Path(tmp) / "calibration.json"
        cache.unlink(missing_ok=True)
        out = Path(tmp) / "model.onnx"
        quantize.quantize(fp32.path, out, cache=cache, windows=tune)
        print(f"calibration ranges written to {cache}")
        from dataclasses import replace

        int8 = Encoder(replace(fp32, path=out), device="cpu", skip_silence=False)
        ref = Encoder(fp32, device="cpu", skip_silence=False)
        a = np.concatenate([int8.embed(held[i : i + 32]) for i in range(0, len(held), 32)])
        b = np.concatenate([ref.embed(held[i : i + 32]) for i in range(0, len(held), 32)])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    print(
        f"held-out cosine int8 vs fp32: min {cos.min():.4f}  p1 {np.percentile(cos, 1):.4f}  "
        f"mean {cos.mean():.4f}  ({len(cos)} windows)"
    )


if __name__ == "__main__":
    main()
