"""Per-hop encoder latency on a CUDA machine: windowed vs streaming aiSFX, silence skipping, int8.

A one-shot measurement script for a GPU machine that has onnxruntime-gpu
unpacked beside a CPU onnxruntime (the lent device image), so the usual
"both installed" guard is relaxed here, and only here. Paths run interleaved
in one process; the CPU windowed run on the same machine is the anchor.

Usage::

    EMBERD_DATA_DIR=DIR python bench/gpu_encoders.py   # DIR/models/aisfx/{model.onnx,manifest.json}

The BatchNorm-folded conv weights for the streaming encoder are read back from
the converted ONNX graph (its Conv initialisers), so no wheel is needed.

Also measured, on CPU and CUDA: a live hit's onset-aligned window (sound in the
last ``HIT_FRAMES`` frames, the rest silence) and batches of 32 one-shot windows
(sound in the first ``ONESHOT_FRAMES``), each through ``aisfx`` with silence
skipping, ``aisfx`` on full windows and ``aisfx-int8`` (built on first use).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

N_MELS = 96  # aisfx preset bands
WINDOW_FRAMES = 100  # 2.32 s at 1024-sample hops, 44.1 kHz
STEP_FRAMES = 8  # one block-4 column of the aiSFX stack
HIT_FRAMES = 13  # a 0.3 s hit at 1024-sample hops
ONESHOT_FRAMES = 31  # median hydrogen-drumkits sample length in frames


def _relax_double_install_guard() -> None:
    from emberd.models import onnxrt

    onnxrt._installed = lambda dist: dist == "onnxruntime-gpu"  # type: ignore[assignment]
    onnxrt.onnxruntime.cache_clear()


def folded_from_onnx(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read the eight folded (W, b) pairs back from the converted graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    return [(inits[n.input[1]].astype(np.float32), inits[n.input[2]].astype(np.float32))
            for n in convs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    _relax_double_install_guard()
    from emberd.models.onnxrt import onnxruntime
    from emberd.models.registry import resolve
    from emberd.models.runtime import Encoder
    from emberd.models.streaming import StreamingEncoder
    from emberd.testing.benchkit import call_ms

    ort = onnxruntime()
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels beside PyTorch
    print("onnxruntime", ort.__version__, ort.get_available_providers())
    manifest = resolve("aisfx")
    folded = folded_from_onnx(str(manifest.path))
    rng = np.random.default_rng(0)
    rows: list[tuple[str, float, float]] = []

    def record(name: str, fn: Callable[[], Any], runs: int = args.runs) -> None:
        try:
            p50, p99 = call_ms(fn, runs, warm=10)
        except Exception as exc:  # a path that cannot run here is reported, not fatal
            print(f"{name}: FAILED {type(exc).__name__}: {exc}")
            return
        rows.append((name, p50, p99))
        print(f"{name:<48} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms", flush=True)

    for device in ("cpu", "cuda"):
        try:
            enc = Encoder(manifest, device=device, threads=args.threads)
        except Exception as exc:
            print(f"windowed {device}: FAILED {exc}")
            continue
        print(f"windowed {device}: provider {enc.provider}")
        for batch in (1, 8, 32):
            x = rng.random((batch, WINDOW_FRAMES, N_MELS), dtype=np.float32)
            record(f"windowed {enc.provider} batch {batch}", lambda x=x, e=enc: e.embed(x),
                   runs=args.runs if batch < 32 else 50)

    hit = np.zeros((1, WINDOW_FRAMES, N_MELS), np.float32)
    hit[0, -HIT_FRAMES:] = rng.random((HIT_FRAMES, N_MELS), dtype=np.float32)
    shots = np.zeros((32, WINDOW_FRAMES, N_MELS), np.float32)
    shots[:, :ONESHOT_FRAMES] = rng.random((32, ONESHOT_FRAMES, N_MELS), dtype=np.float32)
    for device in ("cpu", "cuda"):
        for model, skip in (("aisfx", True), ("aisfx", False), ("aisfx-int8", None)):
            try:
                enc = Encoder(resolve(model), device=device, threads=args.threads,
                              skip_silence=skip)
            except Exception as exc:
                print(f"{model} {device}: FAILED {exc}")
                continue
            tag = f"{model}{' skip' if enc.skipper is not None else ' full'} {enc.provider}"
            record(f"{tag} hit window", lambda e=enc: e.embed(hit))
            record(f"{tag} 32 one-shots", lambda e=enc: e.embed(shots), runs=50)

    for edges, device in (("exact", "cpu"), ("continuous", "cpu"), ("continuous", "cuda")):
        for channels in (1, 8):
            try:
                enc_s = StreamingEncoder(folded, hop_frames=STEP_FRAMES, channels=channels,
                                         threads=args.threads, edges=edges, device=device)
            except Exception as exc:
                print(f"streaming {edges} {device}: FAILED {exc}")
                continue
            frames = rng.random((channels, STEP_FRAMES, N_MELS), dtype=np.float32)
            record(f"streaming {edges} {enc_s.provider} {channels} ch, 8-frame hop",
                   lambda f=frames, e=enc_s: e.push(f))

    anchor = next((r for r in rows if r[0].startswith("windowed CPU") and "batch 1" in r[0]),
                  None)
    if anchor:
        print(f"\nratios against {anchor[0]} p50 {anchor[1]:.3f} ms:")
        for name, p50, _ in rows:
            print(f"  {name:<48} x{anchor[1] / p50:7.2f} faster")


if __name__ == "__main__":
    main()
