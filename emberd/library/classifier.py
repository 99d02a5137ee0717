"""The instrument-class head: a small classifier on embeddings, fitted at index time.

Names say what most samples are (:mod:`emberd.library.classes`), but not all
(``take 12.wav``, ``86335__zgump__tom-0105.wav``), and live audio has no name at
all.  :class:`ClassHead` learns the classes from the library's own labelled
sounds and gives every sound, and every live channel, a class with a confidence.

The model
---------
Multinomial logistic regression on the unit-normalised embedding minus the
training mean (``z = x / |x| - mu``), with an L2 penalty (:data:`L2`) and
class-balanced sample weights (a kit with 60 cymbals and 3 claps must not learn
that everything is a cymbal), fitted by L-BFGS.  Small enough to fit in well
under a second on a few thousand sounds, to store in kilobytes, and to apply to
8 channels per hop in microseconds.

Labels at index time (:func:`library_labels`) come from Hydrogen ``drumkit.xml``
files where a folder has one (the instrument names are the best labels a
library has), otherwise from the file and folder names.  A class needs
:data:`MIN_PER_CLASS` labelled sounds to be learnt.

Entry points: :meth:`ClassHead.predict` (embeddings ``[n, dim]``, e.g. the live
channels of one hop), :meth:`ClassHead.classify` (one embedding) and
:func:`classify_waveform` (audio: a one-shot or a hit's onset-aligned window,
embedded as the indexer embeds a file).

Every library file's class (:func:`fit_library_file_classes`, file
``file-classes-<model>.npz``): a file's label when its names give one, else the guess
of an RBF kernel ridge on the whole-file vector and the envelope descriptors
(:mod:`emberd.dsp.envelope`), smoothed over its velocity layers in its folder.  That
is what the panel's library map and the hit ladder's near answers use for name-less
files; the live channels keep the logistic head (they have an embedding, not a file).

The held-out accuracy (hydrogen-drumkits, whole kits held out, names never
seen by the head) is measured by ``bench/mixdown.py --parts classes,file-classes``; the fitted
weights are written by :func:`fit_library_head`, which ``emberd index`` runs
after every indexing (file ``classes-<model>.npz`` in the library folder).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from emberd.atomic import atomic_open
from emberd.library.classes import CLASSES, class_of_path, hydrogen_classes

log = logging.getLogger(__name__)

L2 = 1e-4  # penalty on the weights (tuned on the leave-one-kit-out split, bench/mixdown.py)
MIN_PER_CLASS = 3  # labelled sounds a class needs to be learnt
MAX_ITER = 500  # L-BFGS iterations (converges in ~100 on 700 sounds)
HEAD_FORMAT = 1
SILENT_PEAK = 10 ** (-70 / 20)  # a window whose peak is below -70 dBFS is silence: no class


def head_path(library: str | Path, model: str) -> Path:
    """Where a library keeps its class head for ``model``."""
    return Path(library) / f"classes-{model}.npz"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


@dataclass
class ClassHead:
    """A fitted head: ``classes[k]`` is scored by ``(unit(x) - mean) @ weights[:, k] + bias[k]``."""

    classes: list[str]
    mean: np.ndarray  # [dim]
    weights: np.ndarray  # [dim, K]
    bias: np.ndarray  # [K]
    model: str = ""
    counts: dict[str, int] | None = None  # labelled sounds per class it learnt from
    generation: int = -1  # the library generation it was fitted on (-1: not from a library)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, K]`` of embeddings ``[n, dim]`` (or ``[dim]``: ``[1, K]``)."""
        z = _unit(np.atleast_2d(x)) - self.mean
        logits = z @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    def predict(self, x: np.ndarray) -> list[tuple[str, float]]:
        """``(class, confidence)`` per row of ``x`` (confidence = the class probability)."""
        p = self.probabilities(x)
        best = p.argmax(axis=1)
        return [(self.classes[int(k)], float(p[i, k])) for i, k in enumerate(best)]

    def classify(self, vector: np.ndarray) -> tuple[str, float]:
        """``(class, confidence)`` of one embedding ``[dim]`` (a few microseconds)."""
        return self.predict(np.asarray(vector).reshape(1, -1))[0]

    def save(self, path: str | Path) -> None:
        """Write atomically as ``.npz`` (arrays plus a JSON header)."""
        header = {
            "format": HEAD_FORMAT,
            "classes": self.classes,
            "model": self.model,
            "counts": self.counts or {},
            "generation": self.generation,
        }
        with atomic_open(path, "wb") as f:
            np.savez(
                f,
                header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                mean=self.mean.astype(np.float32),
                weights=self.weights.astype(np.float32),
                bias=self.bias.astype(np.float32),
            )

    @classmethod
    def load(cls, path: str | Path) -> ClassHead | None:
        """Read a head written by :meth:`save`; None when absent or unreadable (logged)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
                if header.get("format") != HEAD_FORMAT:
                    raise ValueError(f"format {header.get('format')!r}")
                head = cls(
                    classes=[str(c) for c in header["classes"]],
                    mean=np.asarray(data["mean"], np.float64),
                    weights=np.asarray(data["weights"], np.float64),
                    bias=np.asarray(data["bias"], np.float64),
                    model=str(header.get("model", "")),
                    counts={str(k): int(v) for k, v in header.get("counts", {}).items()},
                    generation=int(header.get("generation", -1)),
                )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            log.warning("class head %s unreadable (%s): classes come from names only", path, exc)
            return None
        if head.weights.shape != (head.mean.shape[0], len(head.classes)):
            log.warning("class head %s has inconsistent shapes: ignored", path)
            return None
        return head


def fit_head(
    x: np.ndarray, labels: Sequence[str], *, l2: float = L2, model: str = ""
) -> ClassHead | None:
    """Fit a :class:`ClassHead` on embeddings ``[n, dim]`` and their class labels.

    Classes with fewer than :data:`MIN_PER_CLASS` sounds are left out; None when
    fewer than two classes remain (nothing to tell apart).

    Parameters
    ----------
    x : numpy.ndarray
        Embeddings ``[n, dim]``.
    labels : sequence of str
        One class per row.
    l2 : float
        Weight penalty.
    model : str
        Embedding model name (kept with the head).
    """
    labels = list(labels)
    counts = {c: labels.count(c) for c in CLASSES if labels.count(c) >= MIN_PER_CLASS}
    classes = [c for c in CLASSES if c in counts]
    if len(classes) < 2:
        return None
    keep = np.array([lab in counts for lab in labels])
    u = _unit(np.asarray(x)[keep])
    y = np.array([classes.index(lab) for lab, k in zip(labels, keep, strict=True) if k])
    mean = u.mean(axis=0)
    z = u - mean
    n, dim = z.shape
    k = len(classes)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    # Balanced weights: every class weighs the same in total.
    sample_w = np.array([n / (k * counts[classes[i]]) for i in y])

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: dim * k].reshape(dim, k)
        b = theta[dim * k :]
        logits = z @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll = -float(np.sum(sample_w * np.sum(onehot * logp, axis=1))) / n
        g = (np.exp(logp) - onehot) * sample_w[:, None] / n
        grad_w = z.T @ g + l2 * w
        return nll + 0.5 * l2 * float(np.sum(w * w)), np.concatenate([grad_w.ravel(), g.sum(0)])

    res = optimize.minimize(
        loss, np.zeros(dim * k + k), jac=True, method="L-BFGS-B",
        options={"maxiter": MAX_ITER},
    )  # fmt: skip
    theta = res.x
    return ClassHead(
        classes=classes,
        mean=mean,
        weights=theta[: dim * k].reshape(dim, k),
        bias=theta[dim * k :],
        model=model,
        counts=counts,
    )


def library_labels(paths: Sequence[str], roots: Sequence[str]) -> list[str | None]:
    """The class each library file's labels give it (drumkit.xml first, then names).

    Parameters
    ----------
    paths, roots : sequence of str
        Each file's path and the indexed folder it was found under.
    """
    kits: dict[Path, dict[Path, str]] = {}
    out: list[str | None] = []
    for path, root in zip(paths, roots, strict=True):
        folder = Path(path).parent
        if folder not in kits:
            kits[folder] = hydrogen_classes(folder) if (folder / "drumkit.xml").is_file() else {}
        kit = kits[folder]
        label = kit.get(Path(path).resolve()) if kit else None
        out.append(label or class_of_path(path, root))
    return out


def fit_library_head(store: object, model: str, library: str | Path) -> ClassHead | None:
    """Fit the head on a library's labelled files and save it next to the library.

    Called by the indexer after every run.  A library whose labels cannot teach
    two classes gets no head (and any old one is removed).

    Parameters
    ----------
    store : emberd.library.store.Store
        The open store (the indexer's).
    model : str
        Embedding model.
    library : path-like
        Library folder.
    """
    target = head_path(library, model)
    generation = int(store.generation())  # type: ignore[attr-defined]
    old = ClassHead.load(target)
    if (old is not None and old.generation == generation and old.model == model
            and file_classes_path(library, model).is_file()):  # fmt: skip
        return old  # nothing changed since it was fitted: no refit on an unchanged library
    file_ids, matrix = store.file_vectors(model)  # type: ignore[attr-defined]
    records = store.file_by_id(file_ids.tolist())  # type: ignore[attr-defined]
    paths = [records[int(f)].path for f in file_ids]
    roots = [records[int(f)].root for f in file_ids]
    labels = library_labels(paths, roots)
    have = [i for i, lab in enumerate(labels) if lab is not None]
    head = fit_head(matrix[have], [str(labels[i]) for i in have], model=model) if have else None
    if head is None:
        target.unlink(missing_ok=True)
        file_classes_path(library, model).unlink(missing_ok=True)
        return None
    fit_library_file_classes(library, model, generation, file_ids, matrix, paths, labels)
    head.generation = generation
    head.save(target)
    return head


# The library's per-file classes (issue 19): RBF kernel ridge on the whole-file vector and
# the envelope descriptors (emberd.dsp.envelope), smoothed over each sound's velocity layers
# in its own folder. Every setting chosen by leave-one-kit-out on kits A only
# (bench/class_heads.py --library-head); held-out kits B measured once (bench/mixdown.py).
KERNEL_GAMMA = 0.125  # RBF width on the design (two blocks, each of unit total variance)
KERNEL_L2 = 0.1  # kernel ridge penalty
KERNEL_MAX_TRAIN = 2000  # labelled sounds the kernel is fitted on at most (an n^3 solve)
SCORE_ROWS = 4096  # files scored per kernel block (4096 x 2000 x 8 bytes = 66 MB at most)
SCORE_TEMPERATURE = 3.0  # kernel scores -> log-softmax(T * score) before smoothing
SMOOTH_COSINE = 0.95  # folder neighbours: whole-vector cosine at least (velocity layers)
SMOOTH_WEIGHT = 2.0  # weight of the neighbours' mean log-probability
CONFIDENCE_TEMPERATURE = 0.7  # smoothed log-probabilities -> softmax(t * .): least ECE on kits A
FILE_CLASSES_FORMAT = 1


def file_classes_path(library: str | Path, model: str) -> Path:
    """Where a library keeps its per-file classes (and the envelope descriptors they used)."""
    return Path(library) / f"file-classes-{model}.npz"


def file_envelope(path: str) -> np.ndarray:
    """:func:`~emberd.dsp.envelope.envelope_features` of a file from its onset (the
    library's onset rule); zeros when the file cannot be read."""
    from emberd.dsp.envelope import ENV_SR, N_FEATURES, envelope_features
    from emberd.dsp.sources import load_audio
    from emberd.library.waveform import onset_sample

    try:
        y, _ = load_audio(path, sr=ENV_SR, mono=True)
    except Exception as exc:  # any unreadable file: no descriptor
        log.warning("%s: no envelope descriptor (%s)", path, exc)
        return np.zeros(N_FEATURES)
    y = np.asarray(y, np.float32).reshape(-1)
    return envelope_features(y[onset_sample(y) :]) if y.size else np.zeros(N_FEATURES)


@dataclass
class KernelHead:
    """RBF kernel ridge on ``[unit(whole) - mean) / scale, (env - mean) / std / scale]``:
    class-balanced one-vs-rest targets +-1, scores ``K(x, train) @ alpha``."""

    classes: list[str]
    train: np.ndarray  # [n, d] design rows it was fitted on
    alpha: np.ndarray  # [n, K]
    whole_mean: np.ndarray
    whole_scale: float
    env_mean: np.ndarray
    env_std: np.ndarray
    env_scale: float

    def design(self, whole: np.ndarray, env: np.ndarray) -> np.ndarray:
        """The kernel's input rows of whole-file vectors ``[n, dim]`` and descriptors ``[n, E]``."""
        a = (_unit(np.atleast_2d(whole)) - self.whole_mean) / self.whole_scale
        b = (np.atleast_2d(env) - self.env_mean) / self.env_std / self.env_scale
        return np.hstack([a, b])

    def scores(self, whole: np.ndarray, env: np.ndarray) -> np.ndarray:
        """One-vs-rest scores ``[n, K]`` (SCORE_ROWS rows at a time: bounded memory)."""
        x = self.design(whole, env)
        return np.vstack([_rbf(x[i : i + SCORE_ROWS], self.train) @ self.alpha
                          for i in range(0, max(len(x), 1), SCORE_ROWS)])  # fmt: skip


def _rbf(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
    return np.exp(-KERNEL_GAMMA * np.maximum(d2, 0.0))


def fit_kernel_head(
    whole: np.ndarray, env: np.ndarray, labels: Sequence[str], *, seed: int = 0
) -> KernelHead | None:
    """Fit a :class:`KernelHead` (classes with fewer than MIN_PER_CLASS sounds left out;
    None when fewer than two remain). Beyond KERNEL_MAX_TRAIN sounds a class-balanced,
    seeded subsample is fitted on."""
    labels = list(labels)
    counts = {c: labels.count(c) for c in CLASSES if labels.count(c) >= MIN_PER_CLASS}
    classes = [c for c in CLASSES if c in counts]
    if len(classes) < 2:
        return None
    keep = np.array([i for i, lab in enumerate(labels) if lab in counts])
    if len(keep) > KERNEL_MAX_TRAIN:
        rng = np.random.default_rng(seed)
        per = KERNEL_MAX_TRAIN // len(classes)
        keep = np.sort(np.concatenate([
            (rows if len(rows) <= per else rng.choice(rows, per, replace=False))
            for rows in ([i for i in keep if labels[i] == c] for c in classes)]))  # fmt: skip
    y = np.array([classes.index(labels[i]) for i in keep])
    u = _unit(np.asarray(whole, np.float64)[keep])
    e = np.asarray(env, np.float64)[keep]
    w_mean = u.mean(axis=0)
    w_scale = float(np.sqrt(max(float(((u - w_mean) ** 2).mean(axis=0).sum()), 1e-12)))
    e_mean, e_std = e.mean(axis=0), e.std(axis=0) + 1e-6
    z = (e - e_mean) / e_std
    e_scale = float(np.sqrt(max(float((z**2).mean(axis=0).sum()), 1e-12)))
    head = KernelHead(classes, np.zeros((0, 0)), np.zeros((0, 0)), w_mean, w_scale,
                      e_mean, e_std, e_scale)  # fmt: skip
    x = head.design(u, e)
    n, k = len(y), len(classes)
    cnt = np.bincount(y, minlength=k)
    w = (n / (k * np.maximum(cnt, 1)))[y]  # class-balanced
    target = -np.ones((n, k))
    target[np.arange(n), y] = 1.0
    head.train = x
    head.alpha = np.linalg.solve(w[:, None] * _rbf(x, x) + KERNEL_L2 * np.eye(n),
                                 w[:, None] * target)  # fmt: skip
    return head


def _log_softmax(s: np.ndarray, t: float) -> np.ndarray:
    z = t * s - (t * s).max(axis=1, keepdims=True)
    return np.asarray(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))


def smoothed_log_probabilities(
    scores: np.ndarray, whole: np.ndarray, folders: Sequence[str]
) -> np.ndarray:
    """Each sound's ``log_softmax(SCORE_TEMPERATURE * scores)`` plus SMOOTH_WEIGHT times the
    mean of those of the sounds in its own folder whose whole vectors are at least
    SMOOTH_COSINE alike (its velocity layers; no labels used)."""
    lp = _log_softmax(np.asarray(scores, np.float64), SCORE_TEMPERATURE)
    unit = _unit(np.asarray(whole, np.float64))
    out = lp.copy()
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(folders):
        groups.setdefault(f, []).append(i)
    for rows in groups.values():
        idx = np.array(rows)
        near = (unit[idx] @ unit[idx].T >= SMOOTH_COSINE).astype(np.float64)
        np.fill_diagonal(near, 0.0)
        out[idx] += SMOOTH_WEIGHT * (near @ lp[idx]) / np.maximum(near.sum(1, keepdims=True), 1)
    return out


def predict_file_classes(
    whole: np.ndarray, env: np.ndarray, labels: Sequence[str | None], folders: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """Fit the kernel head on the labelled files and give every file a class.

    Returns
    -------
    (classes, probabilities [n, K], predicted index [n]) or None
        None when the labels cannot teach two classes.  Probabilities are
        ``softmax(CONFIDENCE_TEMPERATURE * smoothed log-probabilities)``.
    """
    have = [i for i, lab in enumerate(labels) if lab is not None]
    head = fit_kernel_head(np.asarray(whole)[have], np.asarray(env)[have],
                           [str(labels[i]) for i in have])  # fmt: skip
    if head is None:
        return None
    lp = smoothed_log_probabilities(head.scores(whole, env), whole, folders)
    p = np.exp(_log_softmax(lp, CONFIDENCE_TEMPERATURE))
    return head.classes, p, p.argmax(axis=1)


def fit_library_file_classes(
    library: str | Path, model: str, generation: int, file_ids: np.ndarray,
    matrix: np.ndarray, paths: Sequence[str], labels: Sequence[str | None],
) -> dict[int, tuple[str, float]]:  # fmt: skip
    """Every library file's class (its label when it has one, else the kernel head's guess)
    and confidence, written to :func:`file_classes_path`. The envelope descriptors of files
    seen by the previous fit are reused (one decode per new file)."""
    from emberd.dsp.envelope import N_FEATURES

    target = file_classes_path(library, model)
    cached: dict[int, np.ndarray] = {}
    try:
        with np.load(target, allow_pickle=False) as old:
            if int(old["format"]) == FILE_CLASSES_FORMAT:
                cached = {int(f): e for f, e in zip(old["file_ids"], old["env"], strict=True)}
    except (OSError, KeyError, ValueError):
        pass
    env = np.array([cached[int(f)] if int(f) in cached else file_envelope(p)
                    for f, p in zip(file_ids, paths, strict=True)])  # fmt: skip
    env = env.reshape(-1, N_FEATURES)
    got = predict_file_classes(matrix, env, labels, [str(Path(p).parent) for p in paths])
    out: dict[int, tuple[str, float]] = {}
    if got is not None:
        classes, prob, best = got
        for i, f in enumerate(file_ids.tolist()):
            lab = labels[i]
            out[int(f)] = (lab, 1.0) if lab is not None else (classes[best[i]],
                                                             float(prob[i, best[i]]))  # fmt: skip
    names = np.array([out.get(int(f), ("", 0.0))[0] for f in file_ids])
    conf = np.array([out.get(int(f), ("", 0.0))[1] for f in file_ids], np.float32)
    with atomic_open(target, "wb") as fh:
        np.savez(fh, format=FILE_CLASSES_FORMAT, generation=generation, file_ids=file_ids,
                 env=env.astype(np.float32), classes=names, confidence=conf)  # fmt: skip
    return out


def load_file_classes(library: str | Path, model: str) -> dict[int, tuple[str, float]]:
    """``file id -> (class, confidence)`` written by :func:`fit_library_file_classes`
    (empty when absent or unreadable; files the fit could not class are left out)."""
    try:
        with np.load(file_classes_path(library, model), allow_pickle=False) as d:
            if int(d["format"]) != FILE_CLASSES_FORMAT:
                return {}
            rows = zip(d["file_ids"], d["classes"], d["confidence"], strict=True)
            return {int(f): (str(c), float(p)) for f, c, p in rows if c}
    except (OSError, KeyError, ValueError):
        return {}


def classify_waveform(
    y: np.ndarray, sr: int, *, head: ClassHead, encoder: Any
) -> tuple[str, float] | None:
    """The class of one sound from its audio: a one-shot, or a hit's onset-aligned window.

    The audio is embedded as the indexer embeds a library file (the model's
    windows over the sound, padded at the end, pooled by window energy), so the
    head sees what it was fitted on.  Pass audio starting at (or just before)
    the onset and ending before the next one.

    Parameters
    ----------
    y : numpy.ndarray
        Samples ``[n]`` or ``[n, channels]`` (mixed to mono).
    sr : int
        Their sample rate in Hz (resampled to the model's).
    head : ClassHead
        The library's head (:meth:`ClassHead.load` of :func:`head_path`).
    encoder : Encoder
        The embedding model the head was fitted for (``head.model``).

    Returns
    -------
    (str, float) or None
        Class and confidence; None for silence or an empty window (silence has no class).
    """
    from emberd.dsp.resample import mono_at
    from emberd.models.embedding import embed_signal, pool, window_energy

    rate = int(encoder.manifest.frontend().sr)
    mono = mono_at(np.asarray(y, np.float32).reshape(len(y), -1), int(sr), rate)
    if mono.size == 0 or not np.any(np.abs(mono) > SILENT_PEAK):
        return None
    emb, starts = embed_signal(mono, encoder, tail="pad")
    window_s = encoder.manifest.window_frames * encoder.manifest.frontend().hop_seconds
    vector = pool(emb, "energy", window_energy(mono, starts, sr=rate, window_s=window_s))
    return head.classify(vector)
