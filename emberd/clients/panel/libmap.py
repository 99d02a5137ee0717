"""The panel's 2-D map of a library: PCA of the per-file embeddings, cached.

The map is computed once per (library, model, library generation) and cached
atomically as JSON in the user cache folder; the library's generation counter
changes whenever its vectors change, which invalidates the cache.  Live
embeddings are projected with the same mean and axes, so a channel's cursor
lands near the samples it sounds like.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emberd.atomic import atomic_write_text
from emberd.errors import EmberdError
from emberd.library.classes import class_of_path
from emberd.library.classifier import ClassHead, head_path, load_file_classes
from emberd.paths import cache_dir

MAP_FORMAT_VERSION = 3  # 3: points carry the instrument class and duration
MIN_NORM = 1e-12  # vectors shorter than this have no direction


@dataclass
class LibraryMap:
    """PCA projection of a library plus its plotted points.

    Attributes
    ----------
    model : str
        Encoder whose vectors were mapped.
    mean : numpy.ndarray
        ``[dim]`` mean of the unit-normalised file vectors.
    axes : numpy.ndarray
        ``[2, dim]`` principal axes.
    scale : numpy.ndarray
        ``[2]``: divides projected coordinates so the library fills [-1, 1] on both axes.
    points : list of dict
        ``{"id", "name", "tags", "x", "y"}`` per file, plus ``cls`` (instrument
        class or None), ``cls_src`` (``"name"``: its file or folder names say it,
        ``"model"``: the library's class head guessed it) and ``dur`` (seconds).
    paths : dict
        ``{file id: absolute path}`` -- the only files the panel will serve.
    """

    model: str
    mean: np.ndarray
    axes: np.ndarray
    scale: np.ndarray
    points: list[dict[str, Any]]
    paths: dict[int, str]
    library: str = ""  # the library folder (set by load_library_map; "find similar")

    def project(self, vector: np.ndarray) -> tuple[float, float]:
        """Map one embedding to 2-D map coordinates (same normalisation as the library)."""
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        if v.shape[0] != self.mean.shape[0]:
            raise EmberdError(
                f"panel map: embedding has {v.shape[0]} dims, the map's model "
                f"{self.model!r} has {self.mean.shape[0]}"
            )
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm < MIN_NORM:
            return 0.0, 0.0
        xy = self.axes @ (v / norm - self.mean) / self.scale
        return float(xy[0]), float(xy[1])

    def similar(self, file_id: int, k: int = 8) -> list[dict[str, Any]]:
        """The ``k`` library sounds nearest to library file ``file_id`` (itself left out).

        Returns ``[{"id", "name", "score"}]``, best first; empty when the id is not
        on the map or the library is gone.
        """
        from emberd.library import Library

        if file_id not in self.paths or not self.library:
            return []
        try:
            lib = Library.open(self.library)
        except EmberdError:
            return []
        try:
            row = lib.store.conn.execute(
                "SELECT vector FROM vectors WHERE file_id=? AND model=? AND is_file=1",
                (int(file_id), self.model),
            ).fetchone()
            if row is None:
                return []
            vec = np.frombuffer(row[0], np.float32)[None, :]
            found = lib.search(vec, k + 1, model=self.model)[0]
        finally:
            lib.close()
        ids = {p: i for i, p in self.paths.items()}
        out = []
        for m in found:
            fid = ids.get(str(m.get("path", "")))
            if fid is not None and fid != file_id:
                out.append({"id": fid, "name": m.get("name", ""),
                            "score": round(float(m.get("score", 0.0)), 4)})  # fmt: skip
        return out[:k]

    def public_json(self) -> dict[str, Any]:
        """What the browser gets: the points, no paths."""
        return {"model": self.model, "points": self.points}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MAP_FORMAT_VERSION,
            "model": self.model,
            "mean": self.mean.tolist(),
            "axes": self.axes.tolist(),
            "scale": self.scale.tolist(),
            "points": self.points,
            "paths": {str(k): v for k, v in self.paths.items()},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LibraryMap:
        return cls(
            model=str(obj["model"]),
            mean=np.asarray(obj["mean"], dtype=np.float64),
            axes=np.asarray(obj["axes"], dtype=np.float64),
            scale=np.asarray(obj["scale"], dtype=np.float64).reshape(2),
            points=list(obj["points"]),
            paths={int(k): str(v) for k, v in obj["paths"].items()},
        )


def fit_map(
    model: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    names: list[str],
    tags: list[list[str]],
    paths: list[str],
) -> LibraryMap:
    """PCA of unit-normalised ``vectors [n, dim]`` to two axes.

    Works for any ``n >= 1`` (with one file the map is a single point at the
    centre); axes missing because of too few files are zero.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise EmberdError(f"panel map: library has no vectors for model {model!r}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, MIN_NORM)
    mean = x.mean(axis=0)
    centred = x - mean
    # SVD of the centred data: rows of vt are the principal axes, largest first.
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = np.zeros((2, x.shape[1]))
    axes[: min(2, vt.shape[0])] = vt[:2]
    xy = centred @ axes.T
    # Each axis scaled on its own: the second component is often much smaller and
    # would otherwise squash the map into a line.
    scale = np.abs(xy).max(axis=0)
    scale = np.where(scale > MIN_NORM, scale, 1.0)
    xy /= scale
    points = [
        {"id": int(i), "name": n, "tags": list(t), "x": round(float(p[0]), 5),
         "y": round(float(p[1]), 5)}
        for i, n, t, p in zip(ids, names, tags, xy, strict=True)
    ]
    return LibraryMap(model, mean, axes, scale, points,
                      {int(i): str(p) for i, p in zip(ids, paths, strict=True)})


def _cache_file(library: Path, model: str) -> Path:
    key = hashlib.sha1(str(library.absolute()).encode("utf-8")).hexdigest()[:16]
    folder = cache_dir() / "panel-maps"
    folder.mkdir(parents=True, exist_ok=True)
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return folder / f"{key}-{safe_model}.json"


def load_library_map(library: str | Path, model: str | None = None) -> tuple[LibraryMap, bool]:
    """Load (from cache) or compute the map of ``library`` for ``model``.

    Parameters
    ----------
    library : path-like
        An emberd library folder (built by ``emberd index``).
    model : str, optional
        Encoder name; default the library's only model (an error if several).

    Returns
    -------
    (LibraryMap, bool)
        The map and whether it came from the cache.
    """
    from emberd.library import Library

    path = Path(library).expanduser()
    lib = Library.open(path)
    store = lib.store
    try:
        models = lib.models()
        if model is None:
            if len(models) != 1:
                raise EmberdError(
                    f"{path}: library has models {sorted(models) or 'none'}; pick one with --model"
                )
            model = next(iter(models))
        lib.require_model(model)
        generation = store.generation()
        cache = _cache_file(path, model)
        try:
            cached = json.loads(cache.read_text("utf-8"))
            fresh = cached.get("generation") == generation
            if cached.get("format") == MAP_FORMAT_VERSION and fresh:
                cached_map = LibraryMap.from_json(cached)
                cached_map.library = str(path)
                return cached_map, True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or unreadable cache: recompute
        # Only the pooled per-file vectors (is_file = 1), not the segment vectors;
        # the Library API has no accessor for them yet.
        rows = store.conn.execute(
            "SELECT file_id, vector FROM vectors WHERE model=? AND is_file=1 ORDER BY file_id",
            (model,),
        ).fetchall()
        if not rows:
            raise EmberdError(f"{path}: library has no file vectors for model {model!r}")
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), -1)
        records = lib.files()
        keep = [i for i, fid in enumerate(ids) if int(fid) in records]
        recs = [records[int(ids[i])] for i in keep]
        lib_map = fit_map(model, ids[keep], vectors[keep], [r.name for r in recs],
                          [list(r.tags) for r in recs], [r.path for r in recs])
        add_classes(lib_map.points, recs, vectors[keep], head_file=head_path(path, model),
                    file_classes=load_file_classes(path, model))  # fmt: skip
    finally:
        lib.close()
    atomic_write_text(cache, json.dumps({**lib_map.to_json(), "generation": generation}))
    lib_map.library = str(path)
    return lib_map, False


def add_classes(
    points: list[dict[str, Any]], records: list[Any], vectors: np.ndarray, *, head_file: Path,
    file_classes: dict[int, tuple[str, float]] | None = None,
) -> None:  # fmt: skip
    """Give each map point its instrument class: from its names, else the library's
    per-file class (:func:`~emberd.library.classifier.load_file_classes`), else the head."""
    head = ClassHead.load(head_file)
    guesses = head.predict(vectors) if head is not None and len(vectors) else None
    for k, (point, rec) in enumerate(zip(points, records, strict=True)):
        named = class_of_path(rec.path, rec.root)
        guess = guesses[k] if guesses is not None else (None, 0.0)
        if file_classes and int(rec.id) in file_classes:
            guess = file_classes[int(rec.id)]
        point["cls"] = named or guess[0]
        point["cls_src"] = "name" if named else ("model" if guess[0] else None)
        point["dur"] = round(float(rec.duration_s), 3)
