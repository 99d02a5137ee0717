"""Streaming encoder benchmark: per-hop cost against the full-window run, and quality.

In one process, interleaved so both see the same machine load:

* the full-window aiSFX ONNX graph on one 100-frame window (the anchor);
* the streaming encoder at 8-frame hops, ONNX step graph (default) and numpy
  im2col backend, 1 channel and 8 channels batched;

all with 2 threads, spinning off (as the daemon runs). Then quality on real
audio (hydrogen-drumkits one-shots with gaps, plus a synthesised loop):
cosine between each streaming embedding and the windowed reference (ONNX on
the same 100 frames, zero-padded edges) and against the network run on the
whole stream (exact by construction), and a small identification check: the
one-shots again, each alone in its window in a second stream, their embedding
at the onset queried (top-1, cosine) against a library of the isolated
one-shots embedded windowed, streaming vs windowed queries.

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
SPACING_FRAMES = 136  # one-shot onsets: window + 30 frames context, a multiple of 8


def timed(fns: dict[str, tuple[Callable[[int], object], int]], n: int) -> dict[str, np.ndarray]:
    """Interleave the fns: ``(fn, every)`` is called as fn(i) when ``i % every == 0``."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(n):
        for name, (fn, every) in fns.items():
            if i % every == 0:
                t0 = time.perf_counter()
                fn(i // every)
                out[name].append((time.perf_counter() - t0) * 1e3)
    return {name: np.asarray(v) for name, v in out.items()}


def load_shots(n_shots: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n_shots`` random hydrogen-drumkits samples, mono at 44.1 kHz, at most 3 s."""
    import soundfile as sf
    import soxr

    files = sorted(DRUMKITS.glob("*/*.wav")) + sorted(DRUMKITS.glob("*/*.flac"))
    if not files:
        raise SystemExit(f"bench/streaming.py needs hydrogen-drumkits in {DRUMKITS}")
    shots = []
    for i in rng.choice(len(files), n_shots, replace=False):
        y, sr = sf.read(files[i], dtype="float32", always_2d=True)
        shots.append(soxr.resample(y.mean(axis=1), sr, SR)[: SR * 3].astype(np.float32))
    return shots


def dense_stream(shots: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The one-shots with random 0-1 s gaps, then 20 s of a 120 bpm 16th-note loop."""
    pieces: list[np.ndarray] = []
    for shot in shots:
        pieces += [shot, np.zeros(int(rng.integers(0, SR)), np.float32)]
    loop = np.zeros(SR * 20, np.float32)
    step = SR * 60 // 120 // 4  # 16th notes at 120 bpm
    for start in range(0, loop.size - SR, step):
        if rng.random() < 0.6:
            hit = shots[int(rng.integers(0, min(6, len(shots))))][:SR]
            loop[start : start + hit.size] += hit * rng.uniform(0.3, 1.0)
    return np.concatenate([*pieces, loop])


def spaced_stream(shots: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Each one-shot alone in its window: onsets every SPACING_FRAMES (on the column grid).

    Returns the stream and the onset frame of each shot.
    """
    y = np.zeros((len(shots) + 1) * SPACING_FRAMES * 1024, np.float32)
    onsets = []
    for i, shot in enumerate(shots):
        start = i * SPACING_FRAMES * 1024
        clip = shot[: (WINDOW_FRAMES - 4) * 1024]  # silence before the next window
        y[start : start + clip.size] = clip
        onsets.append(i * SPACING_FRAMES)
    return y, onsets


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

    rng = np.random.default_rng(0)
    shots = load_shots(n_shots, rng)
    y = dense_stream(shots, rng)
    mel = melspectrogram(y, preset("aisfx"))
    print(f"dense stream: {y.size / SR:.1f} s, {mel.shape[0]} frames, {n_shots} one-shots + loop")

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

    # (fn, every): the costly paths run on every 2nd/4th round to keep the run short.
    fns: dict[str, tuple[Callable[[int], object], int]] = {
        "full window  C=1": (lambda i: full_embed(window1), 1),
        "full window  C=8": (lambda i: full_embed(window8), 4),
        "stream onnx  C=1": (hop(encs["stream onnx  C=1"]), 1),
        "stream onnx  C=8": (hop(encs["stream onnx  C=8"]), 1),
        "stream numpy C=1": (hop(encs["stream numpy C=1"]), 2),
        "stream numpy C=8": (hop(encs["stream numpy C=8"]), 4),
    }
    for fn, _every in fns.values():  # warm-up: ORT plans, first pushes fill the context
        for i in range(5):
            fn(i)
    for enc in encs.values():
        enc.reset()
    times = timed(fns, n_hops)
    anchor = float(np.percentile(times["full window  C=1"], 50))
    print(f"\nper call, {THREADS} threads, spinning off, interleaved rounds")
    print(f"{'path':<18} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'x anchor':>9}")
    for name, t in times.items():
        p50, p99 = np.percentile(t, [50, 99])
        print(f"{name:<18} {t.size:6d} {p50:8.3f} {p99:8.3f} {p50 / anchor:9.3f}")
    print("(anchor: full window C=1; the stream rows are one 8-frame hop each)")
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

    # Identification: each one-shot, alone in its window in a stream, queried
    # against a library of the isolated one-shots embedded with the windowed net.
    lib_windows = np.zeros((len(shots), WINDOW_FRAMES, cn.N_MELS), np.float32)
    for i, shot in enumerate(shots):
        m = melspectrogram(shot, preset("aisfx"))[:WINDOW_FRAMES]
        lib_windows[i, : m.shape[0]] = m
    library = np.concatenate([full_embed(lib_windows[i : i + 32]) for i in range(0, n_shots, 32)])
    y2, onsets = spaced_stream(shots)
    mel2 = melspectrogram(y2, preset("aisfx"))
    enc.reset()
    got2: dict[int, np.ndarray] = {}
    for s in range(0, mel2.shape[0], HOP_FRAMES):
        for end, emb in enc.push(mel2[None, s : s + HOP_FRAMES]):
            got2[end] = emb[0].copy()
    q_stream = np.stack([got2[o + 96] for o in onsets])
    wins2 = np.stack([mel2[o : o + WINDOW_FRAMES] for o in onsets])
    q_window = np.concatenate([full_embed(wins2[i : i + 32]) for i in range(0, n_shots, 32)])
    truth = np.arange(n_shots)
    picks = {}
    for name, q in (("windowed", q_window), ("streaming", q_stream)):
        picks[name] = cosine(q[:, None], library[None]).argmax(axis=1)
        top1 = 100 * float((picks[name] == truth).mean())
        print(f"identification top-1 ({name}): {top1:.1f}% of {n_shots} one-shots")
    same = 100 * float((picks["windowed"] == picks["streaming"]).mean())
    print(f"streaming and windowed pick the same library item for {same:.1f}%")

    t1 = times["stream onnx  C=1"]
    p50, p99 = np.percentile(t1, [50, 99])
    print(
        f"per_hop_ms_p50={p50:.3f} per_hop_ms_p99={p99:.3f} full_window_ms_p50={anchor:.3f} "
        f"speedup={anchor / p50:.2f} cos_p5={np.percentile(cos, 5):.4f}"
    )


if __name__ == "__main__":
    main()
