"""One-shot costs: a live hit's onset-aligned window and a one-shot query, same run.

* hit window: the first ``k`` mel frames of a real drum hit (from its onset)
  in a 100-frame window, the rest silence (what a hit's snippet becomes through
  :func:`emberd.library.query.query_vector`), one ``Encoder.embed`` call:
  aiSFX on full windows (the anchor), aiSFX with exact silence skipping, and
  aisfx-int8 with skipping; p50 / p99 over ``--runs`` calls, and the whole
  ``query_vector`` (mel + encoder) of a 0.3 s snippet. Goal: <= 5 ms on CPU.
* one-shot query: ``Library.query_audio`` (embedding search + identification)
  of every sample of one held-out kit against a library of the other kits'
  first ``--library-files`` samples; p50 / p95 wall time. Goal: p50 <= 0.15 s.

Usage: ``python bench/oneshot.py [--runs N] [--library-files N]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from emberd.dsp.frontend import melspectrogram
from emberd.dsp.sources import load_audio
from emberd.library.indexer import Indexer
from emberd.library.query import Library, query_vector
from emberd.library.scan import scan
from emberd.models.registry import resolve
from emberd.models.runtime import Encoder
from emberd.testing.benchkit import call_ms

KITS = Path("/usr/share/hydrogen/data/drumkits")
QUERY_KIT = "ElectricEmpireKit"  # held out (kits half B): never in the library
HIT_FRAMES = (5, 13, 31)  # 0.12 s, 0.3 s, 0.72 s (the median hydrogen sample) of sound
SNIPPET_S = 0.3
THREADS = 2


def hit_windows(runs: int) -> None:
    """Encoder cost of onset-aligned hit windows."""
    manifest = resolve("aisfx")
    config = manifest.frontend()
    for snare in sorted((KITS / QUERY_KIT).glob("*.flac")):  # the first long enough
        y, _ = load_audio(snare, sr=config.sr, mono=True)
        mel = melspectrogram(y, config)
        if mel.shape[0] >= max(HIT_FRAMES):
            break
    encoders = {
        "aisfx full windows (anchor)": Encoder(manifest, device="cpu", threads=THREADS,
                                               skip_silence=False),
        "aisfx silence skipping": Encoder(manifest, device="cpu", threads=THREADS),
        "aisfx-int8 silence skipping": Encoder(resolve("aisfx-int8"), device="cpu",
                                               threads=THREADS),
    }  # fmt: skip
    print(f"hit windows ({snare.name}), {runs} calls each, encoder threads {THREADS}")
    for k in HIT_FRAMES:
        x = np.zeros((1, manifest.window_frames, manifest.n_mels), np.float32)
        x[0, :k] = mel[:k]
        anchor = 0.0
        for name, enc in encoders.items():
            p50, p99 = call_ms(lambda e=enc, x=x: e.embed(x), runs)
            anchor = anchor or p50
            print(f"  {k:3d} frames  {name:30s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                  f"x{anchor / p50:5.2f}")  # fmt: skip
    snippet = y[: int(SNIPPET_S * config.sr)]
    for model in ("aisfx", "aisfx-int8"):
        p50, p99 = call_ms(lambda m=model: query_vector(snippet, config.sr, m), runs)
        print(f"  query_vector of a {SNIPPET_S:.1f} s snippet, {model:10s} p50 {p50:7.2f} ms  "
              f"p99 {p99:7.2f} ms")  # fmt: skip


def oneshot_queries(library_files: int) -> None:
    """Wall time of ``Library.query_audio`` for held-out one-shots."""
    files = [c.path for c in scan([str(KITS)]).candidates]
    lib_files = [f for f in files if Path(f).parent.name != QUERY_KIT][:library_files]
    queries = [f for f in files if Path(f).parent.name == QUERY_KIT]
    tmp = Path(tempfile.mkdtemp(prefix="emberd-oneshot-"))
    try:
        (tmp / "files").mkdir()
        for i, f in enumerate(lib_files):
            (tmp / "files" / f"{i:05d}{Path(f).suffix}").symlink_to(f)
        ix = Indexer(tmp / "lib", "aisfx", jobs=2, threads=THREADS)
        try:
            ix.run([str(tmp / "files")])
        finally:
            ix.close()
        sr = resolve("aisfx").frontend().sr
        audio = [load_audio(q, sr=sr, mono=True)[0] for q in queries]
        with Library.open(tmp / "lib") as lib:
            lib.query_audio(audio[0], sr, 10, model="aisfx")  # loads indexes and encoder
            times = []
            for y in audio:
                t0 = time.perf_counter()
                lib.query_audio(y, sr, 10, model="aisfx")
                times.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t = np.array(times)
    print(f"one-shot queries: {len(t)} samples of {QUERY_KIT} against {len(lib_files)} files: "
          f"p50 {np.median(t):.3f} s  p95 {np.percentile(t, 95):.3f} s "
          "(goal p50 <= 0.15 s)")  # fmt: skip


def main() -> None:
    """Run both measurements."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--library-files", type=int, default=300)
    args = ap.parse_args()
    hit_windows(args.runs)
    oneshot_queries(args.library_files)


if __name__ == "__main__":
    main()
