"""The library as the daemon and ``emberd query`` use it: :class:`Library`.

Small interface::

    lib = Library.open(path)                         # never creates or writes
    lib.search(vectors [n, dim], k, model="aisfx")   # similar sounds, every live hop
    lib.identify(audio, sr, k)                       # "which of my samples is this?"
    lib.query_audio(audio, sr, k, model=...)         # both stages, as `emberd query`

Each match is a dict (the ``emberd query --json`` match object): ``path``
(absolute), ``name``, ``score`` (the embedding cosine similarity of the query
and the file, present only when it was measured), ``distance`` (Annoy's
angular distance ``sqrt(2 - 2 score)``, present with ``score``),
``segment_start_s``, ``tags``, ``kind`` (``"exact"``: identified confidently --
landmarks confirmed it, a waveform matched or the re-ranker of
:mod:`emberd.library.rerank` is sure; ``"similar"``: the best guess of the
identification stage, or nearest by embedding). Each identification stage adds
what it measured: ``landmarks`` (time-consistent landmark matches), ``rho`` and
``gain_db`` (waveform correlation and level), ``mixed_with``. No field holds a
number another stage made up.

Silence, a DC offset and the noise floor are no sound (:mod:`emberd.dsp.silence`):
they match nothing, and a query vector of zeros matches nothing.

Search back end per model: exact (one matrix product over all file and
segment vectors) up to :data:`EXACT_MAX_ITEMS`, Annoy with exact re-ranking of
its candidates beyond; ``search="exact"|"annoy"`` overrides.  A damaged Annoy
index falls back to exact search with a warning.  The SQLite connection stays
in the thread that opened the library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emberd.dsp.resample import mono_at
from emberd.dsp.silence import QUERY_FLOOR_DBFS, no_sound_reason
from emberd.dsp.sources import load_audio
from emberd.errors import EmberdError
from emberd.library import fingerprint, fitted, rerank, waveform
from emberd.library.classes import cached_class_of_path
from emberd.library.indexer import frame_energy, window_weights
from emberd.library.search import AnnoySearch, ExactSearch, normalize
from emberd.library.store import FileRecord, Store

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 50_000  # 50k x 512 float32 = 100 MB, ~5 ms per query on one core
SEARCH_MODES = ("auto", "exact", "annoy")
# Identification candidates (re-ranked by emberd.library.rerank; chosen on bench/identify.py,
# where 100 + 50 + 100 of 752 files hold the source for 92-100 % of queries per transform):
IDENTIFY_CANDIDATES = 100  # embedding neighbours query_audio hands to identify()
LANDMARK_CANDIDATES = 50  # best landmark matches
ATTACK_CANDIDATES = 100  # nearest attack vectors (one matrix product over all templates)
RESIDUAL_CANDIDATES = 50  # nearest attack vectors of what is left after the best waveform match
INSIDE_FILE_S = 0.5  # a landmark alignment this far into a file: a window over a loop
DEDUP_FACTOR = 4  # fetch k x this items: several segments of one file collapse into one match
# Speed/direction variants of a query (Library.best_variant): producers pitch by resampling.
VARIANT_SEMITONES = (-3, -2, -1, 1, 2, 3)  # resamplings tried (the waveform stage refines +-50 c)
REVERSED_VARIANT = True  # the query's end, reversed, is tried too ...
# ... when it is loud: a reversed one-shot ends with its attack, its loudest part. The last
# REVERSED_END_S must peak within REVERSED_END_DB of the whole query's peak (a decaying tail
# lies 40 dB or more below it, and reversed, its low rumble correlates by chance with the
# snippet of some kick or tom: 0.75-0.87 for three pitch-preserved cymbals of kits A).
REVERSED_END_S = 0.1
REVERSED_END_DB = 20.0
# ... of its sounding part: a query shorter than 2 x REVERSED_END_S compares its last half
# (else every sound under 0.1 s would "end loud"), and what follows the sound's end is
# trimmed first (:func:`sounding_end`: a reversed one-shot exported with a silent tail, or
# a live window that runs on into the room's noise, still ends with its attack).
REVERSED_END_FRACTION = 0.5  # at most this share of the sounding part is its "end"
END_FRAME_S = 0.01  # frames (from the query's end) whose RMS is compared with the floor
END_NOISE_PERCENTILE = 10.0  # the query's noise floor: this percentile of its frames' RMS ...
END_NOISE_MARGIN_DB = 6.0  # ... plus this; frames at or under it after the sound are no sound,
END_FLOOR_MIN_DB = 60.0  # and always those this far under the loudest frame (digital silence);
END_FLOOR_MAX_DB = 40.0  # the floor is never nearer the loudest frame than this (a sound with
# no silence at all: its quietest frames are its own decay, not noise). Chosen on kits A:
# reversed 366/366 end loud, also with 0.3 s of silence or a noise floor 60 dB under the
# peak after them; played 28/366 (30 with the untrimmed rule), 25-27 with silence or noise)
VARIANT_MAX_S = 2.0  # seconds of the query (from its start, or its end reversed) compared
VARIANT_SKIP_RHO = 0.97  # a waveform answer this correlated is the sample as it is: no variant
# Each variant's waveform is also correlated with the snippets of its nearest attack vectors
# (Library.probed_variant): the variant that correlates best is tried too, when it beats the
# query's own answer. An attack vector (band energies) picks a variant by chance more often
# than a waveform does (a reversed hit whose -3-semitone copy has a closer attack; a
# pitch-preserving shift, whose resampled copy is a phase-vocoder stretch of its source).
VARIANT_PROBE_FILES = 8  # attack neighbours per variant whose snippets are correlated with it
# The probed variant must also correlate at least the waveform stage's
# wave_min_rho (was: only more than the own answer's rho, 0 for a template answer). Kits A
# (24 samples x 21 edits + 48 sounds in no library, fit seed): 19 of the 25 second pipelines
# that sounds in no library ran are skipped, 2 of 15 for library queries, no answer changed
# (499/504 right either way).
# When the query's own answer correlates less than WIDE_BELOW_RHO (or no waveform does), the
# snippets of its next WIDE_CANDIDATES attack neighbours are correlated with it too
# (Library._widen) and the best WIDE_ADD of those above the answer join the candidates: reverb
# smears the attack's band energies (its source can rank 200-260th by attack on kits A) but
# the waveform still correlates sample for sample. Chosen on kits A's reverb misses.
WIDE_BELOW_RHO = 0.8
WIDE_CANDIDATES = 300
WIDE_ADD = 4
TEMPLATE_RHO_EQUIVALENT = 0.8  # a template answer whose probability leads the runner-up's by
# d weighs as a waveform rho 0.8 d
# A waveform answer weighs as its rho plus this times the re-ranker's probability of its file
# in :func:`strength` (chosen on kits A by ``bench/fit_identify.py --confidence``; 0 in a fit
# file without it): a near tie of correlations goes to the file the templates believe too.
WAVE_PROB_WEIGHT = float(fitted.params().get("wave_prob_weight", 0.0))
# Sibling recordings (round robins, velocity layers of one instrument: files in one folder)
# share their first 250 ms so closely that a transform (a pitch-preserving shift, a cut
# attack, a reversal) can leave one correlating a little better than the source. When other
# files of the answer's folder correlate within SIBLING_RHO of it, each one's whole sound
# (waveform.SOUND_S, read from its file) is compared with the query (waveform.sound_rho)
# and the best of those answers; at most SIBLING_FILES are read. Chosen on kits A by
# ``bench/fit_siblings.py`` (0 in a fit file without it: no tie-break).
SIBLING_RHO = float(fitted.params().get("sibling", {}).get("rho_margin", 0.0))
SIBLING_FILES = 4
# Which of waveform.sound_rho's measures decides (0: whole, energy-weighted; 1: the mean of
# the blocks'), chosen with the margin.
SIBLING_MEASURE = int(fitted.params().get("sibling", {}).get("measure", 0))
# A sibling answers only when its whole sound matches the query at least this much better
# than the answer's does (chosen with the margin).
SIBLING_GAIN = float(fitted.params().get("sibling", {}).get("min_gain", 0.0))

# A query and its speed/direction variants: (semitones, reversed, audio, attack cosines).
VariantScores = list[tuple[float, bool, np.ndarray, np.ndarray]]

@dataclass
class Evidence:
    """What the cheap identification stages found for one query (see :meth:`Library.evidence`).

    ``audio`` is the query at ``sr`` (the fingerprint rate); ``landmarks`` the
    best landmark matches ``(file_id, count, offset_s)``; ``inside_file`` when
    they confirm a window well inside a longer file; ``candidates`` the files to
    re-rank and ``features`` their :mod:`rerank` features (arrays in that order).
    """

    audio: np.ndarray
    sr: int
    landmarks: list[tuple[int, int, float]]
    confirmed: bool
    inside_file: bool
    cosine: dict[int, float]
    candidates: list[int] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    variant: tuple[float, bool] = (0.0, False)  # (semitones undone, reversed) of the query
    # What the candidates' features are computed from (Library._featurize, Library._widen):
    patch: rerank.QueryPatch | None = None
    attack_scores: np.ndarray | None = None  # attack cosine with every stored template
    counts: dict[int, int] = field(default_factory=dict)  # landmark matches per file


@dataclass
class _ModelIndex:
    backend: ExactSearch | AnnoySearch
    dim: int


def one_blas_thread() -> AbstractContextManager[Any]:
    """A context with one BLAS thread for a query on the main thread (``emberd query``).

    A query's matrix products are small (candidate templates, attack vectors, one query
    against the library's vectors), and OpenBLAS's second thread spinning for its share
    cost more CPU than the products themselves (a query's band powers: 8.7 -> 2.6 CPU-ms on
    the shared 2-core box). Answers are those of a one-thread run (two threads split some
    float32 sums: re-ranker logits moved by <= 2e-6, confidences by <= 1.1e-7 on
    bench/identify.py, no answer changed). The libraries are looked up once per process (a
    fresh ``threadpool_limits`` looks them up every time: 3 CPU-ms a query); those loaded
    later (scipy's own OpenBLAS) are not limited.

    On any other thread it does nothing: the limit is process-wide, and in the daemon the
    worker (``search`` every hop) and the control thread (a capture's query) would take it
    at once, the one leaving last putting back the "1" it found (and OpenBLAS did not take
    back its threads when another thread than the limiting one restored them); the daemon
    sets its BLAS threads once at start-up (streaming encoder, hit ladder).

    Returns
    -------
    contextlib.AbstractContextManager
        The limit, or a context that does nothing off the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    limited: AbstractContextManager[Any] = _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
    return limited


_BLAS_CONTROLLER: Any = None


def _distance(score: float) -> float:
    """Angular distance of two unit vectors with cosine ``score`` (Annoy's definition)."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * score))


class Library:
    """An open library (see the module docstring). Use :meth:`open`."""

    def __init__(self, store: Store, search: str) -> None:
        self.store = store
        self.search_mode = search
        self.path = store.path
        self._indexes: dict[str, _ModelIndex] = {}
        self._files: dict[int, FileRecord] | None = None
        self._fp: fingerprint.FingerprintIndex | None = None
        self._tpl: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._row_of: dict[int, int] | None = None  # file id -> its row in _templates()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, search: str = "auto",
             wait: bool = True) -> Library:
        """Open an existing library read-only, at one whole generation.

        The library is read as it was when it was opened, before or after any
        ``emberd index`` run, never half-way through one
        (:mod:`emberd.library.librarylock`).

        Parameters
        ----------
        path : path-like
            Library folder made by ``emberd index``.
        search : {"auto", "exact", "annoy"}
            Back end choice (auto: exact up to EXACT_MAX_ITEMS items).
        wait : bool
            While ``emberd index`` writes the library: wait for it to finish
            (True), or raise (False: the daemon keeps the generation it has).

        Raises
        ------
        EmberdError
            Not a library, a newer or damaged one; being indexed and ``wait`` False.
        """
        from emberd.library.librarylock import start_snapshot

        if search not in SEARCH_MODES:
            raise EmberdError(f"search={search!r}: choose from {', '.join(SEARCH_MODES)}")
        store = Store(path, create=False)
        try:
            start_snapshot(store.conn, store.path, wait=wait)
        except BaseException:
            store.close()
            raise
        return cls(store, search)

    def close(self) -> None:
        """Release the database and unmap indexes."""
        for idx in self._indexes.values():
            if isinstance(idx.backend, AnnoySearch):
                idx.backend.unload()
        self._indexes.clear()
        self.store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def models(self) -> dict[str, tuple[str, int]]:
        """``{model name: (version, dim)}`` of the models the library holds vectors for."""
        return self._db(self.store.models)

    def _db(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except sqlite3.DatabaseError as exc:
            raise EmberdError(f"{self.path}: damaged library database ({exc})") from None

    def files(self) -> dict[int, FileRecord]:
        """All file records by id (cached)."""
        if self._files is None:
            self._files = {r.id: r for r in self._db(self.store.files).values()}
        return self._files

    def require_model(self, model: str) -> int:
        """Return ``model``'s dim, or raise EmberdError if the library has no vectors for it."""
        known = self.models()
        if model not in known:
            have = ", ".join(sorted(known)) or "none"
            raise EmberdError(
                f"library {self.path}: not indexed with model {model} (has: {have}); "
                f"run: emberd index DIR --library {self.path} --model {model}"
            )
        return known[model][1]

    def _index(self, model: str) -> _ModelIndex:
        if model in self._indexes:
            return self._indexes[model]
        dim = self.require_model(model)
        backend: ExactSearch | AnnoySearch | None = None
        n_items = self._db(
            lambda: self.store.conn.execute(
                "SELECT COUNT(*) FROM vectors WHERE model=?", (model,)
            ).fetchone()[0]
        )
        want_annoy = self.search_mode == "annoy" or (
            self.search_mode == "auto" and n_items > EXACT_MAX_ITEMS
        )
        if want_annoy:
            ann: AnnoySearch | None = None
            try:
                ann = AnnoySearch.open(self.path / "index", model, dim=dim)
            except EmberdError as exc:
                log.warning("%s; using exact search", exc)
            generation = self._db(self.store.generation)
            if ann is not None and ann.manifest.generation != generation:
                # Built from other vectors than this snapshot's (an index run since, or one
                # that was interrupted): its ids would not match what we read.
                log.warning("model %s: Annoy index is of generation %d, the library of %d; "
                            "using exact search", model, ann.manifest.generation, generation)
                ann.unload()
            elif ann is not None:
                backend = ann
            else:
                log.warning("model %s: no Annoy index; using exact search", model)
        if backend is None:
            ids, _fids, _starts, matrix = self._db(self.store.vectors, model)
            backend = ExactSearch(ids, matrix)
        self._indexes[model] = _ModelIndex(backend, dim)
        return self._indexes[model]

    def search(
        self, vectors: np.ndarray, k: int = 10, *, model: str
    ) -> list[list[dict[str, Any]]]:
        """Nearest library sounds for each query vector (kind ``"similar"``).

        Parameters
        ----------
        vectors : float array [n, dim] (or [dim])
            Query embeddings from ``model``.
        k : int
            Matches per query (distinct files).
        model : str
            The model that made the vectors.

        Returns
        -------
        list of list of dict
            Per query, up to k match dicts, best first; none for a zero vector.
        """
        if k < 1:
            raise EmberdError(f"k={k}: must be at least 1")
        idx = self._index(model)
        q = np.atleast_2d(np.asarray(vectors, np.float32))
        if q.shape[1] != idx.dim:
            raise EmberdError(f"query vectors have dim {q.shape[1]}, model {model} gives {idx.dim}")
        if not np.all(np.isfinite(q)):
            raise EmberdError("query vectors contain NaN or infinite values")
        with one_blas_thread():
            ids, scores = idx.backend.search(q, k * DEDUP_FACTOR + 4)
        rows = self._db(self.store.vector_rows, [i for i in ids.ravel().tolist() if i >= 0])
        files = self.files()
        missing = {fid for fid, _ in rows.values() if fid not in files}
        if missing:  # indexed after we cached the file table
            self._files = None
            files = self.files()
        out = []
        silent = ~np.any(q, axis=1)  # a zero vector is no sound: it matches nothing
        for id_row, score_row, empty in zip(ids, scores, silent, strict=True):
            matches: list[dict[str, Any]] = []
            if empty:
                out.append(matches)
                continue
            seen: set[int] = set()
            for vid, score in zip(id_row.tolist(), score_row.tolist(), strict=True):
                if vid < 0 or vid not in rows:
                    continue
                fid, start = rows[vid]
                if fid in seen or fid not in files:
                    continue
                seen.add(fid)
                matches.append(self._match(files[fid], float(score), float(start), "similar"))
                if len(matches) == k:
                    break
            out.append(matches)
        return out

    @staticmethod
    def _match(
        rec: FileRecord, score: float | None, start: float, kind: str, stage: str | None = None
    ) -> dict[str, Any]:
        """A match dict; ``score`` (embedding cosine) and ``distance`` only when measured."""
        out: dict[str, Any] = {"path": rec.path, "name": rec.name}
        if score is not None:
            out["score"] = round(score, 6)
            out["distance"] = round(_distance(min(score, 1.0)), 6)
        out.update(segment_start_s=round(start, 4), tags=list(rec.tags), kind=kind,
                   **{"class": cached_class_of_path(rec.path, rec.root)})  # names' class or None
        if stage is not None:
            out["stage"] = stage  # which identification stage answered
        return out

    def file_cosine(self, vector: np.ndarray, file_id: int, *, model: str) -> float | None:
        """Best cosine of a query vector with one file's vectors (as :meth:`search` scores
        it), or None when the file has none for ``model`` or the vector is zero."""
        q = np.asarray(vector, np.float32).ravel()
        norm = float(np.linalg.norm(q))
        if norm == 0.0:
            return None
        rows = self._db(
            lambda: self.store.conn.execute(
                "SELECT vector FROM vectors WHERE model=? AND file_id=?", (model, file_id)
            ).fetchall()
        )
        vecs = [np.frombuffer(r[0], np.float32) for r in rows]
        vecs = [v for v in vecs if len(v) == len(q) and np.any(v)]
        if not vecs:
            return None
        m = np.stack(vecs)
        return float(np.max(m @ q / (np.linalg.norm(m, axis=1) * norm)))

    def fingerprints(self) -> fingerprint.FingerprintIndex:
        """The landmark index (loaded on first use)."""
        if self._fp is None:
            def load() -> fingerprint.FingerprintIndex:
                rows = self.store.conn.execute(
                    "SELECT hash, file_id, t FROM fingerprints"
                ).fetchall()
                arr = np.array(rows, np.int64).reshape(-1, 3)
                n_files = self.store.conn.execute(
                    "SELECT COUNT(*) FROM fingerprinted WHERE params=?", (fingerprint.PARAMS,)
                ).fetchone()[0]
                return fingerprint.FingerprintIndex(arr[:, 0], arr[:, 1], arr[:, 2], n_files)

            self._fp = self._db(load)
        return self._fp

    def _templates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All stored templates: file ids [n], uint8 templates [n, F, B], attack vectors."""
        if self._tpl is None:
            shape = (fingerprint.TEMPLATE_FRAMES, fingerprint.TEMPLATE_BANDS)

            def load() -> dict[int, bytes]:
                rows = self.store.conn.execute("SELECT file_id, data FROM templates")
                return {int(f): d for f, d in rows if len(d) == shape[0] * shape[1]}

            raw = self._db(load)
            ids = np.array(sorted(raw), np.int64)
            tpl = np.zeros((len(ids), *shape), np.uint8)
            for i, f in enumerate(ids.tolist()):
                tpl[i] = np.frombuffer(raw[f], np.uint8).reshape(shape)
            self._tpl = (ids, tpl, rerank.attack_vectors(tpl))
            self._row_of = {f: i for i, f in enumerate(ids.tolist())}
        return self._tpl

    def _template_rows(self) -> dict[int, int]:
        """File id -> its row in :meth:`_templates` (built once per open generation)."""
        self._templates()
        assert self._row_of is not None
        return self._row_of

    def identify(
        self,
        audio: np.ndarray,
        sr: int,
        *,
        similar: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Say which library file a piece of audio is: the identification stage.

        Candidates (cheap, wide): the best LANDMARK_CANDIDATES landmark matches,
        the embedding matches ``similar`` (``query_audio`` passes
        IDENTIFY_CANDIDATES) and the ATTACK_CANDIDATES nearest attack vectors
        (onset-aligned log-band patches, one matrix product). They are ranked
        by :mod:`emberd.library.rerank` (spectro-temporal comparisons of the
        query with each candidate's stored template, combined by a logistic rule
        fitted by bench/fit_identify.py on kits A), then :func:`emberd.library.waveform.explain`
        correlates the query's onset waveform with theirs (and explains a mix of
        two library sounds as such); it answers whenever a waveform correlates,
        else the template ranking does. A query that starts well inside a longer
        file (a live window over a loop) is answered by the landmarks alone when
        they clearly confirm one file: templates only cover a file's start.

        Producers pitch samples by resampling and reverse them. Unless the
        query's own waveform already correlates VARIANT_SKIP_RHO, its first
        VARIANT_MAX_S is scored as VARIANT_SEMITONES resamplings and, only when
        the query ends loud (:func:`ends_loud`: the last REVERSED_END_S of its
        sounding part, :func:`sounding_end`, peaks within REVERSED_END_DB of its
        peak, as a reversed one-shot's attack does), the end of its sound
        reversed: each variant's attack vector against every template (one
        matrix product). Up to two variants then run the whole pipeline: the one
        whose attack is nearest a file's, when nearer than the query's own
        (:meth:`best_variant`), and the *probed* one (:meth:`probed_variant`):
        each variant's waveform is correlated at its own speed with the snippets
        of its VARIANT_PROBE_FILES nearest attack vectors, and the best is tried
        when it beats the query's own answer's rho and the waveform stage's
        wave_min_rho. The strongest answer wins
        (:func:`strength`). When the query's own answer correlates below
        WIDE_BELOW_RHO (or no waveform does), the snippets of its next
        WIDE_CANDIDATES attack neighbours are correlated with it too
        (:meth:`_widen`): the best WIDE_ADD above the answer join the
        candidates, and the re-ranking and the waveform stage run a second time.

        Parameters
        ----------
        audio : float array [n] or [n, channels]
            The sound (a file, or the live daemon's last window).
        sr : int
            Its sample rate in Hz.
        similar : list of dict, optional
            Embedding matches for the same sound (from :meth:`search`).

        Returns
        -------
        list of dict
            Empty when there is no candidate or no sound (silence, DC, the
            noise floor); else the answer with its ``confidence`` (calibrated
            probability that it is right, :func:`emberd.library.rerank.confidence`),
            kind ``"exact"`` when that is at least rerank.EXACT_CONFIDENCE, else
            ``"similar"``; ``stage`` says which of ``"waveform"``,
            ``"template"``, ``"landmarks"`` answered. A landmark answer has
            ``landmarks`` (its time-consistent hash matches); a waveform answer
            ``rho`` (its correlation), ``gain_db`` (its level in the query) and,
            for a mix, ``mixed_with`` (the other file's path); an answer found
            in a variant has ``semitones`` (the query is the file played this
            many semitones higher by resampling) and/or ``reversed``. ``score`` and
            ``distance`` are present only when ``similar`` measured the file's
            embedding cosine; ``segment_start_s`` is where in the file the query
            starts (landmark alignment, 0 when unknown).
        """
        return self._identify(audio, sr, similar)[0]

    def _identify(
        self, audio: np.ndarray, sr: int, similar: list[dict[str, Any]] | None
    ) -> tuple[list[dict[str, Any]], dict[int, float]]:
        """:meth:`identify`'s answer and the re-ranker's probability of every candidate."""
        answers = self.answers(audio, sr, similar)
        if not answers:
            return [], {}  # silence is never a match
        match, probs, _feats = max(answers, key=lambda a: strength(a[0], a[2]))
        return ([match] if match else []), probs

    def answers(
        self, audio: np.ndarray, sr: int, similar: list[dict[str, Any]] | None = None
    ) -> list[tuple[dict[str, Any] | None, dict[int, float], dict[str, float]]]:
        """Every answer :meth:`identify` weighs: the query's own and, when tried, its
        variant's, each as ``(match or None, candidate probabilities, confidence features)``.

        ``bench/fit_identify.py`` fits the confidence on these; empty for no sound.
        """
        with one_blas_thread():
            return self._answers(audio, sr, similar)

    def _answers(
        self, audio: np.ndarray, sr: int, similar: list[dict[str, Any]] | None
    ) -> list[tuple[dict[str, Any] | None, dict[int, float], dict[str, float]]]:
        """:meth:`answers`, BLAS threads already limited."""
        ev = self.evidence(audio, sr, similar=similar)
        if ev is None:
            return []
        out = [self._answer(ev)]
        first = out[0][0]
        sure = first is not None and first.get("rho", 0.0) >= VARIANT_SKIP_RHO
        if not ev.inside_file and not sure:
            # Scored once, handed to both choices (no state kept between queries).
            scores = self._variant_scores(ev.audio)
            tried = [v for v in (self.best_variant(ev.audio, scores=scores),) if v is not None]
            own_rho = float(first.get("rho", 0.0)) if first is not None else 0.0
            # Tried when it beats the own answer's rho and the waveform stage's floor: below
            # that its rerun rarely answers by waveform, and a sound in no library (whose own
            # answer is weak) would pay a second pipeline for nothing (see VARIANT_PROBE_FILES).
            floor = max(own_rho, waveform.THRESHOLDS.wave_min_rho)
            probed = self.probed_variant(ev.audio, floor, scores=scores)
            if probed is not None and all(probed[:2] != v[:2] for v in tried):
                tried.append(probed)
            for semitones, backwards, y in tried:
                ev1 = self.evidence(y, ev.sr, similar=similar)
                if ev1 is not None:
                    ev1.variant = (semitones, backwards)
                    out.append(self._answer(ev1))
        return out

    def _variant_scores(self, audio: np.ndarray) -> VariantScores:
        """The query (at the fingerprint rate) and its speed/direction variants, each as
        ``(semitones, reversed, audio, attack cosines with every template)``, the query first.

        The reversal (of the last VARIANT_MAX_S of the sound, what follows its end left out:
        :func:`sounding_end`) is among them only when the query :func:`ends_loud`.
        """
        _ids, _tpl, attack = self._templates()
        fs = fingerprint.FP_SR
        head = audio[: int(VARIANT_MAX_S * fs)]
        tries: list[tuple[float, bool, np.ndarray]] = [(0.0, False, audio)]
        tries += [(float(s), False, _resampled(head, s)) for s in VARIANT_SEMITONES]
        if REVERSED_VARIANT and ends_loud(audio, fs):
            sound = audio[: sounding_end(audio, fs)]
            tries.append((0.0, True, sound[-int(VARIANT_MAX_S * fs) :][::-1].copy()))
        # The query's own attack from its first VARIANT_MAX_S, as its variants'.
        patches = [head if s == 0.0 and not b else y for s, b, y in tries]
        return [(s, b, y, attack @ rerank.QueryPatch(p, fs).attack_vector())
                for (s, b, y), p in zip(tries, patches, strict=True)]

    def best_variant(
        self, audio: np.ndarray, *, scores: VariantScores | None = None
    ) -> tuple[float, bool, np.ndarray] | None:
        """The speed/direction variant of a query (at the fingerprint rate) whose attack is
        nearest a library file's, when it is nearer than the query's own.

        Variants: the query resampled as played VARIANT_SEMITONES lower (undoing a
        pitch by resampling) and, when it :func:`ends_loud`, reversed. ``scores``: the
        query's :meth:`_variant_scores`, when the caller has them already. Returns
        ``(semitones, reversed, audio)`` or None.
        """
        _ids, _tpl, attack = self._templates()
        if not len(attack):
            return None
        scored = scores if scores is not None else self._variant_scores(audio)
        best = max(scored, key=lambda v: float(np.max(v[3])))  # the first of equals: the query
        if best[0] == 0.0 and not best[1]:
            return None
        return best[0], best[1], best[2]

    def probed_variant(
        self, audio: np.ndarray, floor_rho: float, *, scores: VariantScores | None = None
    ) -> tuple[float, bool, np.ndarray] | None:
        """The variant of a query (at the fingerprint rate) whose waveform correlates best
        with the snippet of one of its VARIANT_PROBE_FILES nearest attack vectors, when that
        correlation (at the variant's own speed, :func:`waveform.probe`) exceeds ``floor_rho``
        (the query's own answer's). ``scores``: the query's :meth:`_variant_scores`, when
        the caller has them already. Returns ``(semitones, reversed, audio)`` or None.
        """
        ids, _tpl, attack = self._templates()
        if not len(attack):
            return None
        scored = (scores if scores is not None else self._variant_scores(audio))[1:]
        near = [ids[top_indices(sc, VARIANT_PROBE_FILES)].tolist() for *_r, sc in scored]
        snips = self.snippet_loader(sorted({f for n in near for f in n}))
        best: tuple[float, float, bool, np.ndarray] | None = None
        for (semitones, backwards, y, _sc), files in zip(scored, near, strict=True):
            have = [f for f in files if f in snips]
            if not have:
                continue
            rho = float(np.max(waveform.probe(y, np.stack([snips[f].samples() for f in have]))))
            if best is None or rho > best[0]:
                best = (rho, semitones, backwards, y)
        if best is None or best[0] <= floor_rho:
            return None
        return best[1], best[2], best[3]

    def _answer(
        self, ev: Evidence
    ) -> tuple[dict[str, Any] | None, dict[int, float], dict[str, float]]:
        """The answer one :class:`Evidence` gives (with its confidence), the candidates'
        probabilities and the answer's confidence features."""
        files = self.files()
        variant = ev.variant != (0.0, False)

        def finish(match: dict[str, Any], feats: dict[str, float]) -> dict[str, Any]:
            conf = rerank.confidence(feats)
            match["confidence"] = round(conf, 4)
            match["kind"] = "exact" if conf >= rerank.EXACT_CONFIDENCE else "similar"
            if ev.variant[0]:
                match["semitones"] = ev.variant[0]
            if ev.variant[1]:
                match["reversed"] = True
            return match

        if ev.inside_file or not ev.candidates:
            if not ev.confirmed:
                return None, {}, {}
            best, count, offset = ev.landmarks[0]
            match = self._match(files[best], ev.cosine.get(best), offset, "exact", "landmarks")
            match["landmarks"] = int(count)
            feats = rerank.answer_features("landmarks", landmarks=int(count), variant=variant)
            return finish(match, feats), {}, feats
        prob = rerank.probabilities(rerank.feature_matrix(ev.features))
        wave = waveform.explain(
            ev.audio, ev.sr, ev.candidates, prob, self.snippet_loader, self.residual_neighbours
        )
        if not variant and (wave is None or wave.rho < WIDE_BELOW_RHO) and self._widen(
                ev, waveform.THRESHOLDS.wave_min_rho if wave is None else wave.rho):
            prob = rerank.probabilities(rerank.feature_matrix(ev.features))
            wave = waveform.explain(ev.audio, ev.sr, ev.candidates, prob, self.snippet_loader,
                                    self.residual_neighbours)
        probs = dict(zip(ev.candidates, prob.tolist(), strict=True))

        def runner_up(f: int) -> float:
            return max((p for c, p in probs.items() if c != f), default=0.0)

        if wave is not None and wave.file_id in files:
            if wave.mixed_with is None:
                wave = self._sibling(ev, wave)
            best = wave.file_id
            match = self._match(files[best], ev.cosine.get(best), 0.0, "exact", "waveform")
            # The answer's own correlation (a sibling picked over the best-correlated file
            # correlates a little less; the confidence weighs the best, the evidence's).
            match["rho"] = round(next((t.rho for t in wave.ties if t.file_id == best),
                                      wave.rho), 4)
            match["gain_db"] = round(wave.gain_db, 2)
            if wave.mixed_with is not None and wave.mixed_with in files:
                match["mixed_with"] = files[wave.mixed_with].path
            feats = rerank.answer_features(
                "waveform", prob=probs.get(best, 0.0), runner_up=runner_up(best), rho=wave.rho,
                runner_up_rho=wave.runner_up_rho, mixed=wave.mixed_with is not None,
                variant=variant)
            return finish(match, feats), probs, feats
        i = int(np.argmax(prob))
        best = ev.candidates[i]
        start = next((off for f, _c, off in ev.landmarks if f == best), 0.0)
        match = self._match(files[best], ev.cosine.get(best), start, "similar", "template")
        feats = rerank.answer_features("template", prob=float(prob[i]),
                                       runner_up=runner_up(best), variant=variant)
        return finish(match, feats), probs, feats

    def sibling_ties(self, wave: waveform.Explanation) -> list[waveform.Tie]:
        """The answer's ties (itself first) that are sibling recordings of it: files in
        its folder correlating within SIBLING_RHO of it (at most SIBLING_FILES)."""
        files = self.files()
        if not SIBLING_RHO or wave.file_id not in files:
            return []
        folder = os.path.dirname(files[wave.file_id].path)
        return [t for t in wave.ties if t.file_id in files and t.rho >= wave.rho - SIBLING_RHO
                and os.path.dirname(files[t.file_id].path) == folder][:SIBLING_FILES]

    def sound_rhos(self, ev: Evidence, ties: Sequence[waveform.Tie]
                   ) -> list[tuple[float, float]] | None:
        """:func:`waveform.sound_rho` of each tie, read from its file; None when a file is
        gone or changed since it was indexed (its snippet would no longer describe it)."""
        files = self.files()
        out = []
        for t in ties:
            rec = files[t.file_id]
            try:
                st = os.stat(rec.path)
                if st.st_size != rec.size or st.st_mtime_ns != rec.mtime_ns:
                    return None
                y, info = load_audio(rec.path, sr=None)
            except (OSError, EmberdError):
                return None
            out.append(waveform.sound_rho(ev.audio, t, y, info.sr))
        return out

    def _sibling(self, ev: Evidence, wave: waveform.Explanation) -> waveform.Explanation:
        """The waveform answer, or the sibling recording of it (:meth:`sibling_ties`) whose
        whole sound matches the query best, when by at least SIBLING_GAIN. The evidence's rho
        and margin are kept for the confidence (they describe the query's correlation, not
        the pick); the match reports the pick's own rho."""
        ties = self.sibling_ties(wave)
        if len(ties) < 2:
            return wave
        rhos = self.sound_rhos(ev, ties)
        if rhos is None:
            return wave
        score = [r[SIBLING_MEASURE] for r in rhos]
        j = int(np.argmax(score))
        if j == 0 or score[j] < score[0] + SIBLING_GAIN:
            return wave
        pick = ties[j]
        return dataclasses.replace(wave, file_id=pick.file_id, gain_db=pick.gain_db)

    def evidence(
        self, audio: np.ndarray, sr: int, *, similar: list[dict[str, Any]] | None = None
    ) -> Evidence | None:
        """The cheap stages of :meth:`identify`: landmarks, candidates and re-ranking features.

        ``bench/fit_identify.py`` fits the re-ranker on exactly these. None for no sound.
        """
        if no_sound_reason(audio, floor_dbfs=QUERY_FLOOR_DBFS) is not None:
            return None
        # Every stage below compares at the fingerprint rate: resample the query once.
        audio, sr = mono_at(audio, sr, fingerprint.FP_SR), fingerprint.FP_SR
        lm = self.fingerprints().match(audio, sr, top=LANDMARK_CANDIDATES)
        counts = {fid: count for fid, count, _ in lm}
        files = self.files()
        confirmed = fingerprint.is_identified(lm) and lm[0][0] in files
        by_path = {r.path: r.id for r in files.values()}
        cosine = {
            by_path[m["path"]]: float(m["score"])
            for m in (similar or [])
            if m["path"] in by_path and "score" in m
        }
        ev = Evidence(audio, sr, lm, confirmed, confirmed and lm[0][2] > INSIDE_FILE_S, cosine)
        if ev.inside_file:
            return ev
        ids, _tpl, attack = self._templates()
        row_of = self._template_rows()
        ev.patch = rerank.QueryPatch(audio, sr)
        tv = attack @ ev.patch.attack_vector() if len(ids) else np.zeros(0, np.float32)
        ev.attack_scores, ev.counts = tv, counts
        nearest = ids[top_indices(tv, ATTACK_CANDIDATES)].tolist()
        ev.candidates = [
            f for f in dict.fromkeys([*counts, *cosine, *nearest]) if f in files and f in row_of
        ]
        if ev.candidates:
            self._featurize(ev)
        return ev

    def _featurize(self, ev: Evidence) -> None:
        """The re-ranking features of ``ev.candidates`` (all in the stored templates)."""
        _ids, tpl, _attack = self._templates()
        assert ev.patch is not None and ev.attack_scores is not None
        row_of = self._template_rows()
        rows = np.array([row_of[f] for f in ev.candidates])
        feats = rerank.features(ev.patch, tpl[rows])
        cosine = ev.cosine
        floor_cos = min(cosine.values()) if cosine else 0.0
        feats["cos"] = np.array([cosine.get(f, floor_cos) for f in ev.candidates])
        feats["llm"] = np.log1p([ev.counts.get(f, 0) for f in ev.candidates])
        feats["tv"] = ev.attack_scores[rows]
        feats["cur"] = fingerprint.template_scores(fingerprint.template(ev.audio, ev.sr),
                                                   tpl[rows])
        ev.features = feats

    def _widen(self, ev: Evidence, floor_rho: float) -> bool:
        """Add to ``ev.candidates`` the best WIDE_ADD of the query's next WIDE_CANDIDATES
        attack neighbours whose snippets correlate with it above ``floor_rho`` (at its own
        speed, :func:`waveform.probe`), with their features. True when any was added."""
        ids, _tpl, _attack = self._templates()
        if ev.attack_scores is None or not ev.candidates:
            return False
        have, files = set(ev.candidates), self.files()
        # The best WIDE_CANDIDATES by attack outside the candidates: among the best
        # WIDE_CANDIDATES + len(have) (more only when some are not in the file table).
        want = WIDE_CANDIDATES + len(have)
        while True:
            order = [f for f in ids[top_indices(ev.attack_scores, want)].tolist()
                     if f not in have and f in files][:WIDE_CANDIDATES]
            if len(order) >= WIDE_CANDIDATES or want >= len(ids):
                break
            want = min(len(ids), 2 * want)
        snips = self.snippet_loader(order)
        order = [f for f in order if f in snips]
        if not order:
            return False
        rho = waveform.probe(ev.audio, np.stack([snips[f].samples() for f in order]))
        best = np.argsort(-rho)[:WIDE_ADD]
        add = [order[j] for j in best.tolist() if rho[j] > floor_rho]
        if not add:
            return False
        ev.candidates = [*ev.candidates, *add]
        self._featurize(ev)
        return True

    def snippet_loader(self, file_ids: Sequence[int]) -> dict[int, waveform.Snippet]:
        """Stored onset waveforms of ``file_ids`` (for :func:`waveform.explain`)."""
        out: dict[int, waveform.Snippet] = self._db(self.store.snippets, file_ids)
        return out

    def residual_neighbours(self, residual: np.ndarray, sr: int) -> list[int]:
        """The RESIDUAL_CANDIDATES files whose attack is nearest a mix's residual."""
        ids, _tpl, attack = self._templates()
        patch = rerank.QueryPatch(residual, sr)
        near = top_indices(attack @ patch.attack_vector(), RESIDUAL_CANDIDATES)
        files = self.files()
        return [f for f in ids[near].tolist() if f in files]

    def query_audio(
        self, audio: np.ndarray, sr: int, k: int = 10, *, model: str
    ) -> list[dict[str, Any]]:
        """Both stages for one sound: the identified file first, then similar ones.

        Parameters
        ----------
        audio : float array [n]
            Mono audio.
        sr : int
            Its sample rate in Hz.
        k : int
            Total matches.
        model : str
            Embedding model for the similarity stage.
        """
        if no_sound_reason(audio, floor_dbfs=QUERY_FLOOR_DBFS) is not None:
            return []  # silence is never a match (the CLI prints the reason)
        vec = query_vector(audio, sr, model)
        similar = self.search(vec[None, :], max(k, IDENTIFY_CANDIDATES) + 1, model=model)[0]
        ident, probs = self._identify(audio, sr, similar)
        for m in ident:
            if "score" not in m:  # outside the embedding neighbours: measure its cosine
                fid = next((f for f, r in self.files().items() if r.path == m["path"]), None)
                cos = None if fid is None else self.file_cosine(vec, fid, model=model)
                if cos is not None:
                    m["score"], m["distance"] = round(cos, 6), round(_distance(min(cos, 1.0)), 6)
        return ranked(ident, similar, probs, self.files(), k)

    def info(self, *, recall_sample: int = 200, k: int = 10, seed: int = 0) -> dict[str, Any]:
        """Counts, models and, per model, Annoy's recall@k against exact search.

        Recall is measured with queries that are *not* library items (an item
        finds itself, which flatters): each is a random blend of two library
        vectors (weights 0.3..0.7), a point between sounds the library holds.

        Parameters
        ----------
        recall_sample : int
            Queries for the recall measurement.
        k : int
            Neighbours compared.
        seed : int
            Sample selection seed.
        """
        out: dict[str, Any] = {"path": str(self.path), **self._db(self.store.counts), "models": {}}
        for name, (version, dim) in self.models().items():
            ids, _f, _s, matrix = self._db(self.store.vectors, name)
            entry: dict[str, Any] = {
                "version": version,
                "dim": dim,
                "vectors": len(ids),
                "files": len(self._db(self.store.embedded_file_ids, name)),
            }
            try:
                ann = AnnoySearch.open(self.path / "index", name, dim=dim)
            except EmberdError as exc:
                ann, entry["annoy"] = None, f"unusable: {exc}"
            if ann is None:
                entry.setdefault("annoy", "not built")
            elif len(ids):
                rng = np.random.default_rng(seed)
                pick = rng.choice(len(ids), size=min(recall_sample, len(ids)), replace=False)
                unit = normalize(matrix)
                w = rng.uniform(0.3, 0.7, (len(pick), 1)).astype(np.float32)
                other = unit[rng.integers(0, len(ids), len(pick))]
                queries = normalize(w * unit[pick] + (1 - w) * other)
                exact_ids, _ = ExactSearch(ids, matrix).search(queries, k)
                ann_ids, _ = ann.search(queries, k)
                hits = [
                    len(set(a.tolist()) & set(e.tolist())) / max(len(e), 1)
                    for a, e in zip(ann_ids, exact_ids, strict=True)
                ]
                entry["annoy"] = {
                    "items": ann.manifest.items,
                    "trees": ann.manifest.trees,
                    f"recall@{k}": round(float(np.mean(hits)), 4),
                    "sample": len(pick),
                    "queries": "blends of two library vectors (not library items)",
                    "stale": ann.manifest.generation != self._db(self.store.generation),
                }
                ann.unload()
            out["models"][name] = entry
        return out


def combine(
    exact: list[dict[str, Any]], similar: list[dict[str, Any]], k: int
) -> list[dict[str, Any]]:
    """The identified file (if any) first, then the similar ones without it; k in all."""
    taken = {m["path"] for m in exact}
    return (exact + [m for m in similar if m["path"] not in taken])[:k]


def ranked(
    ident: list[dict[str, Any]], similar: list[dict[str, Any]], probs: dict[int, float],
    files: dict[int, FileRecord], k: int,
) -> list[dict[str, Any]]:
    """:func:`combine`, every match with a ``confidence``, ordered by it.

    The identified file keeps its own confidence; each other match shares what
    is left (1 - that) in proportion to the re-ranker's probability of it
    (0 when it was no candidate), never above the identified file's: the
    answer stays first, the rest follow the re-ranker rather than the embedding.
    """
    top = float(ident[0]["confidence"]) if ident else 1.0
    by_path = {r.path: f for f, r in files.items()}
    rest = [m for m in similar if not ident or m["path"] != ident[0]["path"]]
    p = [probs.get(by_path.get(m["path"], -1), 0.0) for m in rest]
    total = max(1.0, sum(probs.values()) - (probs.get(by_path.get(ident[0]["path"], -1), 0.0)
                                            if ident else 0.0))
    out = [dict(m) for m in ident]
    for m, pm in zip(rest, p, strict=True):
        m = dict(m)
        m["confidence"] = round(min(top, (1.0 - top) * pm / total) if ident else 0.0, 4)
        out.append(m)
    out.sort(key=lambda m: -m["confidence"])  # stable: ties keep the embedding order
    return out[:k]


def strength(
    match: dict[str, Any] | None, feats: dict[str, float], *, prob_weight: float | None = None
) -> float:
    """How :meth:`Library.identify` weighs one answer against another (the query's own and
    its variant's): a waveform answer by its correlation plus ``prob_weight`` (default
    WAVE_PROB_WEIGHT) times the re-ranker's probability of its file, a template answer by
    that probability's lead over the runner-up candidate's times TEMPLATE_RHO_EQUIVALENT, a
    landmark answer above both.

    The probability settles near ties of correlation: the best of several resamplings
    of a short click correlates a little better with *some* file by chance than the query
    itself does with its source, which the templates also rank first.

    A template answer counts only by its lead: a pitch-preserving shift of a cymbal has
    every crash and ride of the library near 0.9 by the templates of its own (shifted)
    spectrum (lead 0.01-0.1), while its resampled variant ranks the source alone
    (lead 0.5-0.6) or its waveform correlates (kits A, keep+2: 4 of the 9 misses, all
    four right with the lead, no other pick changed wrongly; ``bench/identify.py --half A``).

    A fixed rule, not the fitted confidence, so that the confidence can be fitted on
    the answers this rule gives.
    """
    if match is None:
        return -1.0
    prob = 1.0 / (1.0 + math.exp(-feats["logit"])) if "logit" in feats else 0.0
    if match["stage"] == "waveform":
        w = WAVE_PROB_WEIGHT if prob_weight is None else prob_weight
        return float(match["rho"]) + w * prob
    if match["stage"] == "landmarks":
        return 2.0
    # The runner-up's logit is the answer's less its margin (rerank.answer_features).
    lead = prob - (1.0 / (1.0 + math.exp(-(feats["logit"] - feats["tmpl_margin"])))
                   if "logit" in feats and "tmpl_margin" in feats else 0.0)
    return TEMPLATE_RHO_EQUIVALENT * lead


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, highest first, equal scores in index order:
    ``np.argsort(-scores, kind="stable")[:k]`` without sorting every score (a partition,
    then a sort of the k, and of any ties with the k-th).

    Parameters
    ----------
    scores : float array [n]
        One score per item (NaN ranks last, as in argsort).
    k : int
        How many.

    Returns
    -------
    int array [min(k, n)]
    """
    x = np.asarray(scores)
    n = len(x)
    if k <= 0:
        return np.zeros(0, np.intp)
    if k >= n:
        return np.argsort(-x, kind="stable")
    neg = -x
    kth = neg[np.argpartition(neg, k - 1)[k - 1]]  # the k-th highest score, negated
    if not np.isfinite(kth):  # NaN or infinite scores at the cut: rank them all
        return np.argsort(neg, kind="stable")[:k]
    pool = np.flatnonzero(neg <= kth)  # the k best and every tie with the k-th, index order
    return pool[np.argsort(neg[pool], kind="stable")[:k]]


def sounding_end(y: np.ndarray, sr: int) -> int:
    """Where the sound in ``y`` ends: the number of samples up to the end of its last
    END_FRAME_S frame (frames counted from the end) above the noise floor.

    The floor is the END_NOISE_PERCENTILE-th percentile of the frames' RMS plus
    END_NOISE_MARGIN_DB, kept between END_FLOOR_MIN_DB and END_FLOOR_MAX_DB under the loudest
    frame (each frame's mean removed). 0 for silence; ``len(y)`` when the last frame sounds.

    Parameters
    ----------
    y : float array [n]
        Mono audio.
    sr : int
        Its sample rate in Hz.

    Returns
    -------
    int
        Samples of ``y`` up to the end of its sound.
    """
    x = np.asarray(y, np.float64)
    if not len(x):
        return 0
    hop = max(1, int(END_FRAME_S * sr))
    n_frames = -(-len(x) // hop)
    back = np.zeros(n_frames * hop)
    back[: len(x)] = x[::-1]  # frame 0 ends at the last sample
    frames = back.reshape(n_frames, hop)
    # Each frame's own mean removed: a DC offset (of the file, not of the silence appended
    # to it) is no sound.
    rms = np.sqrt(np.mean((frames - frames.mean(axis=1, keepdims=True)) ** 2, axis=1))
    loudest = float(rms.max())
    if not loudest > 0:
        return 0
    floor = float(np.percentile(rms, END_NOISE_PERCENTILE)) * 10 ** (END_NOISE_MARGIN_DB / 20)
    floor = min(max(floor, loudest * 10 ** (-END_FLOOR_MIN_DB / 20)),
                loudest * 10 ** (-END_FLOOR_MAX_DB / 20))
    last = int(np.argmax(rms > floor))  # frames counted from the end
    return len(x) - last * hop


def ends_loud(y: np.ndarray, sr: int) -> bool:
    """Whether ``y``'s sound ends loud, as a reversed one-shot (its attack last) does.

    The end is the last REVERSED_END_S (at most REVERSED_END_FRACTION) of the sounding part
    (:func:`sounding_end`: what follows the sound is left out), and it must peak within
    REVERSED_END_DB of the whole query's peak.

    Parameters
    ----------
    y : float array [n]
        Mono audio.
    sr : int
        Its sample rate in Hz.

    Returns
    -------
    bool
        True when the reversal is worth trying; False for silence.
    """
    x = np.asarray(y, np.float32)
    a = np.abs(x[: sounding_end(x, sr)])
    if not len(a) or not a.max() > 0:
        return False
    n_end = max(1, min(int(REVERSED_END_S * sr), int(REVERSED_END_FRACTION * len(a))))
    return bool(a[-n_end:].max() >= a.max() * 10 ** (-REVERSED_END_DB / 20))


def _resampled(y: np.ndarray, semitones: float) -> np.ndarray:
    """``y`` (at the fingerprint rate) as if played ``semitones`` lower by resampling."""
    import soxr

    fs = fingerprint.FP_SR
    return np.asarray(soxr.resample(y, fs, fs * 2 ** (semitones / 12)), np.float32)


def query_vector(audio: np.ndarray, sr: int, model: str) -> np.ndarray:
    """A query sound's pooled embedding, computed exactly as the indexer does for files."""
    from emberd.models.embedding import pool

    emb, weights = _embed_query(audio, sr, model)
    return pool(emb, "energy", weights)


_ENCODERS: dict[str, Any] = {}


def encoder_for(model: str) -> Any:
    """A cached :class:`emberd.models.runtime.Encoder` for ``model`` (query side)."""
    if model not in _ENCODERS:
        from emberd.models.plugin import load_encoder
        from emberd.models.registry import resolve

        _ENCODERS[model] = load_encoder(resolve(model), device="auto", threads=2)
    return _ENCODERS[model]


def _embed_query(audio: np.ndarray, sr: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Window embeddings and window energies of a query sound, as the indexer computes them."""
    from emberd.dsp.frontend import melspectrogram
    from emberd.models.embedding import embed_windows, frame_windows

    enc = encoder_for(model)
    cfg = enc.manifest.frontend()
    y = mono_at(audio, sr, cfg.sr)
    if len(y) < cfg.n_fft:
        y = np.pad(y, (0, cfg.n_fft - len(y)))
    mel = melspectrogram(y, cfg)
    m = enc.manifest
    windows, starts = frame_windows(
        mel, window_frames=m.window_frames, hop_frames=m.hop_frames, tail="pad"
    )
    emb = embed_windows(windows, enc)
    energy = frame_energy(y, cfg.hop_length, mel.shape[0])
    return emb, window_weights(energy, starts, m.window_frames)
