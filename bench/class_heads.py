"""Class heads compared on held-out hydrogen-drumkits kits: is anything better than the shipped one?

Issue 19 asks for class accuracy >= 0.9 on held-out kits' name-less sounds; the shipped
head (:func:`emberd.library.classifier.fit_head`, logistic regression on whole-file
aiSFX vectors) gives about 0.76 (``bench/mixdown.py --parts classes``).  This bench
tries what might lift it, with one protocol for every candidate:

* **Features** per labelled sound of the mix-down bench library (the same library,
  labels and kit groups as ``bench/mixdown.py``; synth-a / synth-b are two more groups):
  ``whole``, the library's own per-file vector (what the index stores);
  ``crop50`` / ``crop245`` / ``crop1000``, the aiSFX embedding of the first 50 ms /
  245 ms / 1 s after the onset (5 ms before it), padded with silence to one window
  (a live hit's final stage has 245 ms); ``attack``, the hit ladder's attack/decay
  descriptor (:func:`emberd.library.hitindex.class_features` of the 250-ms snippet).
  Several blocks are concatenated after each is centred and scaled to unit total
  variance on the training fold (unit-normalised first for embeddings).
* **Heads**: the shipped logistic head (embeddings only); a class-balanced closed-form
  ridge (one-vs-rest targets +-1); RBF kernel ridge (class-balanced, the same targets).
* **Selection**: every head/feature/setting is scored by leave-one-kit-out on the
  tuning half only (kits A and synth-a, fitted on the other A groups); per head and
  feature set the best setting is kept.  **Measured once** on the held-out half:
  each B group (kits B, synth-b) predicted by a head fitted on every other group, as
  ``bench/mixdown.py`` does.
* **Second protocol** (never the headline): within every kit, the files whose name
  hashes odd (``within_kit_split`` of ``bench/mixdown.py``) are name-less and classified
  by a head fitted on every other labelled file, their kit's named files included: a
  library that is half named.

* **Representations** (``--representations``, :func:`layer_features`): statistics of the
  aiSFX network's intermediate ReLU outputs (exposed as ONNX outputs) and a log-mel
  temporal pyramid instead of the onset crops, the same heads and protocol.

Usage::

    nice python bench/class_heads.py [--representations] [--json out.json]

Accuracy only: no timing, no bench lock needed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emberd.library.classifier import fit_head
from emberd.paths import cache_dir
from emberd.testing.benchkit import report

CROPS_MS = {"crop50": 50.0, "crop245": 245.0, "crop1000": 1000.0}  # onset crops embedded
PRE_ONSET_S = 0.005  # a crop starts this long before the onset (the snippets' pre-roll)
RIDGE_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)  # ridge penalties (features at unit total variance)
KRR_GAMMA = (0.25, 1.0, 4.0)  # RBF width per feature block (divided by the block count)
KRR_L2 = (0.01, 0.1, 1.0)
LOGISTIC_GRID = (1e-5, 1e-4, 1e-3)  # the shipped head's penalties (bench/mixdown.py's grid)
FEATURE_SETS = (
    ("whole",), ("crop1000",), ("crop245",), ("whole", "attack"), ("crop1000", "attack"),
    ("whole", "crop245", "crop50"), ("whole", "crop50", "crop245", "crop1000", "attack"),
)  # fmt: skip
EMBEDDINGS_ONLY = ("whole", "crop50", "crop245", "crop1000")
# Representations (2026-12-02, issue 19 item 1: "a different representation, not another
# head"): statistics of the pretrained aiSFX network's intermediate ReLU outputs over the
# first LAYER_FRAMES mel frames after the onset (the ONNX graph's intermediate tensors
# exposed as outputs), and log-mel statistics over a temporal pyramid.
LAYER_NAMES = tuple(f"b{b}c{c}_relu" for b in range(1, 5) for c in (1, 2))  # the 8 conv layers
LAYER_FRAMES = 100  # mel frames after the onset fed to the network (2.32 s, one window)
BAND_SPLITS = {"b2c2_relu": 6, "b3c2_relu": 6, "b4c2_relu": 4}  # mel bands kept per block output
MEL_PYRAMID = ((0, 3), (3, 11), (11, 43), (0, LAYER_FRAMES))  # frame spans: 0-70, 70-255,
# 255-1000 ms and the whole 2.32 s (23.2-ms frames)
REPR_SETS = (
    ("whole",), ("mel",), ("whole", "mel"), ("layers",), ("b3c1",), ("b4c2",), ("bands",),
    ("whole", "layers"), ("whole", "b3c1"), ("whole", "bands"), ("whole", "mel", "bands"),
)  # fmt: skip
STANDARDISED = ("attack", "mel", "layers", "bands", "b3c1", "b4c2")  # per-cell z-scored blocks

Head = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def _mixdown() -> Any:
    """bench/mixdown.py as a module (its library, labels and kit halves)."""
    path = Path(__file__).resolve().parent / "mixdown.py"
    spec = importlib.util.spec_from_file_location("bench_mixdown", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_mixdown"] = mod
    spec.loader.exec_module(mod)
    return mod


def balanced_weights(y: np.ndarray, k: int) -> np.ndarray:
    """Per-sample weights giving every class the same total weight."""
    counts = np.bincount(y, minlength=k)
    return np.asarray((len(y) / (k * np.maximum(counts, 1)))[y], np.float64)


def ridge_scores(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int, *, l2: float
) -> np.ndarray:
    """Class-balanced one-vs-rest ridge: scores ``[n_test, k]`` (the bias is not penalised)."""
    n = len(ytr)
    w = balanced_weights(ytr, k)
    target = -np.ones((n, k))
    target[np.arange(n), ytr] = 1.0
    if xtr.shape[1] > n:  # wide (layer statistics): the same solution in the n x n dual form
        return _dual_ridge(xtr, target, w, xte, l2=l2)
    x = np.hstack([xtr, np.ones((n, 1))])
    gram = x.T @ (x * w[:, None]) + l2 * np.eye(x.shape[1])
    gram[-1, -1] -= l2
    coef = np.linalg.solve(gram, x.T @ (target * w[:, None]))
    return np.asarray(np.hstack([xte, np.ones((len(xte), 1))]) @ coef)


def _dual_ridge(
    xtr: np.ndarray, target: np.ndarray, w: np.ndarray, xte: np.ndarray, *, l2: float
) -> np.ndarray:
    """Weighted ridge with an unpenalised bias solved through the ``n x n`` Gram matrix:
    the bias is profiled out (weighted centring), then ``coef = X^T alpha``."""
    wn = w / w.sum()
    mu_x = wn @ xtr
    mu_t = wn @ target
    xc = xtr - mu_x
    alpha = np.linalg.solve(w[:, None] * (xc @ xc.T) + l2 * np.eye(len(w)),
                            w[:, None] * (target - mu_t))  # fmt: skip
    return np.asarray((xte - mu_x) @ (xc.T @ alpha) + mu_t)


def rbf_scores(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int, *, l2: float, gamma: float
) -> np.ndarray:
    """Class-balanced RBF kernel ridge (``exp(-gamma |a - b|^2)``): scores ``[n_test, k]``."""
    n = len(ytr)
    w = balanced_weights(ytr, k)
    target = -np.ones((n, k))
    target[np.arange(n), ytr] = 1.0

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
        return np.exp(-gamma * np.maximum(d2, 0.0))

    alpha = np.linalg.solve(w[:, None] * kernel(xtr, xtr) + l2 * np.eye(n), w[:, None] * target)
    return np.asarray(kernel(xte, xtr) @ alpha)


def logistic_scores(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int, *, l2: float,
    classes: list[str],
) -> np.ndarray:  # fmt: skip
    """The shipped head (:func:`~emberd.library.classifier.fit_head`) on raw embeddings."""
    head = fit_head(xtr, [classes[i] for i in ytr], l2=l2)
    out = np.full((len(xte), k), -np.inf)
    if head is None:
        return out
    cols = [classes.index(c) for c in head.classes]
    out[:, cols] = head.probabilities(xte)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def design(blocks: dict[str, np.ndarray], names: tuple[str, ...], train: np.ndarray) -> np.ndarray:
    """Concatenated feature blocks, each centred and scaled to unit total variance on the
    training rows (embeddings unit-normalised first), so each block weighs the same."""
    out = []
    for name in names:
        x = blocks[name].astype(np.float64)
        if name in EMBEDDINGS_ONLY:
            x = _unit(x)
        mu = x[train].mean(axis=0)
        if name in STANDARDISED:  # cells differ in scale: standardise each first
            x = (x - mu) / (x[train].std(axis=0) + 1e-6)
            mu = np.zeros_like(mu)
        scale = np.sqrt(max(float(((x[train] - mu) ** 2).mean(axis=0).sum()), 1e-12))
        out.append((x - mu) / scale)
    return np.hstack(out)


def grouped_accuracy(
    blocks: dict[str, np.ndarray], names: tuple[str, ...], y: np.ndarray, groups: list[str],
    halves: list[str], head: Callable[..., np.ndarray], k: int, *, split: str,
    **kw: Any,
) -> float:  # fmt: skip
    """Leave-one-group-out accuracy.  ``split="A"``: the A groups, each predicted by a head
    fitted on the other A groups only (tuning); ``"B"``: the B groups, each predicted by a
    head fitted on every other group (held out); ``"within"``: the second protocol."""
    g = np.array(groups)
    h = np.array(halves)
    right = total = 0
    if split == "within":
        test = blocks["_nameless"].astype(bool)
        folds = [(~test, test)]
    else:
        folds = []
        for grp in sorted(set(groups)):
            if h[g == grp][0] != split:
                continue
            train = (g != grp) & ((h == "A") if split == "A" else True)
            folds.append((train, g == grp))
    for train, test in folds:
        if names == ("raw",):
            x = blocks["whole"]
        else:
            x = design(blocks, names, train)
        scores = head(x[train], y[train], x[test], k, **kw)
        right += int((scores.argmax(axis=1) == y[test]).sum())
        total += int(test.sum())
    return right / max(total, 1)


def features(paths: list[str], encoder: Any) -> dict[str, np.ndarray]:
    """The onset crops' embeddings and the attack descriptor of every sound."""
    from emberd.dsp.sources import load_audio
    from emberd.library import waveform
    from emberd.library.hitindex import class_features
    from emberd.models.embedding import embed_signal

    rate = int(encoder.manifest.frontend().sr)
    window = round(encoder.manifest.window_frames * encoder.manifest.frontend().hop_seconds * rate)
    out: dict[str, list[np.ndarray]] = {name: [] for name in (*CROPS_MS, "attack")}
    for path in paths:
        y, _ = load_audio(path, sr=rate)
        y = np.asarray(y, np.float32).reshape(len(y), -1).mean(axis=1)
        start = max(waveform.onset_sample(y) - round(PRE_ONSET_S * rate), 0)
        for name, ms in CROPS_MS.items():
            seg = np.zeros(window + 1, np.float32)
            part = y[start : start + round(ms / 1000.0 * rate)]
            seg[: len(part)] = part
            emb, _ = embed_signal(seg, encoder, tail="pad")
            out[name].append(emb[0])
        yw, _ = load_audio(path, sr=waveform.WAVE_SR)
        yw = np.asarray(yw, np.float32).reshape(len(yw), -1).mean(axis=1)
        snip = waveform.padded(yw, waveform.onset_sample(yw), waveform.SNIPPET_SAMPLES)
        out["attack"].append(class_features(snip / (float(np.max(np.abs(snip))) + 1e-12)))
    return {k: np.array(v) for k, v in out.items()}


