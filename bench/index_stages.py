"""Where indexing time goes: CPU milliseconds per file for every stage of ``emberd index``.

Runs each stage of :func:`emberd.library.indexer.prepare_file` and of the
main process (windows + network, pooling + SQLite) on the same files, one
stage at a time in this process, and the reference pipeline's stages
(``librosa.load``, librosa mel, the aiSFX network on full windows) beside
them. CPU seconds of this process (``os.times``), not wall time: on a shared
machine whose load moves they measure the work, not the waiting. ONNX Runtime
uses ``ENCODER_THREADS`` intra-op threads and BLAS one thread, as in the
indexer's workers.

The last lines give the ceilings these costs put on
``bench/index_throughput.py``'s speedup: the reference's CPU per file over
emberd's network CPU per file alone (all other stages free) for fp32 with
exact silence skipping and for ``aisfx-int8``.

Usage: ``python bench/index_stages.py [--limit N] [DIR]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emberd.library.indexer import Indexer, Summary, embed_files, frame_energy, prepare_file
from emberd.library.scan import scan
from emberd.models.registry import resolve
from emberd.models.runtime import Encoder

KITS = "/usr/share/hydrogen/data/drumkits"
ENCODER_THREADS = 2
SR = 44100  # Hz
N_FFT = 2048
HOP = 1024
N_MELS = 96


def cpu_s() -> float:
    """CPU seconds of this process so far, all its threads (``os.times`` counts in 10 ms
    ticks: too coarse for one stage of one file)."""
    return time.process_time()


class Stages:
    """CPU seconds per named stage, summed over files."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        c0 = cpu_s()
        out = fn()
        self.total[name] += cpu_s() - c0
        return out


def main() -> None:
    """Time every stage and print ms of CPU per file."""
    import librosa
    from threadpoolctl import threadpool_limits

    from emberd.dsp.frontend import melspectrogram
    from emberd.dsp.resample import mono_at
    from emberd.dsp.silence import SILENCE_PEAK_DBFS, no_sound_reason
    from emberd.dsp.sources import load_audio
    from emberd.library import fingerprint, waveform
    from emberd.library.indexer import _header_duration_s, _Job, _sha256
    from emberd.models.embedding import frame_windows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=KITS)
    ap.add_argument("--limit", type=int, default=100, help="files (0: all)")
    args = ap.parse_args()
    threadpool_limits(limits=1, user_api="blas")
    warnings.filterwarnings("ignore", message="n_fft=")  # librosa on sub-frame files

    cands = scan([args.dir]).candidates
    if args.limit:
        cands = cands[: args.limit]
    manifest = resolve("aisfx")
    fe = manifest.frontend()
    encoders = {
        "network aisfx, silence skipping": Encoder(manifest, device="cpu",
                                                   threads=ENCODER_THREADS),
        "network aisfx, full windows": Encoder(manifest, device="cpu", threads=ENCODER_THREADS,
                                               skip_silence=False),
        "network aisfx-int8, silence skipping": Encoder(resolve("aisfx-int8"), device="cpu",
                                                        threads=ENCODER_THREADS),
    }  # fmt: skip
    s = Stages()
    mels = []
    n = 0
    for i, cand in enumerate([cands[0], *cands]):
        if i == 1:  # the first file again, now measured: lazy imports and caches are warm
            s, mels, n = Stages(), [], 0
        path = cand.path
        s.run("header (soundfile.info)", lambda p=path: _header_duration_s(p))
        s.run("sha256", lambda p=path: _sha256(p))
        y, _info = s.run("decode + resample (load_audio)",
                         lambda p=path: load_audio(p, sr=fe.sr, mono=True))  # fmt: skip
        if s.run("silence check", lambda y=y: no_sound_reason(y, floor_dbfs=SILENCE_PEAK_DBFS)):
            continue
        n += 1
        if len(y) < fe.n_fft:
            y = np.pad(y, (0, fe.n_fft - len(y)))
        mel = s.run("mel (aisfx front end)", lambda y=y: melspectrogram(y, fe))
        s.run("frame energy", lambda y=y, m=mel: frame_energy(y, fe.hop_length, m.shape[0]))
        y_fp = s.run("resample to 22.05 kHz", lambda y=y: mono_at(y, fe.sr, fingerprint.FP_SR))
        s.run("landmarks", lambda y=y_fp: fingerprint.landmarks(y, fingerprint.FP_SR))
        s.run("template", lambda y=y_fp: fingerprint.template(y, fingerprint.FP_SR))
        s.run("snippet", lambda y=y_fp: waveform.snippet(y, fingerprint.FP_SR))
        mels.append(mel)
        # The reference's stages on the same file.
        yr, _ = s.run("ref: librosa.load", lambda p=path: librosa.load(p, sr=SR, mono=True))
        s.run("ref: librosa mel", lambda y=yr: np.clip((librosa.power_to_db(
            librosa.feature.melspectrogram(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP,
                                           n_mels=N_MELS), top_db=80.0).T + 80.0) / 80.0,
            0.0, 1.0))  # fmt: skip
    windows = [
        frame_windows(m, window_frames=manifest.window_frames, hop_frames=manifest.hop_frames,
                      tail="pad")[0]
        for m in mels
    ]  # fmt: skip
    n_windows = sum(len(w) for w in windows)
    for name, enc in encoders.items():
        batches = [mels[i : i + 16] for i in range(0, len(mels), 16)]
        s.run(name, lambda e=enc, b=batches: [embed_files(e, m, manifest) for m in b])
    ref_enc = encoders["network aisfx, full windows"]
    s.run("ref: network (one file at a time, full windows)",
          lambda: [ref_enc.embed(w) for w in windows])  # fmt: skip
    # Pooling + SQLite: the indexer's own store path on the prepared files.
    tmp = Path(tempfile.mkdtemp(prefix="emberd-stages-"))
    try:
        ix = Indexer(tmp / "lib", "aisfx", jobs=0, threads=ENCODER_THREADS)
        try:
            enc = encoders["network aisfx, silence skipping"]
            ix._encoder = enc
            summary = Summary()
            for i in range(0, len(cands), 16):
                batch = []
                for cand in cands[i : i + 16]:
                    res = prepare_file(_Job(cand.path, need_fingerprint=True), fe)
                    if res["ok"]:
                        batch.append((cand, res))
                if batch:
                    emb = ix._embed_batch(batch)
                    s.run("pool + SQLite writes", lambda b=batch, e=emb: ix._store_batch(
                        b, e, summary))  # fmt: skip
        finally:
            ix.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{n} files, {n_windows} windows ({n_windows / max(n, 1):.2f} per file), CPU ms per "
          f"file, encoder threads {ENCODER_THREADS}, BLAS 1 thread")  # fmt: skip
    emberd_rest = 0.0
    ref_total = 0.0
    for name, secs in s.total.items():
        ms = 1e3 * secs / max(n, 1)
        print(f"  {name:48s} {ms:7.2f}")
        if name.startswith("ref:"):
            ref_total += ms
        elif not name.startswith("network"):
            emberd_rest += ms
    net = {k: 1e3 * v / max(n, 1) for k, v in s.total.items() if k.startswith("network")}
    print(f"  {'emberd, all but the network':48s} {emberd_rest:7.2f}")
    print(f"  {'reference, all stages':48s} {ref_total:7.2f}")
    for name, ms in net.items():
        print(f"{name}: whole pipeline {emberd_rest + ms:.2f} ms/file -> CPU speedup "
              f"{ref_total / (emberd_rest + ms):.2f}x; with every other stage free "
              f"{ref_total / ms:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
