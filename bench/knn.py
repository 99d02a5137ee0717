"""Nearest-neighbour scale benchmark: Annoy (emberd's index code path) vs exact search.

Synthetic clustered unit vectors (``--n`` x ``--dim``, default 1M x 512; use a
smaller ``--n`` where building Annoy on a small machine takes too long),
queries drawn from the same clusters (never library items; the untimed warm-up
uses another draw than the timed queries). Prints: Annoy build time, index file
size, resident memory before/after mapping the index and after the queries
(the index is mmapped, so pages count only when touched), and for each
``search_k`` setting the query latency p50/p99 (one query at a time, with
emberd's exact re-ranking of the candidates) and recall@10 against exact
search. The anchor: exact search per query (one matrix-vector product over
all items) in the same run; latencies are also given as a ratio to it.

Usage: ``python bench/knn.py [--n 1000000] [--dim 512] [--trees 32] [--queries 300]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from emberd.library.search import AnnoySearch, ExactSearch, build_annoy, normalize, read_manifest

K = 10
CLUSTERS = 2000
CLUSTER_SPREAD = 0.6  # noise norm relative to the centre norm: overlapping clusters


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """``n`` unit vectors around random centres."""
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        c = centres[rng.integers(len(centres), size=m)]
        noise = rng.standard_normal((m, dim)).astype(np.float32)
        noise *= CLUSTER_SPREAD / np.sqrt(dim)
        out[i : i + m] = normalize(c + noise)
    return out


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--trees", type=int, default=32)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument(
        "--search-k",
        type=int,
        nargs="+",
        default=[50, 100, 200, 400, 800],
        help="Annoy search_k per requested candidate",
    )
    ap.add_argument("--dir", help="folder for the index (default: temporary)")
    ap.add_argument(
        "--reuse", action="store_true", help="query the index already built in --dir (same args)"
    )
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    centres = normalize(rng.standard_normal((CLUSTERS, args.dim)).astype(np.float32))
    t0 = time.perf_counter()
    data = clustered(args.n, args.dim, rng, centres)
    queries = clustered(args.queries, args.dim, rng, centres)
    warm = clustered(args.queries, args.dim, rng, centres)  # other draws: warm-up only
    print(
        f"data {args.n} x {args.dim} float32 ({data.nbytes / 2**30:.2f} GiB) in "
        f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs"
    )

    exact = ExactSearch(np.arange(args.n), data)
    lat_exact = []
    truth = []
    for q in queries[: min(len(queries), 100)]:
        t = time.perf_counter()
        ids, _ = exact.search(q[None, :], K)
        lat_exact.append(time.perf_counter() - t)
    for i in range(0, len(queries), 50):
        truth.append(exact.search(queries[i : i + 50], K)[0])
    true_ids = np.concatenate(truth)
    ex50, ex99 = np.percentile(lat_exact, [50, 99]) * 1000
    print(f"exact (anchor): p50 {ex50:.2f} ms, p99 {ex99:.2f} ms per query")
    del exact

    folder = Path(args.dir or tempfile.mkdtemp(prefix="emberd-knn-"))
    folder.mkdir(parents=True, exist_ok=True)
    rss0 = rss_mb()
    existing = read_manifest(folder, "bench") if args.reuse else None
    if existing is not None and (existing.items, existing.dim, existing.trees) == (
        args.n, args.dim, args.trees
    ):
        size = (folder / existing.file).stat().st_size
        print(f"annoy: reusing {existing.trees} trees, file {size / 2**30:.2f} GiB")
    else:
        t = time.perf_counter()
        manifest = build_annoy(folder, "bench", "1", np.arange(args.n), data, trees=args.trees)
        build_s = time.perf_counter() - t
        size = (folder / manifest.file).stat().st_size
        print(
            f"annoy build: {args.trees} trees in {build_s:.1f} s, file {size / 2**30:.2f} GiB "
            f"(RSS during build peaked above {rss0:.0f} MiB)"
        )
    del data
    rss_before = rss_mb()
    t = time.perf_counter()
    ann = AnnoySearch.open(folder, "bench", dim=args.dim)
    assert ann is not None
    open_s = time.perf_counter() - t
    rss_mapped = rss_mb()
    print(
        f"open (manifest + sha256 check + mmap): {open_s:.2f} s; RSS {rss_before:.0f} MiB before,"
        f" {rss_mapped:.0f} MiB after mapping"
    )
    # Warm-up (untimed) with *other* queries from the same clusters: a running library has
    # its index pages resident, but the timed queries must not find their own paths cached.
    ann.search_k_per_result = max(args.search_k)
    for q in warm:
        ann.search(q[None, :], K)
    print(
        f"{'search_k/cand':>14s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99/exact':>10s} "
        f"{'recall@10':>10s} {'RSS MiB':>8s}"
    )
    for sk in args.search_k:
        ann.search_k_per_result = sk
        lat = []
        found = []
        for q in queries:
            t = time.perf_counter()
            ids, _ = ann.search(q[None, :], K)
            lat.append(time.perf_counter() - t)
            found.append(ids[0])
        recall = np.mean(
            [
                len(set(f.tolist()) & set(e.tolist())) / K
                for f, e in zip(found, true_ids, strict=True)
            ]
        )
        p50, p99 = np.percentile(lat, [50, 99]) * 1000
        print(f"{sk:14d} {p50:8.2f} {p99:8.2f} {p99 / ex99:10.3f} {recall:10.3f} {rss_mb():8.0f}")
    ann.unload()


if __name__ == "__main__":
    main()
