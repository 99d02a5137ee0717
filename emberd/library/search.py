"""Nearest-neighbour search over unit vectors: exact (numpy) and Annoy (angular).

Both back ends answer ``search(queries [n, dim], k) -> (ids [n, k], scores [n, k])``
with cosine similarity as the score (best first); missing results are id -1.

Annoy index files are written to a temporary name and renamed, and described by
a JSON manifest (dim, metric, item count, trees, sha256, file size, model) that
is checked *before* ``AnnoyIndex.load``: Annoy maps the file blindly and can
segfault on a truncated or foreign file.  The manifest is replaced last, so a
reader sees either the old index or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from emberd.atomic import atomic_write_text, fsync_dir
from emberd.errors import EmberdError

MANIFEST_FORMAT = "emberd-annoy"
MANIFEST_VERSION = 1
METRIC: Literal["angular"] = "angular"
DEFAULT_TREES = 32  # recall@10 >= 0.95 at 1e5..1e6 items with SEARCH_K_PER_RESULT (bench/knn.py)
SEARCH_K_PER_RESULT = 100  # search_k per result; 1M x 512: recall@10 0.998 (bench/knn.py)
RERANK_FACTOR = 4  # the candidate pool is k x this x SEARCH_K_PER_RESULT leaf items
HASH_CHUNK_BYTES = 1 << 22  # 4 MiB reads while hashing index files


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the k largest scores per row, best first."""
    n_items = scores.shape[1]
    k_eff = min(k, n_items)
    if k_eff == 0:
        return np.zeros((scores.shape[0], 0), np.int64), np.zeros((scores.shape[0], 0), np.float32)
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


class ExactSearch:
    """Brute-force cosine search (one matrix product).

    Parameters
    ----------
    ids : int array [n]
        Item ids returned by :meth:`search`.
    vectors : float array [n, dim]
        Item vectors (normalised here).
    """

    kind = "exact"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.matrix = normalize(vectors)
        self.dim = self.matrix.shape[1] if self.matrix.ndim == 2 else 0

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(ids [n, k'], scores [n, k'])`` with ``k' = min(k, items)``, best first."""
        q = normalize(np.atleast_2d(queries))
        scores = q @ self.matrix.T
        cols, vals = _topk(scores, k)
        return self.ids[cols], vals


@dataclass(frozen=True)
class AnnoyManifest:
    """What an Annoy index file must be; checked before the file is mapped."""

    format: str
    version: int
    file: str
    model: str
    model_version: str
    dim: int
    metric: str
    items: int
    trees: int
    sha256: str
    file_size: int
    generation: int


