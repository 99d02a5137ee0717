"""Streaming encoder benchmark: per-hop cost against the full-window run, and quality.

In one process, interleaved so both see the same machine load:

* the full-window aiSFX ONNX graph on one 100-frame window (the anchor);
* the streaming encoder at 8-frame hops, ONNX step graph (default) and numpy
  im2col backend, 1 channel and 8 channels batched;

all with 2 threads, spinning off (as the daemon runs). Then quality on real
audio (hydrogen-drumkits one-shots with gaps, plus a synthesised loop):
cosine between each streaming embedding and the windowed reference (ONNX on
the same 100 frames, zero-padded edges) and against the network run on the
whole stream (exact by construction), and a small identification check:
top-1 of each one-shot's embedding at its onset against a library of the
isolated one-shots, streaming vs windowed.

The last line is ``per_hop_ms_p50=... per_hop_ms_p99=... full_window_ms_p50=...
speedup=... cos_p5=...`` (1 channel, ONNX backend, 8-frame hops).

Usage: ``python bench/streaming.py [--quick]``. Fetches aiSFX if needed.
aiSFX: Ma & Lerch, ISMIR 2022 (MIT code, CC BY 4.0 model).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emberd.models import aisfx
from emberd.models import conv_numpy as cn
from emberd.models.onnxrt import onnxruntime
from emberd.models.runtime import session_options
from emberd.models.streaming import StreamingEncoder

THREADS = 2
HOP_FRAMES = 8  # one block-4 column per hop
WINDOW_FRAMES = 100
FRAME_MS = 1024 / 44100 * 1e3  # 23.2 ms per mel frame
DRUMKITS = Path("/usr/share/hydrogen/data/drumkits")
SR = 44100
ALIGN_SAMPLES = HOP_FRAMES * 1024  # one-shots start on the 8-frame column grid


def timed(fns: dict[str, Callable[[int], object]], n: int) -> dict[str, np.ndarray]:
    """Call each fn(i) for i in range(n), interleaved; wall ms per call."""
    out = {name: np.empty(n) for name in fns}
    for i in range(n):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(i)
            out[name][i] = (time.perf_counter() - t0) * 1e3
    return out


def drum_stream(n_shots: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """One-shots (aligned to the column grid, random gaps) then a 16-bar-ish loop.

    Returns the mono stream, the isolated one-shots and their onset frames.
    """
    import soundfile as sf
    import soxr

    rng = np.random.default_rng(seed)
    files = sorted(DRUMKITS.glob("*/*.wav")) + sorted(DRUMKITS.glob("*/*.flac"))
    if not files:
        raise SystemExit(f"bench/streaming.py needs hydrogen-drumkits in {DRUMKITS}")
    shots = []
    for i in rng.choice(len(files), n_shots, replace=False):
        y, sr = sf.read(files[i], dtype="float32", always_2d=True)
        shots.append(soxr.resample(y.mean(axis=1), sr, SR)[: SR * 3].astype(np.float32))
    pieces: list[np.ndarray] = []
    onsets: list[int] = []
    pos = 0
    for shot in shots:
        onsets.append(pos // 1024)
        gap = int(rng.integers(0, SR))
        length = -(-(shot.size + gap) // ALIGN_SAMPLES) * ALIGN_SAMPLES
        piece = np.zeros(length, np.float32)
        piece[: shot.size] = shot
        pieces.append(piece)
        pos += length
    loop = np.zeros(SR * 20, np.float32)
    step = SR * 60 // 120 // 4  # 16th notes at 120 bpm
    for start in range(0, loop.size - SR, step):
        if rng.random() < 0.6:
            hit = shots[int(rng.integers(0, min(6, n_shots)))][:SR]
            loop[start : start + hit.size] += hit * rng.uniform(0.3, 1.0)
    return np.concatenate([*pieces, loop]), shots, onsets


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(
        (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer hops and one-shots")
    args = parser.parse_args()
    n_hops = 150 if args.quick else 600
    n_shots = 30 if args.quick else 80

    from emberd.dsp.config import preset
    from emberd.dsp.frontend import melspectrogram
    from emberd.paths import cache_dir

    state, _ds = aisfx.load_checkpoint(aisfx.fetch_wheel(cache_dir()))
    folded = aisfx.folded_weights(state)
    ort = onnxruntime()
    full = ort.InferenceSession(
        aisfx.build_onnx(folded).SerializeToString(),
        session_options(THREADS, spinning=False),
        providers=["CPUExecutionProvider"],
    )

    def full_embed(x: np.ndarray) -> np.ndarray:
        return np.asarray(full.run(None, {aisfx.INPUT_NAME: x})[0])

    y, shots, onsets = drum_stream(n_shots)
    mel = melspectrogram(y, preset("aisfx"))
    print(f"stream: {y.size / SR:.1f} s, {mel.shape[0]} frames, {len(shots)} one-shots + loop")

    # ---------------------------------------------------------------- timing
    rng = np.random.default_rng(1)
    frames8 = np.ascontiguousarray(
        np.stack([mel[s : s + n_hops * HOP_FRAMES] for s in rng.integers(0, 400, size=8)])
    )
    window1 = np.ascontiguousarray(mel[None, :WINDOW_FRAMES])
    window8 = np.ascontiguousarray(frames8[:, :WINDOW_FRAMES])
    encs = {
        "stream onnx  C=1": StreamingEncoder(folded, hop_frames=HOP_FRAMES, threads=THREADS),
        "stream onnx  C=8": StreamingEncoder(
            folded, hop_frames=HOP_FRAMES, channels=8, threads=THREADS
        ),
        "stream numpy C=1": StreamingEncoder(
            folded, hop_frames=HOP_FRAMES, threads=THREADS, backend="numpy"
        ),
        "stream numpy C=8": StreamingEncoder(
            folded, hop_frames=HOP_FRAMES, channels=8, threads=THREADS, backend="numpy"
        ),
    }

    def hop(enc: StreamingEncoder) -> Callable[[int], object]:
        x = frames8[: enc.channels]
        return lambda i: enc.push(x[:, i * HOP_FRAMES : (i + 1) * HOP_FRAMES])

    fns: dict[str, Callable[[int], object]] = {
        "full window  C=1": lambda i: full_embed(window1),
        "full window  C=8": lambda i: full_embed(window8),
    }
    fns.update({name: hop(enc) for name, enc in encs.items()})
    for fn in fns.values():  # warm-up: ORT plans, first pushes fill the context
        for i in range(5):
            fn(i)
    for enc in encs.values():
        enc.reset()
    times = timed(fns, n_hops)
    anchor = float(np.percentile(times["full window  C=1"], 50))
    print(f"\nper call, {THREADS} threads, spinning off, {n_hops} calls each, interleaved")
    print(f"{'path':<18} {'p50 ms':>8} {'p99 ms':>8} {'x anchor':>9}  (anchor: full window C=1)")
    for name, t in times.items():
        p50, p99 = np.percentile(t, [50, 99])
        print(f"{name:<18} {p50:8.3f} {p99:8.3f} {p50 / anchor:9.3f}")
    hop_ms = HOP_FRAMES * FRAME_MS
    p99_8 = float(np.percentile(times["stream onnx  C=8"], 99))
    print(
        f"8 channels per 8-frame hop: p99 {p99_8:.2f} ms of the {hop_ms:.1f} ms hop "
        f"({100 * p99_8 / hop_ms:.1f}%)"
    )

    # --------------------------------------------------------------- quality
    enc = StreamingEncoder(folded, hop_frames=HOP_FRAMES, threads=THREADS)
    got: dict[int, np.ndarray] = {}
    for s in range(0, mel.shape[0], HOP_FRAMES):
        for end, emb in enc.push(mel[None, s : s + HOP_FRAMES]):
            got[end] = emb[0].copy()
    ends = [e for e in sorted(got) if e >= 96 and e + 4 <= mel.shape[0]]
    windows = np.stack([mel[e - 96 : e + 4] for e in ends])
    ref = np.concatenate([full_embed(windows[i : i + 64]) for i in range(0, len(ends), 64)])
    stream = np.stack([got[e] for e in ends])
    cos = cosine(stream, ref)
    cols = cn.forward_columns(folded, mel[None, : mel.shape[0] // 8 * 8])[0]
    whole = np.stack([cols[max(0, e // 8 - 12) : e // 8].max(axis=0) for e in ends])
    print(
        f"\nquality on {len(ends)} embeddings: cosine to the windowed reference "
        f"p1 {np.percentile(cos, 1):.4f} p5 {np.percentile(cos, 5):.4f} "
        f"p50 {np.percentile(cos, 50):.4f} min {cos.min():.4f}; "
        f"max |stream - whole-stream network| {np.abs(stream - whole).max():.2e}"
    )

    # Identification: each one-shot's embedding at its onset vs the isolated shots.
    lib_windows = np.zeros((len(shots), WINDOW_FRAMES, cn.N_MELS), np.float32)
    for i, shot in enumerate(shots):
        m = melspectrogram(shot, preset("aisfx"))[:WINDOW_FRAMES]
        lib_windows[i, : m.shape[0]] = m
    library = full_embed(lib_windows)
    q_ends = [o + 96 for o in onsets if o + 96 in got and o + 100 <= mel.shape[0]]
    q_stream = np.stack([got[e] for e in q_ends])
    q_window = full_embed(np.stack([mel[e - 96 : e + 4] for e in q_ends]))
    truth = np.array([onsets.index(e - 96) for e in q_ends])
    for name, q in (("windowed", q_window), ("streaming", q_stream)):
        sims = cosine(q[:, None], library[None])
        top1 = float((sims.argmax(axis=1) == truth).mean())
        print(f"identification top-1 ({name}): {100 * top1:.1f}% of {len(q_ends)} one-shots")

    t1 = times["stream onnx  C=1"]
    p50, p99 = np.percentile(t1, [50, 99])
    print(
        f"per_hop_ms_p50={p50:.3f} per_hop_ms_p99={p99:.3f} full_window_ms_p50={anchor:.3f} "
        f"speedup={anchor / p50:.2f} cos_p5={np.percentile(cos, 5):.4f}"
    )


if __name__ == "__main__":
    main()
