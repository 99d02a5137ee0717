"""Mix-down assistant bench: class accuracy, loudness vs pyloudnorm, planted masking, cost per hop.

Material: Debian's hydrogen-drumkits (every kit's drumkit.xml names its instruments)
plus deterministic synthetic bass, pad and lead one-shots and stems
(:mod:`emberd.testing.synthstems`), indexed into one library with the real
``emberd index`` (which fits the class head) and the aiSFX model.

1. **Classes, kits held out.** For each kit (and each of two synthetic "kits",
   seeds 0-11 and 12-23), the head is fitted on every other kit's labelled
   sounds and asked for the held-out kit's sounds (embeddings only: names never
   reach the head).  Accuracy per class.
2. **Multitrack** (8 stems, 16 s at 120 BPM): kick, snare, closed hat, open hat,
   tom, cymbal from a held-out kit, bass and pad from held-out synth seeds.  The
   head (fitted without that kit and those seeds) classifies every 2.3 s window
   the daemon would embed (100 frames every 50); accuracy per stem over windows
   with signal.  The stems go through :class:`~emberd.daemon.mixdown.MixdownAnalyser`
   in 2048-sample blocks as in the worker: integrated loudness per stem against
   pyloudnorm on the whole stem.
3. **Planted overlaps**: two-stem scenes per kit and seed where one stem
   is built to cover the other's main band by >= 6 dB (bass over kick, pad over
   snare) or built not to (the same at -30 dB, a hat against a bass).  A finding
   is an ordered pair the assistant reports (a suggestion); it is right when the
   pair was planted and its band range overlaps the planted one, or when the
   independent energetic reference (:func:`reference_masked`: 1-ERB bands, 23-ms
   frames, no spreading) finds that pair masked in an overlapping range.  The
   model may be tuned on the A kits' scenes (seeds 0-2, ``masking_planted_tuning``);
   the figure is the B kits' (seeds 12-14, ``masking_planted``).
4. **Cost, 8 channels**: the analyser works on 100 ms ticks; each tick's time is
   measured (mean, p99, max) and set against the daemon's default hop (one mel
   frame, 23.2 ms: a tick lands inside one hop), and the mean cost per hop is
   given as a share of that budget and as a ratio to the anchor run in the same
   process: aiSFX embedding the same 8 channels' windows (per 1.161 s window hop).

5. **The library's per-file classes** (``--parts file-classes``): the shipped
   :func:`~emberd.library.classifier.predict_file_classes` (RBF kernel ridge on the
   whole-file vector and the envelope descriptors, smoothed over velocity layers in
   each folder) with each held-out kit name-less inside a library of the other kits.
   The confidence temperature is chosen on kits A (least ECE over their drum kits);
   kits B measured once at the shipped one.  ``--parts file-classes-cost`` (bench
   lock) times the envelope descriptor per file against the whole-file embedding of
   the same files (the anchor, same run).

Run under the bench lock: ``flock /tmp/emberd-bench.lock python bench/mixdown.py``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from emberd.daemon.mixdown import MixdownAnalyser
from emberd.dsp.resample import mono_at
from emberd.library import classifier
from emberd.library.classifier import L2, ClassHead, fit_head, library_labels
from emberd.library.store import Store
from emberd.paths import cache_dir
from emberd.testing import synthstems
from emberd.testing.benchkit import report
from emberd.testing.drumkits import kit_half

DRUMKITS = Path("/usr/share/hydrogen/data/drumkits")
MODEL = "aisfx"
SR = 44100
BPM = 120.0
MULTITRACK_S = 16.0
SCENE_S = 12.0
BLOCK = 2048  # the worker's read chunk
HOP_S = 1024 / SR  # the daemon's default hop with the streaming aiSFX encoder: one mel frame
WINDOW_HOP_S = 50 * 1024 / SR  # the windowed encoder's hop (the anchor's unit of work)
TEST_KITS = ("The Black Pearl 1.0", "BJA_Pacific")
# Masking scenes: the model may be tuned on the A kits' scenes (seeds 0-2) and is reported on
# the B kits' (seeds 12-14); kit_half's split, the kits that have all six drum stems.
MASKING_TUNE_KITS = ("ColomboAcousticDrumkit", "ForzeeStereo", "Millo_MultiLayered2",
                     "The Black Pearl 1.0")
MASKING_TEST_KITS = ("BJA_Pacific", "Millo-Drums_v.1", "Millo_MultiLayered3", "rumpf_kit_z01_h2")
SYNTH_GROUPS = {"synth-a": range(0, 12), "synth-b": range(12, 24)}
STEM_CLASSES = ("kick", "snare", "closed_hat", "open_hat", "tom", "cymbal", "bass", "pad")
PLANTED_RANGES_HZ = {("bass", "kick"): (20.0, 250.0), ("pad", "snare"): (150.0, 5000.0)}


# ----------------------------------------------------------------------------- library

def build_library(root: Path) -> Path:
    """Index hydrogen-drumkits and the synthetic one-shots into ``root/lib`` (incremental)."""
    synth = root / "synth"
    for group, seeds in SYNTH_GROUPS.items():
        if not (synth / group).is_dir():
            synthstems.write_one_shots(synth / group, seeds=seeds)
    lib = root / "lib"
    cmd = [sys.executable, "-m", "emberd", "index", str(DRUMKITS), str(synth), "--library",
           str(lib), "--model", MODEL, "--jobs", "1", "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"emberd index failed: {done.stderr.strip()[-500:]}")
    return lib


def labelled(lib: Path) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """``(vectors, labels, groups, paths)`` of the library's labelled sounds."""
    store = Store(lib, create=False)
    try:
        fids, matrix = store.file_vectors(MODEL)
        recs = store.file_by_id(fids.tolist())
    finally:
        store.close()
    paths = [recs[int(f)].path for f in fids]
    roots = [recs[int(f)].root for f in fids]
    labels = library_labels(paths, roots)
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    groups = []
    for i in keep:
        p = Path(paths[i])
        groups.append(p.relative_to(DRUMKITS).parts[0] if p.is_relative_to(DRUMKITS)
                      else p.parent.parent.name)  # fmt: skip
    return matrix[keep], [str(labels[i]) for i in keep], groups, [paths[i] for i in keep]