def manifest_path(index_dir: Path, model: str) -> Path:
    """Where the manifest of ``model``'s Annoy index lives."""
    return index_dir / f"{model}.json"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(index_dir: Path, model: str) -> AnnoyManifest | None:
    """The manifest of ``model``'s index, None when there is none.

    Raises
    ------
    EmberdError
        If the manifest exists but cannot be parsed.
    """
    path = manifest_path(index_dir, model)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
        manifest = AnnoyManifest(**data)
    except (ValueError, TypeError, OSError) as exc:
        raise EmberdError(f"{path}: unreadable index manifest ({exc})") from None
    for name, kind in _MANIFEST_TYPES.items():
        value = getattr(manifest, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EmberdError(f"{path}: index manifest field {name} has the wrong type")
    return manifest


_MANIFEST_TYPES: dict[str, type] = {
    "format": str,
    "version": int,
    "file": str,
    "model": str,
    "model_version": str,
    "dim": int,
    "metric": str,
    "items": int,
    "trees": int,
    "sha256": str,
    "file_size": int,
    "generation": int,
}


def validate(
    index_dir: Path, manifest: AnnoyManifest, *, dim: int, check_hash: bool = True
) -> Path:
    """Check an index file against its manifest; return its path.

    Raises
    ------
    EmberdError
        On a format/metric/dim mismatch, a missing, truncated or altered file.
    """
    path = index_dir / manifest.file
    where = f"{path}"
    if manifest.format != MANIFEST_FORMAT or manifest.version > MANIFEST_VERSION:
        raise EmberdError(f"{where}: unknown index format {manifest.format} v{manifest.version}")
    if manifest.metric != METRIC:
        raise EmberdError(f"{where}: index metric is {manifest.metric}, expected {METRIC}")
    if manifest.dim != dim:
        raise EmberdError(f"{where}: index has dim {manifest.dim}, the model gives {dim}")
    if os.sep in manifest.file or manifest.file.startswith("."):
        raise EmberdError(f"{where}: bad index file name in manifest")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise EmberdError(f"{where}: index file missing (run 'emberd index' again)") from None
    if size != manifest.file_size:
        raise EmberdError(
            f"{where}: index file is {size} bytes, manifest says {manifest.file_size} "
            "(truncated or replaced); run 'emberd index' again"
        )
    if check_hash and sha256_file(path) != manifest.sha256:
        raise EmberdError(f"{where}: index file checksum mismatch; run 'emberd index' again")
    return path


class AnnoySearch:
    """Approximate cosine search with Annoy, re-ranking candidates exactly.

    Use :meth:`open` to load a validated index.
    """

    kind = "annoy"

    def __init__(self, index: Any, manifest: AnnoyManifest, search_k_per_result: int) -> None:
        self.index = index
        self.manifest = manifest
        self.dim = manifest.dim
        self.search_k_per_result = search_k_per_result

    def __len__(self) -> int:
        return self.manifest.items

    @classmethod
    def open(
        cls,
        index_dir: Path,
        model: str,
        *,
        dim: int,
        check_hash: bool = True,
        search_k_per_result: int = SEARCH_K_PER_RESULT,
    ) -> AnnoySearch | None:
        """Load ``model``'s index after validating it; None when none was built.

        Raises
        ------
        EmberdError
            If the manifest or file does not match (nothing is mapped then).
        """
        manifest = read_manifest(index_dir, model)
        if manifest is None:
            return None
        path = validate(index_dir, manifest, dim=dim, check_hash=check_hash)
        from annoy import AnnoyIndex

        index = AnnoyIndex(manifest.dim, METRIC)
        if not index.load(str(path)):  # mmap, shared between processes
            raise EmberdError(f"{path}: Annoy could not load the index")
        return cls(index, manifest, search_k_per_result)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(ids [n, k], scores [n, k])``, best first, padded with id -1 / score -inf."""
        q = normalize(np.atleast_2d(queries))
        # Annoy gathers search_k leaf items, computes their exact angular distances and keeps
        # the best: its answer is already the exact re-ranking of that candidate pool, so the
        # cosines come from its distances (d^2 = 2 - 2 cos on unit vectors), no vector copies.
        search_k = max(k * RERANK_FACTOR, k) * self.search_k_per_result
        out_ids = np.full((len(q), k), -1, np.int64)
        out_scores = np.full((len(q), k), -np.inf, np.float32)
        for row, vec in enumerate(q):
            cand, dist = self.index.get_nns_by_vector(
                vec.tolist(), k, search_k=search_k, include_distances=True
            )
            take = len(cand)
            out_ids[row, :take] = cand
            out_scores[row, :take] = 1.0 - np.square(np.asarray(dist, np.float32)) / 2.0
        return out_ids, out_scores

    def unload(self) -> None:
        """Unmap the index file."""
        self.index.unload()


def build_annoy(
    index_dir: Path,
    model: str,
    model_version: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    trees: int = DEFAULT_TREES,
    generation: int = 0,
    threads: int = -1,
) -> AnnoyManifest:
    """Build and atomically install ``model``'s Annoy index; remove the previous file.

    Parameters
    ----------
    index_dir : Path
        The library's index folder.
    model, model_version : str
        Recorded in the manifest.
    ids : int array [n]
        Item ids (non-negative; Annoy allocates up to ``max(ids) + 1`` slots).
    vectors : float array [n, dim]
        Vectors (normalised before insertion).
    trees : int
        Number of Annoy trees.
    generation : int
        The store generation the vectors were read at (staleness check).
    threads : int
        Build threads (-1: all cores).

    Returns
    -------
    AnnoyManifest
        The installed manifest.
    """
    from annoy import AnnoyIndex

    vectors = normalize(vectors)
    dim = int(vectors.shape[1])
    index = AnnoyIndex(dim, METRIC)
    for item, vec in zip(ids.tolist(), vectors, strict=True):
        index.add_item(int(item), vec)
    index.build(trees, n_jobs=threads)
    try:
        old = read_manifest(index_dir, model)
    except EmberdError:  # a damaged manifest is what this rebuild replaces
        old = None
    tmp = index_dir / f".{model}.building.ann"
    index.save(str(tmp))
    index.unload()
    digest = sha256_file(tmp)
    final = index_dir / f"{model}-{digest[:16]}.ann"
    os.replace(tmp, final)
    fsync_dir(index_dir)
    manifest = AnnoyManifest(
        format=MANIFEST_FORMAT,
        version=MANIFEST_VERSION,
        file=final.name,
        model=model,
        model_version=model_version,
        dim=dim,
        metric=METRIC,
        items=len(ids),
        trees=trees,
        sha256=digest,
        file_size=final.stat().st_size,
        generation=generation,
    )
    atomic_write_text(manifest_path(index_dir, model), json.dumps(asdict(manifest), indent=1))
    # Only ever delete one of this model's own index files: a damaged or hostile manifest
    # could name "../library.sqlite".
    if (old is not None and old.file != final.name and old.file.startswith(f"{model}-")
            and old.file.endswith(".ann") and os.sep not in old.file and "/" not in old.file):
        (index_dir / old.file).unlink(missing_ok=True)
    return manifest