def layer_features(paths: list[str], encoder: Any) -> dict[str, np.ndarray]:
    """Intermediate-layer and log-mel statistics of every sound (the representations tried).

    The first :data:`LAYER_FRAMES` mel frames from 5 ms before the onset run through the
    aiSFX graph with every conv layer's ReLU output exposed; over the frames the sound
    covers: ``layers``, per channel of all 8 layers the mean and standard deviation over
    time and mel (3840 values); ``b3c1`` / ``b4c2``, the same for one layer; ``bands``,
    per channel of block 2-4's output the mean and standard deviation over time in
    :data:`BAND_SPLITS` mel bands (frequency kept, which the embedding's mel mean drops);
    ``mel``, per mel band the mean and standard deviation of the scaled log-mel frames in
    each span of :data:`MEL_PYRAMID`.  Also ``ms``: the wall time per file (load, onset,
    mel, network, statistics).
    """
    import onnx
    from onnx import TensorProto, helper

    from emberd.dsp.frontend import melspectrogram
    from emberd.dsp.sources import load_audio
    from emberd.library import waveform
    from emberd.models.onnxrt import onnxruntime

    ort = onnxruntime()
    graph = onnx.load(encoder.manifest.path)
    for name in LAYER_NAMES:
        graph.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(graph.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])  # fmt: skip
    config = encoder.manifest.frontend()
    stride = 8  # frames per block-4 column (three 2x time pools)
    out: dict[str, list[np.ndarray]] = {n: [] for n in ("layers", "b3c1", "b4c2", "bands",
                                                          "mel", "ms")}  # fmt: skip
    for path in paths:
        t0 = time.perf_counter()
        y, _ = load_audio(path, sr=config.sr, mono=True)
        y = np.asarray(y, np.float32)
        y = y[max(waveform.onset_sample(y) - round(PRE_ONSET_S * config.sr), 0) :]
        mel = melspectrogram(y, config).astype(np.float32)[:LAYER_FRAMES]
        used = mel.shape[0]
        frames = max(2 * stride, -(-used // stride) * stride)
        padded = np.zeros((1, frames, mel.shape[1]), np.float32)
        padded[0, :used] = mel
        acts = sess.run(list(LAYER_NAMES), {encoder.manifest.input_name: padded})
        layers, bands = [], []
        for name, a in zip(LAYER_NAMES, acts, strict=True):
            a = a[0]  # [channels, time, mel]
            a = a[:, : max(1, -(-used // (frames // a.shape[1])))]  # the columns the sound covers
            stats = np.concatenate([a.mean(axis=(1, 2)), a.std(axis=(1, 2))])
            layers.append(stats)
            if name == "b3c1_relu":
                out["b3c1"].append(stats)
            if name == "b4c2_relu":
                out["b4c2"].append(stats)
            if name in BAND_SPLITS:
                nb = BAND_SPLITS[name]
                width = a.shape[2] // nb
                q = a[:, :, : nb * width].reshape(a.shape[0], a.shape[1], nb, width).mean(axis=3)
                bands.append(np.concatenate([q.mean(axis=1).ravel(), q.std(axis=1).ravel()]))
        out["layers"].append(np.concatenate(layers))
        out["bands"].append(np.concatenate(bands))
        pyramid = []
        for lo, hi in MEL_PYRAMID:
            span = mel[lo : min(hi, used)] if lo < used else np.zeros((1, mel.shape[1]), np.float32)
            pyramid += [span.mean(axis=0), span.std(axis=0)]
        out["mel"].append(np.concatenate(pyramid))
        out["ms"].append(np.array([1000.0 * (time.perf_counter() - t0)]))
    return {k: np.array(v) for k, v in out.items()}


def candidates(
    k: int, classes: list[str], *, representations: bool = False
) -> list[tuple[str, tuple[str, ...], Head, dict]]:
    """(head name, feature set, head, settings) for every candidate the tuning half scores;
    ``representations``: the representation sets (:data:`REPR_SETS`) instead of the crops."""
    out: list[tuple[str, tuple[str, ...], Head, dict]] = []
    for l2 in LOGISTIC_GRID:
        out.append(("logistic (shipped)", ("raw",), logistic_scores,
                    {"l2": l2, "classes": classes}))  # fmt: skip
    for names in REPR_SETS if representations else FEATURE_SETS:
        for l2 in RIDGE_GRID:
            out.append(("ridge", names, ridge_scores, {"l2": l2}))
        for gamma in KRR_GAMMA:
            for l2 in KRR_L2:
                out.append(("rbf kernel ridge", names, rbf_scores,
                            {"l2": l2, "gamma": gamma / len(names)}))  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--root",
        type=Path,
        default=cache_dir() / "bench-mixdown",
        help="the mix-down bench's library folder (built by it when missing)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--representations", action="store_true",
                    help="score the intermediate-layer / log-mel representations "
                         "(layer_features) instead of the onset crops")  # fmt: skip
    args = ap.parse_args()
    md = _mixdown()
    from emberd.library.query import encoder_for

    t0 = time.time()
    lib = md.build_library(args.root)
    x, labels, groups, paths = md.labelled(lib)
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels])
    halves = [md.half(g) for g in groups]
    encoder = encoder_for(md.MODEL)
    if args.representations:
        blocks = {"whole": x, **layer_features(paths, encoder)}
    else:
        blocks = {"whole": x, **features(paths, encoder)}
    blocks["_nameless"] = md.within_kit_split(paths).astype(np.float64)
    k = len(classes)
    tuned: dict[tuple[str, tuple[str, ...]], tuple[float, dict]] = {}
    heads: dict[str, Head] = {}
    for name, names, head, kw in candidates(k, classes, representations=args.representations):
        a = grouped_accuracy(blocks, names, y, groups, halves, head, k, split="A", **kw)
        key = (name, names)
        heads[name] = head
        if key not in tuned or a > tuned[key][0]:
            tuned[key] = (a, kw)
    rows = []
    for (name, names), (a, kw) in sorted(tuned.items(), key=lambda kv: -kv[1][0]):
        b = grouped_accuracy(blocks, names, y, groups, halves, heads[name], k, split="B", **kw)
        w = grouped_accuracy(blocks, names, y, groups, halves, heads[name], k, split="within",
                             **kw)  # fmt: skip
        shown = {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in kw.items()
                 if kk != "classes"}  # fmt: skip
        rows.append({"head": name, "features": "+".join(names), "setting": shown,
                     "tuning_A_loko": round(a, 3), "held_out_B": round(b, 3),
                     "within_kit_half_nameless": round(w, 3)})  # fmt: skip
    best = rows[0]
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load": os.getloadavg()[0],
        "labelled_sounds": len(labels),
        "within_kit_nameless": int(blocks["_nameless"].sum()),
        "chosen_on_A": f"{best['head']} on {best['features']} {best['setting']}",
        "chosen_held_out_B": best["held_out_B"],
        "table": rows,
        "seconds": round(time.time() - t0),
    }
    if "ms" in blocks:
        results["feature_ms_per_file_median"] = round(float(np.median(blocks["ms"])), 1)
    report(results, args.json, width=28)
    print(f"{'head':18s} {'features':42s} {'A (tune)':>8s} {'B (held out)':>12s} "
          f"{'within-kit':>10s}")  # fmt: skip
    for r in rows:
        print(f"{r['head']:18s} {r['features']:42s} {r['tuning_A_loko']:8.3f} "
              f"{r['held_out_B']:12.3f} {r['within_kit_half_nameless']:10.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