L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)  # weight penalties tried by the grouped cross-validation


def half(group: str) -> str:
    """``"A"`` (tuning) or ``"B"`` (held out) for a group: the kits as
    :func:`emberd.testing.drumkits.kit_half` splits them, synth-a / synth-b."""
    if group.startswith("synth-"):
        return group[-1].upper()
    return kit_half(DRUMKITS / group)


def choose_l2(x: np.ndarray, labels: list[str], groups: list[str]) -> dict[str, Any]:
    """The weight penalty of :data:`L2_GRID` with the best leave-one-kit-out accuracy on the
    tuning half (kits A, synth-a) only: the held-out half never sees the choice."""
    tune = [i for i, g in enumerate(groups) if half(g) == "A"]
    xs, ls, gs = x[tune], [labels[i] for i in tune], [groups[i] for i in tune]
    scores = {l2: held_out_accuracy(xs, ls, gs, l2=l2)["overall"] for l2 in L2_GRID}
    best = max(L2_GRID, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty
    return {"l2": best, "tuning_accuracy": {f"{k:g}": v for k, v in scores.items()},
            "shipped_l2": L2}  # fmt: skip


def held_out_accuracy(
    x: np.ndarray, labels: list[str], groups: list[str], *, l2: float = L2,
    only: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Leave-one-group-out accuracy per class (``only``: score the groups of that half only,
    each still predicted by a head fitted on every other group)."""
    right: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    confs: list[tuple[float, bool]] = []
    confusion: collections.Counter[str] = collections.Counter()  # "true->predicted"
    for g in sorted(set(groups)):
        if only is not None and half(g) != only:
            continue
        train = [i for i, gg in enumerate(groups) if gg != g]
        test = [i for i, gg in enumerate(groups) if gg == g]
        head = fit_head(x[train], [labels[i] for i in train], model=MODEL, l2=l2)
        if head is None:
            continue
        for i, (cls, _conf) in zip(test, head.predict(x[test]), strict=True):
            total[labels[i]] += 1
            right[labels[i]] += cls == labels[i]
            confs.append((_conf, cls == labels[i]))
            if cls != labels[i]:
                confusion[f"{labels[i]}->{cls}"] += 1
    per = {c: round(right[c] / total[c], 3) for c in sorted(total, key=lambda c: -total[c])}
    # Expected calibration error over 10 confidence bins: is "0.8" right 80 % of the time?
    conf = np.array([c for c, _ in confs])
    ok = np.array([r for _, r in confs], float)
    bins = np.minimum((conf * 10).astype(int), 9)
    ece = sum(abs(ok[bins == b].mean() - conf[bins == b].mean()) * np.mean(bins == b)
              for b in range(10) if np.any(bins == b))  # fmt: skip
    return {"overall": round(sum(right.values()) / sum(total.values()), 3), "per_class": per,
            "n": dict(total), "calibration_error": round(float(ece), 3),
            "confusions": dict(confusion.most_common(12))}  # fmt: skip


TEMPERATURE_GRID = (0.2, 0.3, 0.4, 0.5, 0.7, 1.0)  # confidence temperatures tried on kits A


def _ece(conf: np.ndarray, ok: np.ndarray) -> float:
    """Expected calibration error over 10 confidence bins."""
    bins = np.minimum((conf * 10).astype(int), 9)
    return float(sum(abs(ok[bins == b].mean() - conf[bins == b].mean()) * np.mean(bins == b)
                     for b in range(10) if np.any(bins == b)))  # fmt: skip


def file_class_folds(
    x: np.ndarray, env: np.ndarray, labels: list[str], groups: list[str], paths: list[str],
    *, split: str, kits_only: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray]:  # fmt: skip
    """The library's per-file classes (:func:`~emberd.library.classifier.predict_file_classes`,
    the shipped code) of every sound of the ``split`` half's groups, each group name-less
    (its labels hidden) in a library of the other groups (``A``: the other A groups only;
    ``B``: every other group); ``kits_only``: the drum kits' groups scored, not the synth
    ones (a synth group held out of A leaves no bass/pad/lead to learn from: sure errors
    that would drive the confidence's calibration). Returns truths, log-probabilities and
    class order."""
    truth: list[str] = []
    lps: list[np.ndarray] = []
    order = list(classifier.CLASSES)
    for g in sorted(set(groups)):
        if half(g) != split or (kits_only and g.startswith("synth-")):
            continue
        rows = [i for i, gg in enumerate(groups) if gg == g or (split == "B" or half(gg) == "A")]
        hidden = [None if groups[i] == g else labels[i] for i in rows]
        got = classifier.predict_file_classes(
            x[rows], env[rows], hidden, [str(Path(paths[i]).parent) for i in rows])
        assert got is not None
        classes, prob, _best = got
        full = np.full((len(rows), len(order)), -np.inf)
        # Back to the smoothed log-probabilities (up to a constant per row): the
        # temperature is applied by the caller.
        logp = np.log(np.maximum(prob, 1e-300)) / classifier.CONFIDENCE_TEMPERATURE
        full[:, [order.index(c) for c in classes]] = logp
        test = [j for j, i in enumerate(rows) if groups[i] == g]
        truth += [labels[rows[j]] for j in test]
        lps.append(full[test])
    return truth, np.vstack(lps), np.array(order)


def file_class_accuracy(
    x: np.ndarray, env: np.ndarray, labels: list[str], groups: list[str], paths: list[str],
    *, split: str, temperature: float, kits_only: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy per class, ECE and confusions of :func:`file_class_folds` at a confidence
    temperature (the shipped one: the shipped probabilities)."""
    truth, lp, order = file_class_folds(x, env, labels, groups, paths, split=split,
                                        kits_only=kits_only)  # fmt: skip
    z = np.where(np.isfinite(lp), lp * temperature, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    pred = order[p.argmax(axis=1)]
    ok = np.array([a == b for a, b in zip(truth, pred, strict=True)], float)
    total = collections.Counter(truth)
    right = collections.Counter(t for t, o in zip(truth, ok, strict=True) if o)
    conf = collections.Counter(f"{t}->{q}" for t, q in zip(truth, pred, strict=True) if t != q)
    return {"overall": round(float(ok.mean()), 3), "n": len(truth),
            "per_class": {c: round(right[c] / total[c], 3)
                          for c in sorted(total, key=lambda c: -total[c])},
            "calibration_error": round(_ece(p.max(axis=1), ok), 3),
            "confusions": dict(conf.most_common(12))}  # fmt: skip


def file_classes_part(
    x: np.ndarray, labels: list[str], groups: list[str], paths: list[str]
) -> dict[str, Any]:
    """The library's per-file classes: the confidence temperature chosen on kits A (ECE of
    the A folds), then kits B measured once at the shipped temperature; plus the cost of
    the envelope descriptors (one decode per file)."""
    t0 = time.perf_counter()
    env = np.array([classifier.file_envelope(p) for p in paths])
    env_ms = (time.perf_counter() - t0) * 1000.0 / len(paths)
    t0 = time.perf_counter()
    classifier.predict_file_classes(x, env, labels, [str(Path(p).parent) for p in paths])
    fit_s = time.perf_counter() - t0
    tune = {t: file_class_accuracy(x, env, labels, groups, paths, split="A", temperature=t,
                                   kits_only=True) for t in TEMPERATURE_GRID}  # fmt: skip
    best = min(TEMPERATURE_GRID, key=lambda t: tune[t]["calibration_error"])
    shipped = classifier.CONFIDENCE_TEMPERATURE
    return {
        "tuning_A": file_class_accuracy(x, env, labels, groups, paths, split="A",
                                        temperature=shipped),
        "tuning_A_kits_only": tune.get(shipped),
        "temperature_ece_A": {f"{t:g}": tune[t]["calibration_error"] for t in TEMPERATURE_GRID},
        "temperature_chosen_on_A": best, "temperature_shipped": shipped,
        "held_out_B": file_class_accuracy(x, env, labels, groups, paths, split="B",
                                          temperature=shipped),
        "envelope_ms_per_file": round(env_ms, 1), "fit_and_predict_s": round(fit_s, 2),
        "files": len(paths), "load": os.getloadavg()[0],
    }  # fmt: skip


COST_FILES = 120  # files timed by file_classes_cost


def file_classes_cost(paths: list[str], encoder: Any) -> dict[str, Any]:
    """Index-time cost of the per-file classes (run under the bench lock): the envelope
    descriptor (one decode at 22.05 kHz + STFT) per file against the anchor, the whole-file
    embedding the index computes for the same files, in the same run."""
    from emberd.library.query import query_vector

    files = paths[:: max(len(paths) // COST_FILES, 1)][:COST_FILES]
    t0 = time.perf_counter()
    for p in files:
        classifier.file_envelope(p)
    env_ms = (time.perf_counter() - t0) * 1000.0 / len(files)
    t0 = time.perf_counter()
    for p in files:
        y, sr = sf.read(p, dtype="float32")
        query_vector(y, sr, MODEL)
    emb_ms = (time.perf_counter() - t0) * 1000.0 / len(files)
    return {"files": len(files), "envelope_ms_per_file": round(env_ms, 1),
            "embedding_ms_per_file_anchor": round(emb_ms, 1),
            "ratio": round(env_ms / emb_ms, 3), "load": os.getloadavg()}  # fmt: skip


def within_kit_split(paths: list[str]) -> np.ndarray:
    """True for the name-less half of the second protocol: the files whose name's CRC-32 is
    odd (deterministic, about half of every kit, independent of the audio)."""
    return np.array([zlib.crc32(Path(p).name.encode()) % 2 == 1 for p in paths])


def within_kit_accuracy(x: np.ndarray, labels: list[str], paths: list[str], *,
                        l2: float = L2) -> dict[str, Any]:  # fmt: skip
    """Second protocol, never the headline: half of every kit's files are name-less
    (:func:`within_kit_split`) and classified by a head fitted on every named file, their own
    kit's included (a half-named library).  Velocity layers of one drum fall on both sides,
    so this is far easier than a kit the head has never heard."""
    test = within_kit_split(paths)
    head = fit_head(x[~test], [lab for lab, t in zip(labels, test, strict=True) if not t],
                    model=MODEL, l2=l2)  # fmt: skip
    assert head is not None
    truth = [lab for lab, t in zip(labels, test, strict=True) if t]
    preds = [c for c, _ in head.predict(x[test])]
    right: collections.Counter[str] = collections.Counter()
    for t, p in zip(truth, preds, strict=True):
        right[t] += t == p
    total = collections.Counter(truth)
    order = sorted(total, key=lambda c: -total[c])
    return {"overall": round(sum(right.values()) / len(truth), 3), "n": len(truth),
            "per_class": {c: round(right[c] / total[c], 3) for c in order}}  # fmt: skip


# ----------------------------------------------------------------------------- multitrack

def _load(path: str) -> np.ndarray:
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    return mono_at(y, sr, SR)


def _pick(paths: list[str], labels: list[str], groups: list[str], kit: str,
          cls: str) -> np.ndarray:  # fmt: skip
    """The loudest-peaked sample of class ``cls`` in ``kit`` (a kit's main articulation)."""
    cands = [p for p, lab, g in zip(paths, labels, groups, strict=True) if g == kit and lab == cls]
    if not cands:
        raise SystemExit(f"kit {kit!r} has no {cls}")
    ys = [_load(p) for p in sorted(cands)[:6]]
    return max(ys, key=lambda y: float(np.max(np.abs(y))))


def _place(sample: np.ndarray, beats: list[float], seconds: float, gain: float) -> np.ndarray:
    n = int(seconds * SR)
    out = np.zeros(n, np.float32)
    peak = max(1e-9, float(np.max(np.abs(sample))))
    for b in beats:
        s = int(b * 60.0 / BPM * SR)
        if s < n:
            seg = sample[: n - s] * (gain / peak)
            out[s : s + seg.size] += seg
    return out


def drum_stems(sounds: dict[str, np.ndarray], seconds: float) -> dict[str, np.ndarray]:
    beats = int(seconds * BPM / 60.0)
    pat = {
        "kick": [b for b in range(beats) if b % 4 in (0, 2)],
        "snare": [b for b in range(beats) if b % 4 in (1, 3)],
        "closed_hat": [b / 2 for b in range(beats * 2) if b % 8 != 7],
        "open_hat": [b + 3.5 for b in range(0, beats, 4)],
        "tom": [b + x for b in range(4, beats, 8) for x in (3.0, 3.25, 3.5)],
        "cymbal": [float(b) for b in range(0, beats, 16)],
    }
    gains = {"kick": 0.9, "snare": 0.7, "closed_hat": 0.3, "open_hat": 0.3, "tom": 0.6,
             "cymbal": 0.4}  # fmt: skip
    return {c: _place(sounds[c], [float(b) for b in pat[c]], seconds, gains[c]) for c in pat}


def window_classes(
    head: ClassHead, stem: np.ndarray, encoder: Any
) -> tuple[list[tuple[str, float]], np.ndarray, int, float]:
    """The head on every window the daemon embeds: ``(predictions, window starts (frames),
    hop length (samples), embedding seconds)``."""
    from emberd.dsp.frontend import melspectrogram
    from emberd.models.embedding import frame_windows

    m = encoder.manifest
    mel = melspectrogram(stem, m.frontend())
    windows, starts = frame_windows(mel, window_frames=m.window_frames,
                                    hop_frames=m.hop_frames, tail="drop")  # fmt: skip
    hop = m.frontend().hop_length
    t0 = time.perf_counter()
    emb = encoder.embed(windows)
    dt = time.perf_counter() - t0
    preds = head.predict(emb)
    return preds, starts, hop, dt


def build_multitrack(x: np.ndarray, labels: list[str], groups: list[str], paths: list[str],
                     kit: str, seed: int) -> tuple[ClassHead, np.ndarray]:  # fmt: skip
    """The head fitted without ``kit`` and synth-b, and the 8 stems ``[8, n]`` of ``kit``."""
    train = [i for i, g in enumerate(groups) if g not in (kit, "synth-b")]
    head = fit_head(x[train], [labels[i] for i in train], model=MODEL)
    assert head is not None
    sounds = {c: _pick(paths, labels, groups, kit, c) for c in STEM_CLASSES[:6]}
    stems = drum_stems(sounds, MULTITRACK_S)
    stems["bass"] = 0.7 * synthstems.stem("bass", seed, seconds=MULTITRACK_S)
    stems["pad"] = 0.4 * synthstems.stem("pad", seed, seconds=MULTITRACK_S)
    return head, np.stack([stems[c] for c in STEM_CLASSES]).astype(np.float32)


def multitrack(x: np.ndarray, labels: list[str], groups: list[str], paths: list[str],
               kit: str, seed: int, encoder: Any) -> dict[str, Any]:  # fmt: skip
    """Class accuracy per stem and loudness error for one held-out kit (no timing)."""
    head, audio = build_multitrack(x, labels, groups, paths, kit, seed)
    names = list(STEM_CLASSES)
    # --- classes per stem over the daemon's windows
    acc: dict[str, float] = {}
    for c, y in zip(names, audio, strict=True):
        preds, starts, hop, _dt = window_classes(head, y, encoder)
        win = encoder.manifest.window_frames * hop
        ok = total = 0
        for (cls, _conf), s in zip(preds, starts, strict=True):
            seg = y[s * hop : s * hop + win]
            if seg.size and 20 * np.log10(np.sqrt(np.mean(seg**2)) + 1e-12) > -60.0:
                total += 1
                ok += cls == c
        acc[c] = round(ok / total, 3) if total else float("nan")
    # --- loudness: the analyser fed as the worker feeds it
    an = MixdownAnalyser(sr=SR, channels=list(range(8)), head=head)
    for i in range(0, audio.shape[1], BLOCK):
        an.push(audio[:, i : i + BLOCK], 0.0)
    pyln = __import__("pyloudnorm")
    errors = {}
    for c, y, got in zip(names, audio, an.loudness.integrated(), strict=True):
        ref = pyln.Meter(SR).integrated_loudness(y.astype(np.float64))
        errors[c] = round(abs(float(got) - ref), 4)
    suggestions = [s.text for s in an.masking.suggestions(names, limit=4)]
    return {"accuracy": acc, "loudness_error_lu": errors, "suggestions": suggestions}


def cost(x: np.ndarray, labels: list[str], groups: list[str], paths: list[str],
         encoder: Any) -> dict[str, Any]:  # fmt: skip
    """Time of each 100 ms tick for 8 stems, per daemon hop, against aiSFX on the same stems."""
    head, audio = build_multitrack(x, labels, groups, paths, TEST_KITS[0], 12)
    an = MixdownAnalyser(sr=SR, channels=list(range(8)), head=head)
    ticks_ms = []
    for i in range(0, audio.shape[1], an.tick):  # one push per tick: each push is one tick's work
        t0 = time.perf_counter()
        an.push(audio[:, i : i + an.tick], 0.0)
        ticks_ms.append((time.perf_counter() - t0) * 1000)
    t = np.array(ticks_ms)
    probe = np.random.default_rng(0).standard_normal((8, head.mean.size)).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(100):
        an.on_hop(probe)  # the head on every hop
    head_ms = (time.perf_counter() - t0) * 10
    embed_s, windows = 0.0, 0
    for y in audio:  # anchor: aiSFX windows of the same 8 stems
        _p, starts, _hop, dt = window_classes(head, y, encoder)
        embed_s += dt
        windows = max(windows, len(starts))
    per_hop = float(t.sum()) / (MULTITRACK_S / HOP_S) + head_ms
    anchor = 1000 * embed_s / max(1, windows) * HOP_S / WINDOW_HOP_S
    return {"mixdown_ms_per_hop": round(per_hop, 3), "hop_budget_ms": round(HOP_S * 1000, 1),
            "share_of_budget": round(per_hop / (HOP_S * 1000), 4),
            "tick_ms": {"mean": round(float(t.mean()), 2), "max": round(float(t.max()), 2),
                        "p99": round(float(np.percentile(t, 99)), 2)},
            "worst_tick_fits_one_hop": bool(t.max() <= HOP_S * 1000),
            "ratio_to_aisfx_8ch_embed": round(per_hop / anchor, 3)}  # fmt: skip


# ----------------------------------------------------------------------------- masking

Scene = tuple[str, dict[str, np.ndarray], set[tuple[str, str]], set[tuple[str, str]]]


def scenes(kit_sounds: dict[str, np.ndarray], seed: int) -> list[Scene]:
    """Two-stem scenes: (name, stems, planted ordered pairs, pairs not scored).

    In the "quiet" scenes the drum, 30 dB louder, may well mask the quiet synth
    stem while it sounds: whether that passes the 50 %-of-the-time bar depends on
    the pattern's duty cycle, not on a planted overlap, so that direction is
    neither a positive nor a negative.
    """
    drums = drum_stems(kit_sounds, SCENE_S)
    bass = synthstems.stem("bass", seed, seconds=SCENE_S)
    pad = synthstems.stem("pad", seed, seconds=SCENE_S)
    db = lambda v: 10 ** (v / 20)  # noqa: E731
    return [
        ("bass over kick", {"kick": drums["kick"] * db(-6), "bass": bass * 0.9},
         {("bass", "kick")}, set()),
        ("pad over snare", {"snare": drums["snare"] * db(-12), "pad": pad * 0.9},
         {("pad", "snare")}, set()),
        ("quiet bass", {"kick": drums["kick"], "bass": bass * db(-30)}, set(),
         {("kick", "bass")}),
        ("quiet pad", {"snare": drums["snare"], "pad": pad * db(-30)}, set(),
         {("snare", "pad")}),
        ("hat and bass", {"closed_hat": drums["closed_hat"], "bass": bass * 0.9}, set(), set()),
        ("hat and kick", {"closed_hat": drums["closed_hat"], "kick": drums["kick"]}, set(),
         set()),
    ]  # fmt: skip


REF_N_FFT = 1024  # the reference's frames: 23 ms at 44.1 kHz (a quarter of the model's), hop 512
REF_ERB_STEP = 1.0  # reference bands: one ERB wide (Glasberg & Moore 1990), not critical bands
REF_LC_DB = 0.0  # local criterion of the ideal binary mask: masker at least as loud as target
REF_UNIT_FLOOR_DB = 30.0  # a maskee time-frequency unit counts when within this of its loudest
REF_FRACTION = 0.5  # the claim a suggestion makes: masked at least half the time it sounds
REF_ENERGY_SHARE = 0.1  # ... in bands that hold at least this share of the maskee's energy


def _erb_edges(sr: int) -> np.ndarray:
    """Band edges (Hz) one ERB apart (ERB-number 21.4 log10(1 + 0.00437 f)) up to sr / 2."""
    top = 21.4 * np.log10(1.0 + 0.00437 * sr / 2.0)
    e = np.arange(0.0, top, REF_ERB_STEP)
    return np.append((10.0 ** (e / 21.4) - 1.0) / 0.00437, sr / 2.0)


def reference_masked(masker: np.ndarray, maskee: np.ndarray) -> list[tuple[float, float]]:
    """Band ranges (Hz) where ``masker`` energetically covers ``maskee``: the bench's truth
    for pairs that were not planted (a planted negative is a class-level guess, never
    measured).

    Independent of :mod:`emberd.dsp.masking` by construction: its own STFT
    (23 ms Hann frames, hop 11.6 ms) and its own band scale (1-ERB bands,
    Glasberg & Moore 1990, instead of the model's Zwicker critical bands), no
    spreading across bands, no activity gate, no ticks, the whole scene at
    once.  A time-frequency unit of the maskee is masked when the masker's
    energy in the same unit is at least the maskee's: the ideal binary mask
    with a 0 dB local criterion (Wang 2005), i.e. plain energetic masking.
    A maskee unit counts when within 30 dB of its loudest one; a band is
    masked when at least half its units are; a range is reported when its
    adjacent masked bands hold at least a tenth of the maskee's energy (the
    claim a suggestion makes: "for at least half the time", about a part of
    the stem that matters).

    The model's upward spread of masking is therefore NOT credited here: a
    finding the masker's own energy does not support counts as false.
    """
    n = min(masker.size, maskee.size)
    hop = REF_N_FFT // 2
    win = np.hanning(REF_N_FFT + 1)[:-1]
    idx = np.arange(REF_N_FFT)[None, :] + hop * np.arange((n - REF_N_FFT) // hop + 1)[:, None]
    freqs = np.fft.rfftfreq(REF_N_FFT, 1.0 / SR)
    edges = _erb_edges(SR)
    band = np.clip(np.searchsorted(edges, freqs, side="right") - 1, 0, len(edges) - 2)
    onehot = np.zeros((freqs.size, len(edges) - 1))
    onehot[np.arange(freqs.size), band] = 1.0

    def units(y: np.ndarray) -> np.ndarray:
        spec = np.abs(np.fft.rfft(np.asarray(y[:n], np.float64)[idx] * win, axis=1)) ** 2
        return spec @ onehot  # [T, bands]

    a, b = units(masker), units(maskee)
    keep = onehot.sum(axis=0) > 0  # bands narrower than one FFT bin hold no bin: skipped
    a, b, lo_edges, hi_edges = a[:, keep], b[:, keep], edges[:-1][keep], edges[1:][keep]
    active = b >= b.max() * 10 ** (-REF_UNIT_FLOOR_DB / 10)
    with np.errstate(invalid="ignore"):
        frac = ((a >= b * 10 ** (REF_LC_DB / 10)) & active).sum(axis=0) / active.sum(axis=0)
    hot = np.nan_to_num(frac) >= REF_FRACTION
    share = b.sum(axis=0) / max(float(b.sum()), 1e-30)
    out, z = [], 0
    while z < len(hot):
        if not hot[z]:
            z += 1
            continue
        start = z
        while z < len(hot) and hot[z]:
            z += 1
        if share[start:z].sum() >= REF_ENERGY_SHARE:
            out.append((float(lo_edges[start]), float(hi_edges[z - 1])))
    return out


def masking_scores(paths: list[str], labels: list[str], groups: list[str], *,
                   kits: tuple[str, ...] = MASKING_TEST_KITS,
                   seeds: tuple[int, ...] = (12, 13, 14)) -> dict[str, Any]:  # fmt: skip
    """Findings against the truth: the planted pairs (recall is measured on these) plus the
    pairs :func:`reference_masked` finds truly masked on the isolated stems."""
    tp = fp = fn = 0
    by_reference = 0
    wrong: list[str] = []
    for kit in kits:
        sounds = {c: _pick(paths, labels, groups, kit, c) for c in STEM_CLASSES[:6]}
        for seed in seeds:
            for name, stems, planted, unscored in scenes(sounds, seed):
                names = list(stems)
                audio = np.stack([stems[c] for c in names]).astype(np.float32)
                an = MixdownAnalyser(sr=SR, channels=[0, 1])
                for i in range(0, audio.shape[1], BLOCK):
                    an.push(audio[:, i : i + BLOCK], 0.0)
                found = {(names[s.masker], names[s.maskee]): s
                         for s in an.masking.suggestions(names, limit=8)}  # fmt: skip
                for a in names:
                    for b in names:
                        if a == b:
                            continue
                        pair = (a, b)
                        if pair in unscored:
                            continue
                        s = found.get(pair)
                        lo, hi = PLANTED_RANGES_HZ.get(pair, (0.0, 0.0))
                        hit = s is not None and s.lo_hz < hi and s.hi_hz > lo
                        if pair in planted:
                            tp += hit
                            fn += not hit
                            if not hit:
                                wrong.append(f"missed {a}->{b} in {name} ({kit}, seed {seed})")
                        elif s is not None:
                            true = reference_masked(stems[a], stems[b])
                            if any(s.lo_hz < rh and s.hi_hz > rl for rl, rh in true):
                                tp += 1
                                by_reference += 1
                                wrong.append(f"true by reference {s.text} in {name} "
                                             f"({kit}, seed {seed})")  # fmt: skip
                            else:
                                fp += 1
                                wrong.append(f"false {s.text} in {name} ({kit}, seed {seed})")
    planted_tp = tp - by_reference
    return {"precision": round(tp / max(1, tp + fp), 3),
            "recall_planted": round(planted_tp / max(1, planted_tp + fn), 3),
            "tp": tp, "tp_by_reference": by_reference, "fp": fp, "fn": fn,
            "notes": wrong[:8]}  # fmt: skip


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=cache_dir() / "bench-mixdown",
                    help="where the bench library and synthetic sounds live (reused)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--parts", default="classes,file-classes,multitrack,masking,cost",
                    help="comma-separated subset of classes, file-classes, multitrack, "
                         "masking, cost, file-classes-cost "
                         "(only cost is timed: run that part under the bench lock)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not DRUMKITS.is_dir():
        raise SystemExit(f"{DRUMKITS}: install Debian's hydrogen-drumkits")
    lib = build_library(args.root)
    x, labels, groups, paths = labelled(lib)
    from emberd.library.query import encoder_for

    encoder = encoder_for(MODEL)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, loaded shared 2-core box",
        "labelled_sounds": len(labels),
    }
    if "classes" in parts:
        results["classes_l2_choice"] = choice = choose_l2(x, labels, groups)
        results["classes_held_out_B"] = held_out_accuracy(x, labels, groups, only="B")
        results["classes_held_out"] = held_out_accuracy(x, labels, groups)
        results["classes_within_kit_SECOND_PROTOCOL"] = within_kit_accuracy(x, labels, paths)
        if choice["l2"] != L2:
            results["classes_held_out_B_at_choice"] = held_out_accuracy(
                x, labels, groups, l2=choice["l2"], only="B")  # fmt: skip
    if "file-classes" in parts:
        results["file_classes"] = file_classes_part(x, labels, groups, paths)
    if "file-classes-cost" in parts:
        results["file_classes_cost"] = file_classes_cost(paths, encoder)
    if "masking" in parts:
        results["masking_planted_tuning"] = masking_scores(
            paths, labels, groups, kits=MASKING_TUNE_KITS, seeds=(0, 1, 2))  # fmt: skip
        results["masking_planted"] = masking_scores(paths, labels, groups)
    if "multitrack" in parts:
        for i, kit in enumerate(TEST_KITS):
            results[f"multitrack[{kit}]"] = multitrack(x, labels, groups, paths, kit, 12 + i,
                                                       encoder)  # fmt: skip
        mt = [results[f"multitrack[{k}]"] for k in TEST_KITS]
        results["loudness_max_error_lu"] = max(max(m["loudness_error_lu"].values()) for m in mt)
    if "cost" in parts:
        results["cost_8ch"] = cost(x, labels, groups, paths, encoder)
    report(results, args.json, width=30)


if __name__ == "__main__":
    main()
