"""Per-hit identification: what the live hit ladder asks the library, answered in milliseconds.

``emberd query`` identifies a whole sound; a live hit must be named from its first
few milliseconds and then again as more of it arrives. :class:`HitIndex` holds, for
every library file, what the index already stored at index time, in memory and ready
for that:

* the onset *snippet* (:mod:`emberd.library.waveform`: 250 ms from 5 ms before the
  onset, at WAVE_SR), the waveform every stage correlates with;
* two *attack descriptors* per file derived from it: the log-band spectrum of the
  first ATTACK_SAMPLES (5.8 ms) after the onset, and the log-band spectrogram of the
  first EARLY_SAMPLES (46 ms). Each is stored at ALIGN_SHIFTS onset offsets (a live
  onset is never placed exactly where the indexer placed the file's), mean-removed
  (gain drops out) and unit length. They are searched like embeddings -- one matrix
  product up to EXACT_MAX_ITEMS items, an in-memory Annoy forest beyond -- so the
  candidates for a hit come from an index, never from a scan of every waveform;
* each file's instrument class (:mod:`emberd.library.classes`: the kit's
  ``drumkit.xml`` when the folder has one, else the file and folder names), and a
  :class:`ClassModel` fitted on them at load time: the class of a sound that is not in
  the library, from its attack and decay (log-band energies in growing frames).

:meth:`HitIndex.correlate` then gives, per candidate, the best normalised
cross-correlation of the query's onset-aligned waveform with the candidate's snippet
over +-LAG_SAMPLES, its least-squares gain and the lag: the same measure
:func:`emberd.library.waveform.correlate` uses for ``emberd query``, over the part
of the sound that has arrived.

The index keeps 11 KB per file (int16 snippets) plus 4 descriptor pairs of 180 floats.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emberd.errors import EmberdError
from emberd.library import classes
from emberd.library.search import ExactSearch, normalize
from emberd.library.waveform import PRE_ROLL_SAMPLES, SNIPPET_SAMPLES, WAVE_SR

log = logging.getLogger(__name__)

PRE_SAMPLES = 32  # template samples taken before the onset (1.5 ms: the very start of the hit)
LAG_SAMPLES = 96  # +-4.4 ms of onset misalignment searched by every correlation
ATTACK_SAMPLES = 128  # 5.8 ms: the attack descriptor (SP-Tools reads 256 samples at 44.1 kHz)
EARLY_SAMPLES = 1024  # 46 ms: the early descriptor, 8 frames of DESC_FRAME_SAMPLES
DESC_FRAME_SAMPLES = 128  # descriptor frame (5.8 ms), Hann-windowed, FFT of DESC_NFFT
DESC_NFFT = 256
DESC_BANDS = 20  # log-spaced bands DESC_FMIN_HZ..DESC_FMAX_HZ
DESC_FMIN_HZ = 100.0
DESC_FMAX_HZ = 10000.0
DESC_RANGE_DB = 60.0  # cells more than this below the descriptor's maximum are clipped
DESC_OFFSET_SAMPLES = 16  # descriptors start this far before the onset
BACKGROUND_SAMPLES = 512  # what sounded before a hit (23 ms, 4 descriptor frames) is its
# background: a cell of the hit's descriptor is *heard* when its band power reaches
BACKGROUND_MARGIN = 4.0  # ... this many times the background's in that band (6 dB); the
# candidates are ranked on the heard cells only (chosen on the tuning split, bench/hits.py
MIN_HEARD_CELLS = 5  # --tune); with fewer heard cells than this every cell counts
ALIGN_SHIFTS = (-48, -16, 16, 48)  # onset offsets (samples) each file is indexed at
COARSE_SAMPLES = 512  # lags are searched over this much of the sound (23 ms) ...
FINE_LAGS = 2  # ... then the whole window is compared at the best lag +-this
FINE_TOP = 8  # ... for the best-correlated candidates only
CLASS_EDGES = (0, 64, 128, 256, 512, 1024, 2048, 3072, 4096, 5401)  # frames of the class
# features: short at the attack, long in the decay (samples after the onset, <= 245 ms)
CLASS_BANDS = 24  # log-spaced bands CLASS_FMIN_HZ..CLASS_FMAX_HZ per frame
CLASS_FMIN_HZ = 40.0
CLASS_FMAX_HZ = 11000.0
CLASS_NFFT = 512
CLASS_RANGE_DB = 40.0  # cells more than this below the loudest are clipped (noise, gain)
CLASS_L2 = 0.03  # ridge on the standardised features (chosen on the tuning kits)
CLASS_NOISE_DB = (29.0, 49.0)  # training copies: peak-to-noise ratios of a live hit
CLASS_MAX_PER_CLASS = 150  # labelled sounds per class the model learns from at most
CLASS_COPIES = 2  # noisy copies per library sound (seeded: the same model every load)
CLASS_CUT_SHARE = 0.5  # ... this share of them cut short, after a log-uniform CLASS_CUT_S
CLASS_CUT_S = (0.03, 0.245)
CLASS_POOL = 256  # nearest attacks searched for the files of one class
SOUND_MAX_S = 2.0  # a ringing sound's prediction: the file's first seconds after its onset
SOUND_CACHE_FILES = 64  # whole sounds kept in memory (LRU) ...
SOUND_CACHE_BYTES = 8 * 1024 * 1024  # ... holding at most this many bytes of samples: a
# sound is kept up to its last non-zero sample (SOUND_MAX_S is 176 KB; the session soak's
# 62 hydrogen files, 0.26 s on average, hold 1.4 MB). The bound on the daemon's memory this
# cache adds as it fills, and a reload that finds the library unchanged keeps it.
SOUND_ALIGN_SAMPLES = 8  # the decoded file is aligned on its snippet within +-this ...
SOUND_MATCH_RHO = 0.9  # ... and used only when it correlates this well with it (a file
# changed since it was indexed does not; a library indexed through a lower rate still does)
EXACT_MAX_ITEMS = 50_000  # descriptor items searched by one matrix product; Annoy beyond
ANNOY_TREES = 16
CONTENT_KEY_BYTES = 16  # blake2b digest of an index's inputs (reuse across reloads)


@functools.lru_cache(maxsize=4)
def _bands(sr: int) -> np.ndarray:
    """Band-summing matrix [DESC_BANDS, DESC_NFFT // 2 + 1] (triangular, log-spaced)."""
    freqs = np.fft.rfftfreq(DESC_NFFT, 1.0 / sr)
    edges = np.geomspace(DESC_FMIN_HZ, min(DESC_FMAX_HZ, sr / 2), DESC_BANDS + 2)
    m = np.zeros((DESC_BANDS, len(freqs)), np.float32)
    for b in range(DESC_BANDS):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        m[b] = np.maximum(0.0, np.minimum(up, down))
        if not m[b].any():  # a band narrower than a bin: take the nearest bin
            m[b, int(np.argmin(np.abs(freqs - mid)))] = 1.0
    return m


_HANN = np.hanning(DESC_FRAME_SAMPLES).astype(np.float32)


def descriptors(segments: np.ndarray, n_samples: int) -> np.ndarray:
    """Unit, mean-removed log-band descriptors of onset-aligned segments.

    Parameters
    ----------
    segments : float array [n, >= n_samples]
        Each row starts DESC_OFFSET_SAMPLES before an onset, at WAVE_SR.
    n_samples : int
        ATTACK_SAMPLES or EARLY_SAMPLES (a multiple of DESC_FRAME_SAMPLES).

    Returns
    -------
    float array [n, frames * DESC_BANDS]
    """
    return normalize(_centred(_log_cells(band_power(segments, n_samples))))


def band_power(segments: np.ndarray, n_samples: int) -> np.ndarray:
    """Band power of every descriptor frame of ``segments`` [n, >= n_samples] (or one
    segment): float array [n, n_samples // DESC_FRAME_SAMPLES, DESC_BANDS]."""
    seg = np.atleast_2d(np.asarray(segments, np.float32))[:, :n_samples]
    frames = seg.reshape(len(seg), -1, DESC_FRAME_SAMPLES) * _HANN
    power = np.abs(np.fft.rfft(frames, DESC_NFFT, axis=-1)) ** 2
    return np.asarray(power @ _bands(WAVE_SR).T, np.float32)


def _log_cells(power: np.ndarray) -> np.ndarray:
    """[n, cells] dB of band powers [n, frames, bands], clipped DESC_RANGE_DB under each
    row's loudest cell."""
    flat = (10.0 * np.log10(power + 1e-12)).reshape(len(power), -1)
    return np.maximum(flat, flat.max(axis=1, keepdims=True) - DESC_RANGE_DB)


def _centred(flat: np.ndarray) -> np.ndarray:
    return flat - flat.mean(axis=1, keepdims=True)


def heard_cells(power: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Which cells of a descriptor's band powers [frames, bands] stand BACKGROUND_MARGIN
    times above ``background`` [bands] (the band power of what sounded before the hit:
    an unexplained tail, the noise floor): bool [frames * bands]."""
    return (power >= BACKGROUND_MARGIN * np.asarray(background)[None, :]).reshape(-1)


@functools.lru_cache(maxsize=4)
def _class_bands(sr: int) -> np.ndarray:
    """Triangular log-band matrix [CLASS_BANDS, CLASS_NFFT // 2 + 1]."""
    freqs = np.fft.rfftfreq(CLASS_NFFT, 1.0 / sr)
    edges = np.geomspace(CLASS_FMIN_HZ, min(CLASS_FMAX_HZ, sr / 2), CLASS_BANDS + 2)
    m = np.zeros((CLASS_BANDS, len(freqs)))
    for b in range(CLASS_BANDS):
        lo, mid, hi = edges[b : b + 3]
        m[b] = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
        if not m[b].any():
            m[b, int(np.argmin(np.abs(freqs - mid)))] = 1.0
    return m


def class_features(x: np.ndarray) -> np.ndarray:
    """Attack/decay descriptor of a sound from its onset: log-band energies (dB under the
    loudest cell, clipped at CLASS_RANGE_DB) over the CLASS_EDGES frames, at WAVE_SR.
    Zeros past the end of ``x`` (a sound cut by the next hit) read as silence."""
    y = np.zeros(CLASS_EDGES[-1])
    y[: min(len(x), len(y))] = np.asarray(x, np.float64)[: len(y)]
    rows = []
    for a, b in itertools.pairwise(CLASS_EDGES):
        seg = y[a:b]
        if len(seg) <= CLASS_NFFT:
            spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), CLASS_NFFT)) ** 2 / len(seg)
        else:
            fr = seg[: len(seg) // CLASS_NFFT * CLASS_NFFT].reshape(-1, CLASS_NFFT)
            spec = (np.abs(np.fft.rfft(fr * np.hanning(CLASS_NFFT), axis=1)) ** 2).mean(axis=0)
        rows.append(_class_bands(WAVE_SR) @ spec)
    db = 10.0 * np.log10(np.array(rows) + 1e-20)
    return (np.maximum(db, db.max() - CLASS_RANGE_DB) - db.max()).ravel()


def class_training_set(
    snippets: np.ndarray, labels: Sequence[str | None],
    features: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, list[str]] | None:
    """The features and labels a class model of hits is fitted on: the labelled snippets
    (onset at PRE_ROLL_SAMPLES; at most CLASS_MAX_PER_CLASS per class) plus CLASS_COPIES
    noisy, sometimes cut copies each. None when fewer than two classes are labelled.
    Seeded: the same set every load."""
    keep = [i for i, c in enumerate(labels) if c is not None]
    if len({labels[i] for i in keep}) < 2:
        return None
    rng = np.random.default_rng(0)
    by_class: dict[str, list[int]] = {}
    for i in keep:
        by_class.setdefault(str(labels[i]), []).append(i)
    # A bounded fit whatever the library's size.
    keep = sorted(j for rows in by_class.values()
                  for j in (rows if len(rows) <= CLASS_MAX_PER_CLASS else
                            rng.choice(rows, CLASS_MAX_PER_CLASS, replace=False).tolist()))
    feats, ys = [], []
    for i in keep:
        x = np.asarray(snippets[i, PRE_ROLL_SAMPLES:], np.float64)
        peak = float(np.max(np.abs(x))) + 1e-12
        feats.append(features(x))
        ys.append(str(labels[i]))
        for _ in range(CLASS_COPIES):
            noise_db = rng.uniform(*CLASS_NOISE_DB)
            y = x + rng.standard_normal(len(x)) * peak * 10 ** (-noise_db / 20)
            # A live hit is often heard for less than a snippet (the next hit, or its
            # decay sinking into the noise): then its features read silence after.
            cut = round(np.exp(rng.uniform(*np.log(CLASS_CUT_S))) * WAVE_SR)
            if rng.random() < CLASS_CUT_SHARE:
                y[cut:] = 0.0
            feats.append(features(y))
            ys.append(str(labels[i]))
    return np.array(feats), ys


class ClassModel:
    """Instrument class of a hit from its attack and decay (multinomial logistic regression
    on :func:`class_features`, class-balanced, ridge CLASS_L2), fitted on the library's own
    labelled sounds: what a sound that is not in the library most likely is."""

    def __init__(self, features: np.ndarray, labels: Sequence[str]) -> None:
        from scipy import optimize

        self.classes = sorted(set(labels))
        y = np.array([self.classes.index(c) for c in labels])
        self.mean = features.mean(axis=0)
        self.std = features.std(axis=0) + 1e-6
        z = (features - self.mean) / self.std
        k, d = len(self.classes), z.shape[1]
        onehot = np.eye(k)[y]
        w_sample = (len(y) / (k * np.maximum(np.bincount(y, minlength=k), 1)))[y]
        w_sample /= w_sample.sum()

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[: d * k].reshape(d, k), theta[d * k :]
            logits = z @ w + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            nll = -float(w_sample @ np.log(p[np.arange(len(y)), y] + 1e-12))
            g = (p - onehot) * w_sample[:, None]
            grad = np.concatenate([(z.T @ g + 2 * CLASS_L2 * w).ravel(), g.sum(axis=0)])
            return nll + CLASS_L2 * float((w**2).sum()), grad

        res = optimize.minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                                options={"maxiter": 500})  # fmt: skip
        self.weights = res.x[: d * k].reshape(d, k)
        self.bias = res.x[d * k :]

    @classmethod
    def from_snippets(cls, snippets: np.ndarray, labels: Sequence[str | None]) -> ClassModel | None:
        """Fit on :func:`class_training_set` (of :func:`class_features`); None when fewer
        than two classes are labelled."""
        data = class_training_set(snippets, labels, class_features)
        return None if data is None else cls(*data)

    def predict(self, x: np.ndarray) -> tuple[str, float]:
        """(class, probability) of a sound given from its onset at WAVE_SR."""
        logits = ((class_features(x) - self.mean) / self.std) @ self.weights + self.bias
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = int(np.argmax(p))
        return self.classes[best], float(p[best])


