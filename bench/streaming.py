"""Streaming encoder benchmark: both edge modes against the full-window run, and quality.

In one process, interleaved call by call so all paths see the same machine load,
repeated in rounds (the figures are medians over rounds):

* the full-window aiSFX ONNX graph on 100-frame windows (the anchor), 1 and 8;
* exact edges (default; numpy, 1 BLAS thread) at 8-frame hops, 1 and 8 channels,
  with 2 threads (one channel: left and right edge in parallel; 8: two groups of 4)
  and with 1;
* continuous edges (ONNX step graph) at 8-frame hops, 1 and 8 channels;

ONNX Runtime with 2 threads, spinning off (as the daemon runs). Then quality on
real audio (hydrogen-drumkits one-shots with gaps, plus a synthesised loop):
cosine between each mode's embeddings and the windowed reference on the same
100 frames; identification (each one-shot alone in a second stream, queried
top-1 against a library of the isolated one-shots embedded windowed); and the
onset-to-top-1 delay, audio time from a one-shot's onset until the first
embedding that finds it is *delivered* (the daemon's "within 1 s" criterion).

The last line is ``per_hop_ms_p50=... per_hop_ms_p99=... full_window_ms_p50=...
speedup=... cos_p5=...`` for the default mode (exact edges, 1 channel, 8-frame
hops); the continuous mode's figures are on the lines before it.

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
ROUNDS = 3  # interleaved timing rounds; medians over rounds
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
    """Each one-shot alone in its window: onsets every SPACING_FRAMES (a multiple of 8).

    Returns the stream and the onset frame of each shot.
    """
    y = np.zeros((len(shots) + 2) * SPACING_FRAMES * 1024, np.float32)
    onsets = []
    for i, shot in enumerate(shots, start=1):  # room before the first: windows start early
        start = i * SPACING_FRAMES * 1024
        clip = shot[: (WINDOW_FRAMES - 4) * 1024]  # silence before the next window
        y[start : start + clip.size] = clip
        onsets.append(i * SPACING_FRAMES)
    return y, onsets


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(
        (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    )


def run_stream(enc: StreamingEncoder, mel: np.ndarray) -> dict[int, np.ndarray]:
    """Push ``mel [T, 96]`` in 8-frame hops; map end_frame -> embedding copy."""
    enc.reset()
    got: dict[int, np.ndarray] = {}
    for s in range(0, mel.shape[0], HOP_FRAMES):
        for end, emb in enc.push(mel[None, s : s + HOP_FRAMES]):
            got[end] = emb[0].copy()
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer hops and one-shots")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="full window and continuous step graph on this device "
                             "(exact edges run numpy on the CPU)")  # fmt: skip
    args = parser.parse_args()
    n_hops = 60 if args.quick else 200
    n_shots = 30 if args.quick else 80

    from emberd.dsp.config import preset
    from emberd.dsp.frontend import melspectrogram
    from emberd.paths import cache_dir

    state, _ds = aisfx.load_checkpoint(aisfx.fetch_wheel(cache_dir()))
    folded = aisfx.folded_weights(state)
    ort = onnxruntime()
    providers: list[object] = ["CPUExecutionProvider"]
    if args.device == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": 0}))
    full = ort.InferenceSession(
        aisfx.build_onnx(folded).SerializeToString(),
        session_options(THREADS, spinning=False),
        providers=providers,
    )
    print(f"full window on {full.get_providers()[0]}")

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
        f"{edges:<10} C={c}": StreamingEncoder(
            folded, hop_frames=HOP_FRAMES, channels=c, threads=THREADS, edges=edges,
            device=args.device if edges == "continuous" else "cpu",
        )
        for edges in ("exact", "continuous")
        for c in (1, 8)
    }
    for c in (1, 8):  # exact with no helper thread (1 core): edge split / groups off
        encs[f"exact 1 thr C={c}"] = StreamingEncoder(
            folded, hop_frames=HOP_FRAMES, channels=c, threads=1
        )
    print(f"continuous step graph on {encs['continuous C=1'].provider}")

    def hop(enc: StreamingEncoder) -> Callable[[int], object]:
        x = frames8[: enc.channels]
        return lambda i: enc.push(x[:, i * HOP_FRAMES : (i + 1) * HOP_FRAMES])

    # (fn, every): the 8-channel full window runs every 4th round to keep the run short.
    fns: dict[str, tuple[Callable[[int], object], int]] = {
        "full window C=1": (lambda i: full_embed(window1), 1),
        "full window C=8": (lambda i: full_embed(window8), 4),
        **{name: (hop(enc), 1) for name, enc in encs.items()},
    }
    for fn, _every in fns.values():  # warm-up: ORT plans, first pushes
        for i in range(5):
            fn(i)
    rounds: list[dict[str, np.ndarray]] = []
    for _ in range(ROUNDS):
        for enc in encs.values():
            enc.reset()
        rounds.append(timed(fns, n_hops))
    med: dict[str, tuple[float, float]] = {}
    for name in fns:
        pct = np.array([np.percentile(r[name], [50, 99]) for r in rounds])
        med[name] = (float(np.median(pct[:, 0])), float(np.median(pct[:, 1])))
    ratio = {  # per-round p50 ratios to the same-round full window, then the median
        name: float(np.median([np.percentile(r[f"full window C={name[-1]}"], 50)
                               / np.percentile(r[name], 50) for r in rounds]))
        for name in encs
    }  # fmt: skip
    print(f"\nper call, ORT {THREADS} threads, spinning off, interleaved; medians of {ROUNDS} "
          f"rounds x {n_hops} hops")  # fmt: skip
    print(f"{'path':<18} {'p50 ms':>8} {'p99 ms':>8} {'full/this':>10}")
    for name in fns:
        p50, p99 = med[name]
        print(f"{name:<18} {p50:8.3f} {p99:8.3f} {ratio.get(name, 1.0):10.2f}")
    print("(full/this: same-channel full-window p50 over this path's p50, per round)")
    hop_ms = HOP_FRAMES * FRAME_MS
    for name in ("exact      C=8", "continuous C=8"):
        p99_8 = med[name][1]
        print(f"{name.split()[0]}, 8 channels per 8-frame hop: p99 {p99_8:.2f} ms of the "
              f"{hop_ms:.1f} ms hop ({100 * p99_8 / hop_ms:.1f}%)")  # fmt: skip

    # --------------------------------------------------------------- quality
    exact = StreamingEncoder(folded, hop_frames=HOP_FRAMES, pad_frame=mel.min(axis=0))
    cont = StreamingEncoder(folded, hop_frames=HOP_FRAMES, threads=THREADS, edges="continuous")
    cos: dict[str, np.ndarray] = {}
    for name, enc, shift in (("exact", exact, 0), ("continuous", cont, 4)):
        # Exact: the window ends at end_frame; continuous: it starts at end_frame - 96.
        got = run_stream(enc, mel)
        ends = [e for e in sorted(got) if e + shift >= WINDOW_FRAMES and e + shift <= mel.shape[0]]
        windows = np.stack([mel[e + shift - WINDOW_FRAMES : e + shift] for e in ends])
        ref = np.concatenate([full_embed(windows[i : i + 64]) for i in range(0, len(ends), 64)])
        emb = np.stack([got[e] for e in ends])
        cos[name] = cosine(emb, ref)
        cs = cos[name]
        print(f"\n{name}: {len(ends)} embeddings, cosine to the windowed reference p1 "
              f"{np.percentile(cs, 1):.5f} p5 {np.percentile(cs, 5):.5f} p50 "
              f"{np.percentile(cs, 50):.5f} min {cs.min():.5f}; max abs diff "
              f"{np.abs(emb - ref).max():.2e}", end="")  # fmt: skip
    print()

    # Identification and onset-to-top-1 delay: each one-shot alone in a second
    # stream, queried against a library of the isolated one-shots embedded windowed.
    lib_windows = np.zeros((len(shots), WINDOW_FRAMES, cn.N_MELS), np.float32)
    for i, shot in enumerate(shots):
        m = melspectrogram(shot, preset("aisfx"))[:WINDOW_FRAMES]
        lib_windows[i, : m.shape[0]] = m
    library = np.concatenate([full_embed(lib_windows[i : i + 32]) for i in range(0, n_shots, 32)])
    y2, onsets = spaced_stream(shots)
    mel2 = melspectrogram(y2, preset("aisfx"))
    truth = np.arange(n_shots)
    for lead in (0, 4):  # the library's alignment, and exact mode's (ends on the 8-grid)
        wins2 = np.stack([mel2[o - lead : o - lead + WINDOW_FRAMES] for o in onsets])
        q_win = np.concatenate([full_embed(wins2[i : i + 32]) for i in range(0, n_shots, 32)])
        top1 = 100 * float((cosine(q_win[:, None], library[None]).argmax(1) == truth).mean())
        print(f"identification top-1, windowed on [onset - {lead}, onset + {100 - lead}): "
              f"{top1:.1f}% of {n_shots}")  # fmt: skip
    for name, enc, query_end, delivered_after in (
        ("exact", exact, 96, 0),  # window [onset - 4, onset + 96)
        ("continuous", cont, 96, cont.latency_frames),  # covers [onset, onset + 96)
    ):
        got2 = run_stream(enc, mel2)
        q = np.stack([got2[o + query_end] for o in onsets])
        top1 = 100 * float((cosine(q[:, None], library[None]).argmax(1) == truth).mean())
        # Delay: audio from the onset until the first embedding whose top-1 is right
        # is delivered (its end frame plus the mode's look-ahead).
        delays = []
        for i, o in enumerate(onsets):
            steps = range(o + HOP_FRAMES, o + SPACING_FRAMES, HOP_FRAMES)
            qs = np.stack([got2[e] for e in steps if e in got2])
            hit = np.flatnonzero(cosine(qs[:, None], library[None]).argmax(1) == i)
            if hit.size:
                delays.append((HOP_FRAMES * (hit[0] + 1) + delivered_after) * FRAME_MS)
        d = np.asarray(delays)
        print(f"identification top-1, {name}: {top1:.1f}%; onset-to-top-1 delay (delivered) "
              f"p50 {np.median(d):.0f} ms p90 {np.percentile(d, 90):.0f} ms, within 1 s "
              f"{100 * float((d <= 1000).sum()) / n_shots:.1f}% of one-shots")  # fmt: skip

    c50, c99 = med["continuous C=1"]
    print(f"continuous (other mode): per_hop_ms_p50={c50:.3f} per_hop_ms_p99={c99:.3f} "
          f"speedup={ratio['continuous C=1']:.2f} cos_p5={np.percentile(cos['continuous'], 5):.4f}"
          f"; 8 channels p50={med['continuous C=8'][0]:.3f} "
          f"speedup={ratio['continuous C=8']:.2f}")  # fmt: skip
    e50, e99 = med["exact      C=1"]
    print(f"exact 8 channels: per_hop_ms_p50={med['exact      C=8'][0]:.3f} "
          f"per_hop_ms_p99={med['exact      C=8'][1]:.3f} "
          f"full_window_ms_p50={med['full window C=8'][0]:.3f} "
          f"speedup={ratio['exact      C=8']:.2f}")  # fmt: skip
    print(
        f"per_hop_ms_p50={e50:.3f} per_hop_ms_p99={e99:.3f} "
        f"full_window_ms_p50={med['full window C=1'][0]:.3f} "
        f"speedup={ratio['exact      C=1']:.2f} cos_p5={np.percentile(cos['exact'], 5):.4f}"
    )


if __name__ == "__main__":
    main()
