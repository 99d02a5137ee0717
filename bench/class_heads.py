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
* **Envelopes** (``--envelopes``): recording-chain-invariant descriptors
  (:func:`envelope_features`: per-band decay times from each band's own peak, attack
  time, centroid / flatness / roll-off / tonality per time span, centroid glide, f0 and
  its glide, zero crossings, crest), covariance pooling of block 3's frame activations
  (:func:`covariance_pool`), histogram gradient boosting, a stack of the shipped head
  with a descriptor head (:func:`stacked_accuracy`) and within-kit smoothing over
  velocity layers (:func:`kit_smoothed_accuracy`); settings chosen on A, B measured once.
* **Hit model** (``--hit-model``): the live hit ladder's instrument model
  (:class:`emberd.library.hitindex.ClassModel` on 245-ms onset snippets) against
  alternatives with :func:`envelope_features`, on ``bench/hits.py``'s kits: tuning =
  leave-one-kit-out over its library kits plus its tuning held-out kits; measured once on
  its test held-out kits (clean snippets and the model's noisy / cut copies).
  ``--hit-ladder ARGS`` runs ``bench/hits.py ARGS`` with the tuning pick
  (:class:`EnvelopeClassModel`) as the ladder's model (``--offline --tune --seed N``).

Usage::

    nice python bench/class_heads.py [--representations | --envelopes | --hit-model]
        [--json out.json]
    nice python bench/class_heads.py --hit-ladder --offline --tune --seed 0

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

from emberd.dsp.envelope import ENV_SR, envelope_features
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
STANDARDISED = ("attack", "mel", "layers", "bands", "b3c1", "b4c2", "env", "cov3")
# ... blocks whose cells are z-scored first
# Envelopes (2026-12-02, issues 19 and 12): emberd.dsp.envelope's descriptors.
COV_DIMS = 16  # block-3 channels projected on this many principal axes (fitted on A) ...
COV_POWER = 0.5  # ... and the covariance's eigenvalues raised to this (matrix square root)
ENVELOPE_SETS = (
    ("env",), ("whole", "env"), ("whole", "env", "attack"), ("crop1000", "env", "attack"),
    ("cov3",), ("whole", "cov3"), ("whole", "env", "cov3"),
)  # fmt: skip
STACK_WEIGHTS = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # the shipped head's share of the log-prob
STACK_TEMPERATURES = (1.0, 3.0, 10.0)  # descriptor head's scores -> log-softmax(T * score)
SMOOTH_COSINE = (0.8, 0.85, 0.9, 0.95)  # within-kit neighbours: whole-vector cosine at least
SMOOTH_WEIGHT = (0.0, 0.5, 1.0, 2.0)  # weight of the neighbours' mean log-probability
BOOST = {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 15, "l2_regularization": 1.0}

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


def _layer_session(encoder: Any, names: list[str]) -> Any:
    """An ONNX Runtime session of ``encoder``'s graph that also outputs the layers ``names``."""
    import onnx
    from onnx import TensorProto, helper

    from emberd.models.onnxrt import onnxruntime

    graph = onnx.load(encoder.manifest.path)
    for name in names:
        graph.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = onnxruntime().SessionOptions()
    opts.intra_op_num_threads = 1
    return onnxruntime().InferenceSession(graph.SerializeToString(), opts,
                                          providers=["CPUExecutionProvider"])  # fmt: skip


def _onset_mel(path: str, config: Any) -> tuple[np.ndarray, int]:
    """``path``'s mel frames from PRE_ONSET_S before its onset (at most LAYER_FRAMES), padded
    with zeros to whole block-4 columns: ``([1, frames, n_mels], frames used)``."""
    from emberd.dsp.frontend import melspectrogram
    from emberd.dsp.sources import load_audio
    from emberd.library import waveform

    stride = 8  # frames per block-4 column (three 2x time pools)
    y, _ = load_audio(path, sr=config.sr, mono=True)
    y = np.asarray(y, np.float32)
    y = y[max(waveform.onset_sample(y) - round(PRE_ONSET_S * config.sr), 0) :]
    mel = melspectrogram(y, config).astype(np.float32)[:LAYER_FRAMES]
    used = mel.shape[0]
    frames = max(2 * stride, -(-used // stride) * stride)
    padded = np.zeros((1, frames, mel.shape[1]), np.float32)
    padded[0, :used] = mel
    return padded, used


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
    sess = _layer_session(encoder, list(LAYER_NAMES))
    config = encoder.manifest.frontend()
    out: dict[str, list[np.ndarray]] = {n: [] for n in ("layers", "b3c1", "b4c2", "bands",
                                                          "mel", "ms")}  # fmt: skip
    for path in paths:
        t0 = time.perf_counter()
        padded, used = _onset_mel(path, config)
        frames = padded.shape[1]
        mel = padded[0, :used]
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


def envelope_block(paths: list[str]) -> np.ndarray:
    """:func:`envelope_features` of every file from its onset (the library's onset rule)."""
    from emberd.dsp.sources import load_audio
    from emberd.library import waveform

    out = []
    for path in paths:
        y, _ = load_audio(path, sr=ENV_SR, mono=True)
        y = np.asarray(y, np.float32)
        out.append(envelope_features(y[waveform.onset_sample(y) :]))
    return np.array(out)


def block_maps(paths: list[str], encoder: Any, layer: str = "b3c2_relu") -> list[np.ndarray]:
    """One aiSFX layer's ReLU output per file, ``[positions, channels]`` (time x mel cells
    the sound covers), from the first :data:`LAYER_FRAMES` mel frames after the onset."""
    sess = _layer_session(encoder, [layer])
    config = encoder.manifest.frontend()
    out = []
    for path in paths:
        padded, used = _onset_mel(path, config)
        frames = padded.shape[1]
        a = sess.run([layer], {encoder.manifest.input_name: padded})[0][0]
        a = a[:, : max(1, -(-used // (frames // a.shape[1])))]
        out.append(a.reshape(a.shape[0], -1).T.astype(np.float32))
    return out


def covariance_pool(
    maps: list[np.ndarray], fit: np.ndarray, *, dims: int = COV_DIMS, power: float = COV_POWER
) -> np.ndarray:
    """Second-order pooling of frame activations: per file the mean and the upper triangle
    of the covariance (eigenvalues raised to ``power``) of its positions' channel vectors,
    square-rooted and projected on ``dims`` principal axes fitted on the ``fit`` files only."""
    rows = [np.sqrt(np.maximum(m, 0.0)) for m in maps]
    pool = np.concatenate([rows[i] for i in np.nonzero(fit)[0]])
    mu = pool.mean(axis=0)
    _, _, vt = np.linalg.svd(pool[:: max(1, len(pool) // 20000)] - mu, full_matrices=False)
    basis = vt[:dims].T
    upper = np.triu_indices(dims)
    out = []
    for r in rows:
        z = (r - mu) @ basis
        mean = z.mean(axis=0)
        cov = (z - mean).T @ (z - mean) / max(len(z) - 1, 1) + 1e-4 * np.eye(dims)
        w, v = np.linalg.eigh(cov)
        out.append(np.concatenate([mean, ((v * np.maximum(w, 1e-8) ** power) @ v.T)[upper]]))
    return np.array(out)


def boost_scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int) -> np.ndarray:
    """Class-balanced histogram gradient boosting (scikit-learn, :data:`BOOST`): ``[n, k]``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(class_weight="balanced", random_state=0,
                                           early_stopping=False, **BOOST)  # fmt: skip
    model.fit(xtr, ytr)
    out = np.zeros((len(xte), k))
    out[:, model.classes_] = model.predict_proba(xte)
    return out


def _folds(groups: list[str], halves: list[str], split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    g, h = np.array(groups), np.array(halves)
    return [((g != grp) & ((h == "A") if split == "A" else True), g == grp)
            for grp in sorted(set(groups)) if h[g == grp][0] == split]  # fmt: skip


def fold_scores(
    blocks: dict[str, np.ndarray], names: tuple[str, ...], y: np.ndarray, groups: list[str],
    halves: list[str], head: Callable[..., np.ndarray], k: int, *, split: str, **kw: Any,
) -> list[np.ndarray]:  # fmt: skip
    """Per fold of :func:`grouped_accuracy`'s ``split`` (A or B) the head's test scores."""
    out = []
    for train, test in _folds(groups, halves, split):
        x = blocks["whole"] if names == ("raw",) else design(blocks, names, train)
        out.append(head(x[train], y[train], x[test], k, **kw))
    return out


def _log_softmax(s: np.ndarray, t: float) -> np.ndarray:
    z = t * s - (t * s).max(axis=1, keepdims=True)
    return np.asarray(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))


def stacked_accuracy(
    shipped: list[np.ndarray], other: list[np.ndarray], y: np.ndarray, groups: list[str],
    halves: list[str], *, split: str, weight: float, temperature: float,
) -> float:  # fmt: skip
    """Accuracy of ``weight * log p_shipped + (1 - weight) * log softmax(T * other)`` (the
    shipped head's probabilities stacked with a descriptor head's scores), per fold."""
    right = total = 0
    for (_, test), p, s in zip(_folds(groups, halves, split), shipped, other, strict=True):
        comb = weight * np.log(np.maximum(p, 1e-9)) + (1.0 - weight) * _log_softmax(s, temperature)
        right += int((comb.argmax(axis=1) == y[test]).sum())
        total += int(test.sum())
    return right / max(total, 1)


def kit_smoothed_accuracy(
    scores: list[np.ndarray], whole: np.ndarray, y: np.ndarray, groups: list[str],
    halves: list[str], *, split: str, cosine: float, weight: float, temperature: float = 3.0,
) -> float:  # fmt: skip
    """Accuracy when each sound's log-probabilities gain ``weight`` times the mean of those
    of the sounds of its own kit whose whole vectors are at least ``cosine`` alike (its
    velocity layers: a library indexes a kit's folder at once); no labels are used."""
    unit = _unit(whole.astype(np.float64))
    right = total = 0
    for (_, test), s in zip(_folds(groups, halves, split), scores, strict=True):
        idx = np.nonzero(test)[0]
        s = np.nan_to_num(s, neginf=0.0)  # the logistic head's classes absent from training
        probs = s.min() >= 0.0 and np.allclose(s.sum(axis=1), 1.0)
        lp = np.log(np.maximum(s, 1e-9)) if probs else _log_softmax(s, temperature)
        near = (unit[idx] @ unit[idx].T >= cosine).astype(np.float64)
        np.fill_diagonal(near, 0.0)
        smooth = lp + weight * (near @ lp) / np.maximum(near.sum(axis=1, keepdims=True), 1.0)
        right += int((smooth.argmax(axis=1) == y[idx]).sum())
        total += len(idx)
    return right / max(total, 1)


def envelopes(
    blocks: dict[str, np.ndarray], y: np.ndarray, groups: list[str], halves: list[str],
    classes: list[str], *, boosting: bool,
) -> dict[str, Any]:  # fmt: skip
    """The ``--envelopes`` candidates: every setting chosen on A, B measured once."""
    k = len(classes)
    rows: list[dict[str, Any]] = []

    def pick(name: str, names: tuple[str, ...], head: Callable[..., np.ndarray],
             grid: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
        best = max(grid, key=lambda kw: grouped_accuracy(blocks, names, y, groups, halves, head,
                                                          k, split="A", **kw))  # fmt: skip
        a = grouped_accuracy(blocks, names, y, groups, halves, head, k, split="A", **best)
        b = grouped_accuracy(blocks, names, y, groups, halves, head, k, split="B", **best)
        row = {"head": name, "features": "+".join(names), "setting": {
            kk: round(v, 4) for kk, v in best.items() if isinstance(v, float)},
            "tuning_A_loko": round(a, 3), "held_out_B": round(b, 3)}  # fmt: skip
        rows.append(row)
        print(row, flush=True)
        return best

    ship = {"l2": 1e-4, "classes": classes}
    pick("logistic (shipped)", ("raw",), logistic_scores,
         [{"l2": v, "classes": classes} for v in LOGISTIC_GRID])  # fmt: skip
    rbf_kw: dict[tuple[str, ...], dict[str, Any]] = {}
    for names in ENVELOPE_SETS:
        pick("ridge", names, ridge_scores, [{"l2": v} for v in RIDGE_GRID])
        rbf_kw[names] = pick("rbf kernel ridge", names, rbf_scores, [
            {"l2": l2, "gamma": g / len(names)} for g in KRR_GAMMA for l2 in KRR_L2])  # fmt: skip
    if boosting:
        pick("gradient boosting", ("env", "attack"), boost_scores, [{}])
    # The stack (shipped head + RBF on env) and within-kit smoothing (of the shipped head and
    # of RBF on whole+env), each RBF head at the setting A chose for it above.
    other = {sp: fold_scores(blocks, ("env",), y, groups, halves, rbf_scores, k, split=sp,
                             **rbf_kw[("env",)]) for sp in ("A", "B")}  # fmt: skip
    shipped = {sp: fold_scores(blocks, ("raw",), y, groups, halves, logistic_scores, k,
                               split=sp, **ship) for sp in ("A", "B")}  # fmt: skip
    best = max(
        ((w, t) for w in STACK_WEIGHTS for t in STACK_TEMPERATURES),
        key=lambda wt: stacked_accuracy(
            shipped["A"], other["A"], y, groups, halves, split="A", weight=wt[0], temperature=wt[1]
        ),
    )
    stack = {
        sp: stacked_accuracy(
            shipped[sp], other[sp], y, groups, halves, split=sp, weight=best[0], temperature=best[1]
        )
        for sp in ("A", "B")
    }
    rows.append(
        {
            "head": "stack: shipped + rbf(env)",
            "features": "raw | env",
            "setting": {"weight": best[0], "temperature": best[1]},
            "tuning_A_loko": round(stack["A"], 3),
            "held_out_B": round(stack["B"], 3),
        }
    )
    print(rows[-1], flush=True)
    whole_env = {
        sp: fold_scores(
            blocks,
            ("whole", "env"),
            y,
            groups,
            halves,
            rbf_scores,
            k,
            split=sp,
            **rbf_kw[("whole", "env")],
        )
        for sp in ("A", "B")
    }
    for label, sc in (("logistic (shipped)", shipped), ("rbf kernel ridge whole+env", whole_env)):
        cw = max(((c, w) for c in SMOOTH_COSINE for w in SMOOTH_WEIGHT),
                 key=lambda c_w: kit_smoothed_accuracy(sc["A"], blocks["whole"], y, groups,
                                                       halves, split="A", cosine=c_w[0],
                                                       weight=c_w[1]))  # fmt: skip
        sm = {
            sp: kit_smoothed_accuracy(
                sc[sp], blocks["whole"], y, groups, halves, split=sp, cosine=cw[0], weight=cw[1]
            )
            for sp in ("A", "B")
        }
        rows.append(
            {
                "head": f"{label}, kit-smoothed",
                "features": "",
                "setting": {"cosine": cw[0], "weight": cw[1]},
                "tuning_A_loko": round(sm["A"], 3),
                "held_out_B": round(sm["B"], 3),
            }
        )
        print(rows[-1], flush=True)
    return {"table": sorted(rows, key=lambda r: -r["tuning_A_loko"])}


HIT_HEADS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
    ("logistic (shipped)", ("cf",), None),
    ("logistic", ("env",), None),
    ("logistic", ("cf", "env"), None),
    ("rbf kernel ridge", ("cf",), (1.0, 0.1)),
    ("rbf kernel ridge", ("env",), (1.0, 0.1)),
    ("rbf kernel ridge", ("cf", "env"), (1.0, 0.1)),
    ("rbf kernel ridge", ("cf", "env"), (0.3, 0.1)),
)  # (name, blocks, (gamma, l2) or None for ClassModel's logistic regression)


def hit_model() -> dict[str, Any]:
    """``--hit-model``: the hit ladder's instrument model against envelope alternatives on
    onset snippets of ``bench/hits.py``'s kits (see the module docstring)."""
    from emberd.library import hitindex as hx
    from emberd.library import waveform

    hb_path = Path(__file__).resolve().parent / "hits.py"
    spec = importlib.util.spec_from_file_location("bench_hits", hb_path)
    assert spec is not None and spec.loader is not None
    hb = importlib.util.module_from_spec(spec)
    sys.modules["bench_hits"] = hb
    spec.loader.exec_module(hb)
    items = [(p, c, kit, part)
             for kits, part in ((hb.LIBRARY_KITS, "lib"), (hb.HELD_OUT_TUNE, "tune"),
                                (hb.HELD_OUT_TEST, "test"))
             for kit in kits for p, c in hb.labelled((kit,))]  # fmt: skip
    classes = sorted({c for _, c, _, _ in items})
    y = np.array([classes.index(c) for _, c, _, _ in items])
    kits = np.array([kit for _, _, kit, _ in items])
    parts = np.array([part for _, _, _, part in items])
    rng = np.random.default_rng(0)
    n = waveform.SNIPPET_SAMPLES - waveform.PRE_ROLL_SAMPLES
    cf, env = [], []
    for path, _, _, _ in items:  # the clean snippet and ClassModel's noisy / cut copies
        yy = hb.load(path)
        x = np.asarray(hb.window(yy, waveform.onset_sample(yy), n), np.float64)
        peak = float(np.max(np.abs(x))) + 1e-12
        copies = [x]
        for _ in range(hx.CLASS_COPIES):
            z = x + rng.standard_normal(n) * peak * 10 ** (-rng.uniform(*hx.CLASS_NOISE_DB) / 20)
            cut = round(np.exp(rng.uniform(*np.log(hx.CLASS_CUT_S))) * waveform.WAVE_SR)
            if rng.random() < hx.CLASS_CUT_SHARE:
                z[cut:] = 0.0
            copies.append(z)
        cf.append([hx.class_features(c) for c in copies])
        env.append([envelope_features(c) for c in copies])
    feats = {"cf": np.array(cf), "env": np.array(env)}
    ncopy = feats["cf"].shape[1]

    def design_of(idx: np.ndarray, which: tuple[str, ...], copies: int) -> np.ndarray:
        x = np.concatenate([feats[w][idx][:, :copies] for w in which], axis=2)
        return x.transpose(1, 0, 2).reshape(-1, x.shape[2])  # copy-major rows

    def right(tr: np.ndarray, te: np.ndarray, which: tuple[str, ...], rbf: Any) -> np.ndarray:
        xtr, ytr = design_of(tr, which, ncopy), np.tile(y[tr], ncopy)
        xte = design_of(te, which, ncopy)
        if rbf is None:
            m = hx.ClassModel(xtr, [classes[i] for i in ytr])
            logits = ((xte - m.mean) / m.std) @ m.weights + m.bias
            pred = np.array([classes.index(m.classes[j]) for j in logits.argmax(axis=1)])
        else:
            mu, sd = xtr.mean(axis=0), xtr.std(axis=0) * np.sqrt(xtr.shape[1]) + 1e-6
            pred = rbf_scores((xtr - mu) / sd, ytr, (xte - mu) / sd, len(classes),
                              l2=rbf[1], gamma=rbf[0]).argmax(axis=1)  # fmt: skip
        return np.asarray(pred == np.tile(y[te], ncopy)).reshape(ncopy, -1)  # [copy, item]

    lib = np.nonzero(parts == "lib")[0]
    tune_folds = [(lib[kits[lib] != kt], lib[kits[lib] == kt]) for kt in sorted(set(kits[lib]))]
    tune_folds.append((lib, np.nonzero(parts == "tune")[0]))
    rows = []
    for name, which, rbf in HIT_HEADS:
        tune = np.concatenate([right(tr, te, which, rbf) for tr, te in tune_folds], axis=1)
        test = right(lib, np.nonzero(parts == "test")[0], which, rbf)
        rows.append({"head": name, "features": "+".join(which),
                     "tuning_clean": round(float(tune[0].mean()), 3),
                     "tuning_all": round(float(tune.mean()), 3),
                     "test_clean": round(float(test[0].mean()), 3),
                     "test_all": round(float(test.mean()), 3)})  # fmt: skip
        print(rows[-1], flush=True)
    return {
        "labelled": {p: int((parts == p).sum()) for p in ("lib", "tune", "test")},
        "table": rows,
    }


HIT_RBF = (1.0, 0.1)  # (gamma, l2) of the --hit-model tuning pick on bands + envelopes
HIT_RBF_TEMPERATURE = 3.0  # its scores -> a probability for the ladder's confidence


class EnvelopeClassModel:
    """The ``--hit-model`` tuning pick in :class:`~emberd.library.hitindex.ClassModel`'s
    place: class-balanced RBF kernel ridge on ``class_features`` + :func:`envelope_features`,
    fitted on the same labelled snippets and noisy / cut copies (``--hit-ladder``)."""

    def __init__(self, features: np.ndarray, labels: list[str]) -> None:
        self.classes = sorted(set(labels))
        y = np.array([self.classes.index(c) for c in labels])
        self.mu = features.mean(axis=0)
        self.sd = features.std(axis=0) * np.sqrt(features.shape[1]) + 1e-6
        self.z = (features - self.mu) / self.sd
        k, n = len(self.classes), len(y)
        w = balanced_weights(y, k)
        target = -np.ones((n, k))
        target[np.arange(n), y] = 1.0
        sq = (self.z**2).sum(axis=1)
        kern = np.exp(-HIT_RBF[0] * np.maximum(sq[:, None] + sq[None] - 2 * self.z @ self.z.T, 0))
        self.alpha = np.linalg.solve(
            w[:, None] * kern + HIT_RBF[1] * np.eye(n), w[:, None] * target
        )

    @staticmethod
    def features(x: np.ndarray) -> np.ndarray:
        from emberd.library.hitindex import class_features

        return np.concatenate([class_features(x), envelope_features(x)])

    @classmethod
    def from_snippets(
        cls, snippets: np.ndarray, labels: list[str | None]
    ) -> EnvelopeClassModel | None:
        """As :meth:`~emberd.library.hitindex.ClassModel.from_snippets` (the same set)."""
        from emberd.library.hitindex import class_training_set

        data = class_training_set(snippets, labels, cls.features)
        return None if data is None else cls(*data)

    def predict(self, x: np.ndarray) -> tuple[str, float]:
        """(class, probability) of a sound given from its onset at the hit index's rate."""
        q = (self.features(np.asarray(x, np.float64)) - self.mu) / self.sd
        d2 = (self.z**2).sum(axis=1) + q @ q - 2 * self.z @ q
        s = np.exp(-HIT_RBF[0] * np.maximum(d2, 0.0)) @ self.alpha
        p = np.exp(HIT_RBF_TEMPERATURE * (s - s.max()))
        p /= p.sum()
        best = int(np.argmax(p))
        return self.classes[best], float(p[best])


def hit_ladder(argv: list[str]) -> int:
    """``--hit-ladder ARGS``: ``bench/hits.py ARGS`` (e.g. ``--offline --tune --seed 0``)
    with :class:`EnvelopeClassModel` as the hit index's instrument model."""
    from emberd.library import hitindex as hx

    hx.ClassModel = EnvelopeClassModel  # type: ignore[misc,assignment]  # the swap measured
    spec = importlib.util.spec_from_file_location(
        "bench_hits", Path(__file__).resolve().parent / "hits.py"
    )
    assert spec is not None and spec.loader is not None
    hb = importlib.util.module_from_spec(spec)
    sys.modules["bench_hits"] = hb
    spec.loader.exec_module(hb)
    return int(hb.main(argv))


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
    ap.add_argument("--envelopes", action="store_true",
                    help="score envelope descriptors, covariance pooling, stacking and "
                         "within-kit smoothing (see the module docstring)")  # fmt: skip
    ap.add_argument(
        "--boosting",
        action="store_true",
        help="with --envelopes: also gradient boosting (slow on 2 cores)",
    )
    ap.add_argument(
        "--hit-model",
        action="store_true",
        help="compare the hit ladder's instrument model on bench/hits.py's kits",
    )
    ap.add_argument("--hit-ladder", nargs=argparse.REMAINDER,
                    help="the rest of the line goes to bench/hits.py, run with "
                         "EnvelopeClassModel as the ladder's instrument model")  # fmt: skip
    args = ap.parse_args()
    if args.hit_ladder is not None:
        raise SystemExit(hit_ladder(args.hit_ladder))
    stamp = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load": os.getloadavg()[0],
    }
    if args.hit_model:
        report({**stamp, **hit_model(), "load_end": os.getloadavg()[0]}, args.json, width=28)
        return
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
    if args.envelopes:
        blocks["env"] = envelope_block(paths)
        blocks["cov3"] = covariance_pool(block_maps(paths, encoder),
                                         np.array([h == "A" for h in halves]))  # fmt: skip
        out = envelopes(blocks, y, groups, halves, classes, boosting=args.boosting)
        report({**stamp, "labelled_sounds": len(labels), **out, "seconds": round(time.time() - t0),
                "load_end": os.getloadavg()[0]}, args.json, width=28)  # fmt: skip
        return
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