def ncc(
    seg: np.ndarray, tpl: np.ndarray, energy: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised cross-correlation of templates [n, t] with ``seg`` at every lag.

    ``energy`` holds the templates' energies [n] when the caller has them already
    (a precomputed bank); None computes them.  Returns rho [n, lags], the raw products
    [n, lags] and the template energies [n].
    """
    n_tpl = tpl.shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(seg, n_tpl)  # [lags, t], a view
    x = (tpl @ windows.T).astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(seg.astype(np.float64) ** 2)])
    seg_energy = cum[n_tpl:] - cum[: len(cum) - n_tpl]
    # Lags where the query is (nearly) silent would divide by ~0: floor their energy.
    seg_energy = np.maximum(seg_energy, 1e-3 * seg_energy.max() + 1e-12)
    if energy is None:
        energy = (tpl.astype(np.float64) ** 2).sum(axis=1) + 1e-20
    return x / np.sqrt(energy[:, None] * seg_energy[None]), x, energy


class _AnnoyVectors:
    """An in-memory Annoy forest over unit vectors (libraries beyond EXACT_MAX_ITEMS)."""

    kind = "annoy"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        from annoy import AnnoyIndex

        self.ids = np.asarray(ids, np.int64)
        self.index = AnnoyIndex(vectors.shape[1], "angular")
        for i, v in enumerate(vectors):
            self.index.add_item(i, v.tolist())
        self.index.build(ANNOY_TREES)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        answers = [self.index.get_nns_by_vector(q.tolist(), k, include_distances=True)
                   for q in np.atleast_2d(queries)]  # fmt: skip
        return rectangular(answers, self.ids, min(k, len(self.ids)))


def rectangular(
    answers: list[tuple[list[int], list[float]]], ids: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Annoy's answers to several queries as one ``[queries, width]`` pair of arrays.

    Annoy is approximate and may return fewer than k items for one query: a short row is
    padded with its own last id (a repeat, which the callers' ``unique`` drops) and an
    empty one with -1 (no item: the callers drop ids below 0), with the score -1, below
    any real cosine.
    """
    rows = np.full((len(answers), width), -1, np.int64)
    scores = np.full((len(answers), width), -1.0, np.float32)
    for i, (items, dist) in enumerate(answers):
        n = min(len(items), width)
        if n:
            rows[i, :n] = ids[items[:n]]
            rows[i, n:] = rows[i, n - 1]
            scores[i, :n] = 1.0 - np.square(np.asarray(dist[:n])) / 2.0
    return rows, scores


def _vector_index(ids: np.ndarray, vectors: np.ndarray) -> Any:
    if len(ids) > EXACT_MAX_ITEMS:
        return _AnnoyVectors(ids, vectors)
    return ExactSearch(ids, vectors)


@functools.lru_cache(maxsize=256)
def _kit_classes(folder: str) -> dict[str, str]:
    return {str(p): c for p, c in classes.hydrogen_classes(folder).items()}


def file_class(path: str) -> str | None:
    """A library file's instrument class: its kit's ``drumkit.xml``, else its names."""
    p = Path(path)
    for folder in (p.parent, p.parent.parent):
        if (folder / "drumkit.xml").is_file():
            cls = _kit_classes(str(folder)).get(str(p.resolve()))
            if cls is not None:
                return cls
    return classes.class_of_path(p)


def content_key(file_ids: Sequence[int], paths: Sequence[str], snippets: Sequence[Any]) -> bytes:
    """Digest of what a :class:`HitIndex` is built from: file ids, their paths (their classes
    and the sounds :meth:`HitIndex.load_sound` decodes) and their stored snippets
    (:class:`~emberd.library.waveform.Snippet`: scale and int16 data)."""
    h = hashlib.blake2b(digest_size=CONTENT_KEY_BYTES)
    h.update(np.asarray(file_ids, np.int64).tobytes())
    for path, snip in zip(paths, snippets, strict=True):
        raw = str(path).encode("utf-8", "surrogateescape")
        h.update(len(raw).to_bytes(4, "little"))
        h.update(raw)
        h.update(np.float64(snip.scale).tobytes())
        h.update(len(snip.data).to_bytes(4, "little"))
        h.update(snip.data)
    return h.digest()


@dataclasses.dataclass(frozen=True)
class IndexSource:
    """What a :class:`HitIndex` is built from, as read from a library.

    Attributes
    ----------
    file_ids : list of int
        Library files with a stored snippet, ascending.
    paths : list of str
        Their paths.
    snippets : float array [len(file_ids), SNIPPET_SAMPLES]
        Their onset snippets.
    key : bytes
        :func:`content_key` of them: file ids, paths and snippets. Not covered: what a
        path's class is read from (a kit's ``drumkit.xml``, :func:`file_class`) and the
        sound files :meth:`HitIndex.load_sound` decodes, and :attr:`guessed`; a reload
        keeps an index whose key is unchanged even if those changed.
    guessed : dict of int to str
        ``file id -> class`` the library's model guessed (:func:`guessed_classes`).
    """

    file_ids: list[int]
    paths: list[str]
    snippets: np.ndarray
    key: bytes
    guessed: dict[int, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def read(cls, library: Any) -> IndexSource:
        """Read the stored snippets of ``library`` (a :class:`~emberd.library.query.Library`,
        in the thread that opened it) and the classes the library's model guessed for its
        name-less files (:func:`~emberd.library.classifier.load_file_classes`); cheap next
        to :meth:`HitIndex.build`."""
        files = library.files()
        ids = sorted(files)
        snips = library._db(library.store.snippets, ids)
        ids = [f for f in ids if f in snips]
        paths = [str(files[f].path) for f in ids]
        mat = np.zeros((len(ids), SNIPPET_SAMPLES), np.float32)
        for i, f in enumerate(ids):
            mat[i] = snips[f].samples()
        return cls(ids, paths, mat, content_key(ids, paths, [snips[f] for f in ids]),
                   guessed_classes(library.path))  # fmt: skip


def guessed_classes(library: str | Path) -> dict[int, str]:
    """``file id -> class`` of every model's per-file classes kept in ``library`` (the
    first model's, by name, where two disagree)."""
    from emberd.library.classifier import load_file_classes

    out: dict[int, str] = {}
    for path in sorted(Path(library).glob("file-classes-*.npz")):
        model = path.stem.removeprefix("file-classes-")
        for fid, (cls, _conf) in load_file_classes(library, model).items():
            out.setdefault(fid, cls)
    return out


class HitIndex:
    """Onset snippets, attack descriptors and classes of every library file (see module doc).

    Parameters
    ----------
    file_ids : sequence of int
        Library file ids, one per snippet row.
    snippets : float array [n, SNIPPET_SAMPLES]
        Their onset snippets (onset at PRE_ROLL_SAMPLES).
    file_classes : sequence of str or None
        Instrument class per file its names give (what the hit class model learns from).
    guessed_classes : sequence of str or None, optional
        The library model's class of each name-less file (None for a named one):
        :attr:`guessed`, the near answers' last resort
        (:meth:`candidates_of_class` with ``guessed=True``).
    """

    def __init__(
        self,
        file_ids: Sequence[int],
        snippets: np.ndarray,
        file_classes: Sequence[str | None],
        guessed_classes: Sequence[str | None] | None = None,
    ) -> None:
        self.file_ids = np.asarray(file_ids, np.int64)
        snips = np.asarray(snippets, np.float32).reshape(-1, SNIPPET_SAMPLES)
        # int16 plus one scale per file, as the store keeps them: 11 KB a file in memory.
        peak = np.abs(snips).max(axis=1) if len(snips) else np.zeros(0, np.float32)
        self.scale = np.where(peak > 0, peak / 32767.0, 1.0).astype(np.float32)
        self._int16 = np.round(snips / self.scale[:, None]).astype(np.int16)
        self.classes = list(file_classes)
        self.guessed: list[str | None] = (
            [None] * len(self.classes) if guessed_classes is None else list(guessed_classes)
        )
        n = len(self.file_ids)
        rows = np.repeat(np.arange(n), len(ALIGN_SHIFTS))
        self._attack = self._build(rows, ATTACK_SAMPLES)
        self._early = self._build(rows, EARLY_SAMPLES)
        # What instrument a sound that is not in the library is (its attack and decay).
        self.class_model = ClassModel.from_snippets(snips, self.classes) if n else None
        self._squares: dict[str, np.ndarray] = {}  # descriptor matrices squared (lazy)
        # What it was built from (build): the daemon keeps an index whose key is unchanged.
        self.content_key: bytes | None = None
        # Whole sounds of files heard ringing (load_sound): row -> (samples up to the last
        # non-zero one, length in samples), or None (the snippet is used).
        self._sounds: collections.OrderedDict[int, tuple[np.ndarray, int] | None] = (
            collections.OrderedDict()
        )
        self._sound_bytes = 0  # bytes of samples in _sounds (at most SOUND_CACHE_BYTES)

    def _build(self, rows: np.ndarray, n_samples: int) -> Any:
        if not len(rows):
            return None
        starts = np.tile(np.array(ALIGN_SHIFTS), len(self.file_ids)) + (
            PRE_ROLL_SAMPLES - DESC_OFFSET_SAMPLES
        )
        segs = np.zeros((len(rows), n_samples), np.float32)
        for i, (r, s) in enumerate(zip(rows.tolist(), starts.tolist(), strict=True)):
            a = max(s, 0)
            piece = self.snippet(r)[a : s + n_samples]
            segs[i, a - s : a - s + len(piece)] = piece
        return _vector_index(rows, descriptors(segs, n_samples))

    def snippet(self, row: int) -> np.ndarray:
        """Row ``row``'s onset snippet, float32 [SNIPPET_SAMPLES]."""
        return self._int16[row].astype(np.float32) * self.scale[row]

    def snippet_rows(self, rows: np.ndarray) -> np.ndarray:
        """Several snippets, float32 [len(rows), SNIPPET_SAMPLES]."""
        return self._int16[rows].astype(np.float32) * self.scale[rows, None]

    def __len__(self) -> int:
        return len(self.file_ids)

    @classmethod
    def from_library(cls, library: Any) -> HitIndex:
        """Load every stored snippet of ``library`` (a :class:`~emberd.library.query.Library`)
        and build the index (:meth:`build`; the daemon reads and builds in two steps and
        keeps an index whose :attr:`content_key` is unchanged)."""
        return cls.build(IndexSource.read(library))

    @classmethod
    def build(cls, source: IndexSource) -> HitIndex:
        """The index of what :meth:`IndexSource.read` took from a library (the costly part:
        descriptors and the class model's fit; touches no library, so any thread may)."""
        mat = source.snippets
        keep = np.abs(mat).max(axis=1) > 0 if len(mat) else np.zeros(0, bool)
        if len(mat) and not keep.all():  # a silent file is never an answer
            log.info("hit index: %d silent snippets left out", int((~keep).sum()))
        rows = np.flatnonzero(keep).tolist()
        labels = [file_class(source.paths[i]) for i in rows]
        # A name-less file's class as the library's model guessed it: the near answers'
        # last resort (names first: a guess is not a label).
        guessed = [None if lab is not None else source.guessed.get(source.file_ids[i])
                   for lab, i in zip(labels, rows, strict=True)]  # fmt: skip
        index = cls([source.file_ids[i] for i in rows], mat[keep], labels, guessed)
        index.content_key = source.key
        return index

    def candidates(
        self, segment: np.ndarray, n_samples: int, k: int, background: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the k files whose attack looks most like ``segment``'s.

        Parameters
        ----------
        segment : float array
            The query from DESC_OFFSET_SAMPLES before its onset, at WAVE_SR.
        n_samples : int
            ATTACK_SAMPLES (provisional) or EARLY_SAMPLES (later stages).
        k : int
            Distinct files wanted.
        background : float array [DESC_BANDS] or None
            Band power of what sounded just before the hit (:func:`band_power` averaged
            over frames): a tail nobody explained, the noise floor. Given, the files are
            ranked on the *heard* cells of the query's descriptor only
            (:func:`heard_cells`: a quiet kick under a cymbal's tail is compared on its
            low bands, not on the cymbal's), by the cosine of the mean-removed cells
            there. An Annoy index (beyond EXACT_MAX_ITEMS items) ranks on every cell.

        Returns
        -------
        rows, scores : arrays
            Snippet rows, best first, and their descriptor cosines.
        """
        which = "attack" if n_samples == ATTACK_SAMPLES else "early"
        index = self._attack if which == "attack" else self._early
        if index is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = np.zeros(n_samples, np.float32)
        q[: min(len(segment), n_samples)] = segment[:n_samples]
        power = band_power(q, n_samples)
        cells = _log_cells(power)
        heard = None
        if background is not None and isinstance(index, ExactSearch):
            heard = heard_cells(power[0], background)
            if not MIN_HEARD_CELLS <= int(heard.sum()) < heard.size:
                heard = None  # nothing buried (the same ranking), or too little heard
        want = k * len(ALIGN_SHIFTS)
        if heard is None:
            items, scores = index.search(normalize(_centred(cells)), want)
        else:
            items, scores = self._heard_search(which, index, cells[0], heard, want)
        rows, first = np.unique(items[0], return_index=True)
        keep = rows >= 0  # -1: an empty Annoy answer (rectangular)
        rows, first = rows[keep], first[keep]
        order = np.argsort(first)[:k]  # best alignment of each file, in score order
        return rows[order], scores[0][first[order]]

    def _heard_search(
        self, which: str, index: ExactSearch, cells: np.ndarray, heard: np.ndarray, want: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``want`` items with the best cosine to ``cells`` over the ``heard`` cells
        (both sides mean-removed there): three matrix-vector products over the index."""
        m = heard.astype(np.float32)
        n_heard = float(m.sum())
        qc = (cells - float(cells @ m) / n_heard) * m
        qc /= float(np.linalg.norm(qc)) + 1e-12
        if which not in self._squares:  # the items' squared cells (their norms on a mask)
            self._squares[which] = np.square(index.matrix)
        num = index.matrix @ qc
        mean = (index.matrix @ m) / n_heard
        var = np.maximum(self._squares[which] @ m - n_heard * mean**2, 1e-12)
        scores = num / np.sqrt(var)
        top = min(want, len(scores))
        part = np.argpartition(-scores, top - 1)[:top]
        part = part[np.argsort(-scores[part], kind="stable")]
        return index.ids[part][None], scores[part][None]

    def candidates_many(
        self, segments: list[np.ndarray], n_samples: int, k: int
    ) -> list[np.ndarray]:
        """:meth:`candidates`' rows for several queries at once (one descriptor pass, one
        search): the same rows, best first, per segment."""
        index = self._attack if n_samples == ATTACK_SAMPLES else self._early
        if index is None or not segments:
            return [np.zeros(0, np.int64) for _ in segments]
        q = np.zeros((len(segments), n_samples), np.float32)
        for i, seg in enumerate(segments):
            q[i, : min(len(seg), n_samples)] = seg[:n_samples]
        items, _scores = index.search(descriptors(q, n_samples), k * len(ALIGN_SHIFTS))
        out = []
        for row in items:
            rows, first = np.unique(row, return_index=True)
            keep = rows >= 0  # -1: an empty Annoy answer (rectangular)
            out.append(rows[keep][np.argsort(first[keep])[:k]])
        return out

    def candidates_of_class(
        self, segment: np.ndarray, n_samples: int, k: int, cls: str, *, guessed: bool = False
    ) -> np.ndarray:
        """Like :meth:`candidates`, but only files of instrument class ``cls``: the best k
        of the CLASS_POOL files whose attack looks most like ``segment``'s (``guessed``:
        the name-less files the library's model put in ``cls`` instead)."""
        rows, _ = self.candidates(segment, n_samples, CLASS_POOL)
        of = self.guessed if guessed else self.classes
        return rows[[of[int(r)] == cls for r in rows.tolist()]][:k]

    def correlate(
        self, segment: np.ndarray, rows: np.ndarray, n_samples: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best normalised cross-correlation of a query with candidate snippets.

        Parameters
        ----------
        segment : float array [PRE_SAMPLES + n_samples + 2 * LAG_SAMPLES]
            The query from PRE_SAMPLES + LAG_SAMPLES before its onset, at WAVE_SR.
        rows : int array
            Candidate snippet rows.
        n_samples : int
            Samples after the onset to compare (<= SNIPPET_SAMPLES - PRE_ROLL_SAMPLES).

        Returns
        -------
        rho, gain, lag : arrays [len(rows)]
            Correlation in [-1, 1], least-squares gain of the snippet in the query,
            and the lag in samples (-LAG_SAMPLES .. LAG_SAMPLES: the file's onset sits
            that far after the query's).
        """
        n_lags = 2 * LAG_SAMPLES + 1
        seg = np.zeros(PRE_SAMPLES + n_samples + n_lags - 1, np.float32)
        seg[: min(len(segment), len(seg))] = segment[: len(seg)]
        a = PRE_ROLL_SAMPLES - PRE_SAMPLES
        # Coarse: every lag over the first COARSE_SAMPLES; fine: the whole window at the
        # best coarse lag +-FINE_LAGS (the onset aligns the same way all through the sound).
        n_coarse = PRE_SAMPLES + min(n_samples, COARSE_SAMPLES)
        tpl = self._int16[rows, a : a + n_coarse].astype(np.float32) * self.scale[rows, None]
        rho, x, energy = ncc(seg[: n_coarse + n_lags - 1], tpl)
        lag = np.argmax(rho, axis=1)
        pick = np.arange(len(rows))
        rho, gain = rho[pick, lag], x[pick, lag] / energy
        if n_samples > COARSE_SAMPLES and len(rows):
            top = np.argsort(-rho)[:FINE_TOP]  # the rest cannot catch up
            n_tpl = PRE_SAMPLES + n_samples
            tpl = self._int16[rows[top], a : a + n_tpl].astype(np.float32)
            tpl *= self.scale[rows[top], None]
            energy = (tpl.astype(np.float64) ** 2).sum(axis=1) + 1e-20
            lo = np.clip(lag[top] - FINE_LAGS, 0, n_lags - 1 - 2 * FINE_LAGS)
            windows = np.lib.stride_tricks.sliding_window_view(seg, n_tpl)  # [n_lags, n_tpl]
            segs = windows[lo[:, None] + np.arange(2 * FINE_LAGS + 1)[None]]  # [top, fine, t]
            xf = np.matmul(segs, tpl[:, :, None])[..., 0].astype(np.float64)
            seg_energy = np.maximum((segs.astype(np.float64) ** 2).sum(axis=2), 1e-12)
            rf = xf / np.sqrt(energy[:, None] * seg_energy)
            best = np.argmax(rf, axis=1)
            sel = np.arange(len(top))
            floor = float(rf[sel, best].min())
            rho = np.minimum(rho, floor - 1e-6)  # unrefined candidates rank below
            rho[top] = rf[sel, best]
            gain[top] = xf[sel, best] / energy
            lag[top] = lo + best
        return rho, gain, lag - LAG_SAMPLES

    def load_sound(self, row: int, path: str) -> int:
        """Keep row ``row``'s whole sound (``path`` decoded, up to SOUND_MAX_S after its
        onset, aligned on its snippet) for :meth:`placed`; return its length in samples.

        A snippet ends 245 ms after the onset; a cymbal rings on for seconds, and a quiet
        hit under that tail is found and named only when the tail is subtracted. Files
        are decoded once (LRU of SOUND_CACHE_FILES and SOUND_CACHE_BYTES); one that cannot
        be read, or does not match its snippet (changed since it was indexed), keeps the
        snippet.
        """
        if row in self._sounds:
            self._sounds.move_to_end(row)
        else:
            sound = self._decode(row, path)
            self._sounds[row] = sound
            self._sound_bytes += 0 if sound is None else sound[0].nbytes
            while len(self._sounds) > 1 and (len(self._sounds) > SOUND_CACHE_FILES
                                             or self._sound_bytes > SOUND_CACHE_BYTES):
                _, old = self._sounds.popitem(last=False)
                self._sound_bytes -= 0 if old is None else old[0].nbytes
        return self.sound_length(row)

    def sound_bytes(self) -> int:
        """Bytes of samples the whole-sound cache holds (at most SOUND_CACHE_BYTES)."""
        return self._sound_bytes

    def _decode(self, row: int, path: str) -> tuple[np.ndarray, int] | None:
        w = self.aligned_sound(row, path)
        if w is None:
            return None
        nonzero = np.flatnonzero(w)
        end = int(nonzero[-1]) + 1 if len(nonzero) else 0
        return w[:end].copy(), len(w)  # the zeros after the file's end are not kept

    def aligned_sound(self, row: int, path: str) -> np.ndarray | None:
        """``path`` decoded at WAVE_SR and aligned to row ``row``'s snippet: SOUND_MAX_S
        of samples (zeros after the file's end), or None when it cannot be read or does
        not match the snippet (SOUND_MATCH_RHO). What :meth:`load_sound` keeps, untrimmed."""
        from emberd.dsp.sources import load_audio
        from emberd.library.waveform import onset_sample, padded

        try:
            y, _ = load_audio(path, sr=WAVE_SR)
        except (EmberdError, OSError) as exc:  # moved or broken since indexed: the snippet
            log.info("hit index: %s: %s (its snippet is used)", path, exc)
            return None
        y = np.asarray(y, np.float32).reshape(-1)
        pad = SOUND_ALIGN_SAMPLES
        n = round(SOUND_MAX_S * WAVE_SR)
        w = padded(y, onset_sample(y) - PRE_ROLL_SAMPLES - pad, n + 2 * pad)
        snip = self.snippet(row)
        rho, _, _ = ncc(w[: SNIPPET_SAMPLES + 2 * pad], snip[None])
        k = int(np.argmax(rho[0]))
        if float(rho[0, k]) < SOUND_MATCH_RHO:
            return None
        return w[k : k + n]

    def sound_length(self, row: int) -> int:
        """Samples :meth:`placed` can give for ``row`` (its whole sound when loaded)."""
        sound = self._sounds.get(row)
        return SNIPPET_SAMPLES if sound is None else sound[1]

    def placed(self, row: int, gain: float, start: int, length: int) -> np.ndarray:
        """``gain`` times a file's samples ``start .. start + length`` (zeros outside): its
        snippet, or its whole sound once :meth:`load_sound` has it."""
        out = np.zeros(length, np.float32)
        sound = self._sounds.get(row)
        # a whole sound is kept up to its last non-zero sample: zeros after it
        n = SNIPPET_SAMPLES if sound is None else len(sound[0])
        a, b = max(start, 0), min(start + length, n)
        if b > a:  # only the samples wanted (an int16 snippet is scaled piece by piece)
            piece = self._int16[row, a:b] * self.scale[row] if sound is None else sound[0][a:b]
            out[a - start : b - start] = gain * piece
        return out
