"""``emberd index``, ``emberd query`` and ``emberd library info``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from emberd.cliopts import add_k, add_precision, add_threads, int_range

DEFAULT_MODEL = "aisfx"
DEFAULT_QUERY_K = 10  # matches per file
EXIT_SOME_FAILED = 1  # `query`: some inputs could not be read; the others were answered


def register(subparsers: Any) -> None:
    """Add the library subcommands to the ``emberd`` parser."""
    idx = subparsers.add_parser(
        "index", help="index sample folders into a library",
        description="Scan folders for audio, embed new and changed files, drop deleted ones.",
    )
    idx.add_argument("dirs", nargs="+", metavar="DIR", help="folders to index (recursive)")
    idx.add_argument("--library", required=True, metavar="PATH", help="library folder")
    idx.add_argument("--model", default=DEFAULT_MODEL, help="embedding model (default: aisfx)")
    add_precision(idx)
    idx.add_argument("--jobs", type=int_range(0), default=os.cpu_count() or 1, metavar="N",
                     help="decoder processes (default: one per CPU; 0: decode in the main "
                          "process)")  # fmt: skip
    add_threads(idx)
    idx.add_argument("--quiet", action="store_true", help="no progress bar")
    idx.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="decode and embed on a Ray cluster: auto, HOST:PORT, or none for a "
                          "local Ray (pip install 'emberd[ray]'; every node must see DIR at the "
                          "same path)")
    idx.add_argument("--ray-actors", type=int_range(0), default=0, metavar="N",
                     help="embedding actors per node with --ray (default: one per GPU, or one "
                          "per CPU node)")
    idx.set_defaults(func=_index)

    q = subparsers.add_parser(
        "query", help="find library sounds for audio files",
        description="Identify each file in the library and list similar sounds. Answers go "
        "to stdout; a file that cannot be read is reported on stderr and the others are "
        "still answered.",
        epilog="exit status: 0 every file answered; 1 some files could not be read (each "
        "named on stderr, the others answered); 2 bad usage, the library or model cannot "
        "be used, or with --timeline no file could be read (one line on stderr).",
    )  # fmt: skip
    q.add_argument("files", nargs="+", metavar="FILE", help="audio files to look up")
    q.add_argument("--library", required=True, metavar="PATH", help="library folder")
    q.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model the library was indexed with (default {DEFAULT_MODEL})")
    add_precision(q)
    add_k(q, default=DEFAULT_QUERY_K, what="file")
    q.add_argument("--search", choices=("auto", "exact", "annoy"), default="auto",
                   help="similar-sound search: exact cosine, the Annoy index, or auto (Annoy "
                        "for large libraries; default)")
    q.add_argument("--json", action="store_true", help="one JSON object per answered file")
    q.add_argument("--timeline", action="store_true",
                   help="list every library sample found in each file (a beat, a bounce, a "
                        "stem): start, gain, speed and confidence per occurrence; streams "
                        "files of any length (--model, --k and --search do not apply; "
                        "--precision is refused)")
    q.set_defaults(func=_query)

    lib = subparsers.add_parser("library", help="library maintenance",
                                description="Inspect a library made by `emberd index`.")
    lib_sub = lib.add_subparsers(dest="library_command", metavar="COMMAND")
    info = lib_sub.add_parser("info", help="counts, models, Annoy recall@10 vs exact",
                              description="Count files, vectors and landmarks per model and "
                              "measure the Annoy index's recall@10 against exact search.")
    info.add_argument("--library", required=True, metavar="PATH", help="library folder")
    info.add_argument("--sample", type=int_range(1), default=200, metavar="N",
                      help="queries for the recall measurement (default 200)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)
    lib.set_defaults(func=lambda _a: lib.print_help() or 2)


def _index(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from emberd.library.indexer import Indexer
    from emberd.models.precision import model_for

    args.model = model_for(args.model, args.precision)
    if args.ray is not None:
        from emberd.library.ray_index import RayIndexer

        indexer = _guard_db(lambda: RayIndexer(args.library, args.model, address=args.ray,
                                               actors=args.ray_actors))
    else:
        indexer = _guard_db(lambda: Indexer(args.library, args.model, jobs=args.jobs,
                                            threads=args.threads))
    console = Console(stderr=True)
    show = not args.quiet and console.is_terminal
    if args.ray is not None and not args.quiet:
        console.print(indexer.resources.line(args.ray), highlight=False, soft_wrap=True)
    with Progress(
        TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=console, disable=not show,
    ) as bar:
        task = bar.add_task("index", total=None, rate="")
        import time

        t0 = time.monotonic()

        def on_start(total: int) -> None:
            bar.update(task, total=total)

        def progress(done: int, total: int) -> None:
            rate = done / max(time.monotonic() - t0, 1e-6)
            bar.update(task, completed=done, rate=f"{rate:.1f} files/s")

        try:
            summary = _guard_db(lambda: indexer.run(args.dirs, progress=progress,
                                                    on_start=on_start))
        finally:
            indexer.close()
    for line in summary.lines():
        print(line)
    return 0 if summary.indexed + summary.unchanged > 0 else 1


def _guard_db(fn: Any) -> Any:
    """Turn a damaged-database error anywhere below into one EmberdError line."""
    import sqlite3

    from emberd.diskerrors import disk_error
    from emberd.errors import EmberdError

    try:
        return fn()
    except (sqlite3.DatabaseError, OSError) as exc:
        full = disk_error(exc)
        if full is not None:
            fix = "index into a writable place" if "read-only" in full else \
                "make room and run emberd index again"
            raise EmberdError(f"{full}; the library keeps every batch committed before it and "
                              f"stays usable ({fix})") from None
        if isinstance(exc, OSError):
            raise
        raise EmberdError(f"library database damaged or locked ({exc})") from None


def _query(args: argparse.Namespace) -> int:
    if args.timeline:
        from emberd.errors import EmberdError
        from emberd.library.timeline import run_cli

        if args.precision is not None:  # accepted and ignored would be a silent lie
            raise EmberdError("--precision does not apply to --timeline (the timeline compares "
                              "waveforms; it runs no encoder)")

        return int(_guard_db(lambda: run_cli(args.library, args.files, as_json=args.json)))
    from emberd.dsp.silence import QUERY_FLOOR_DBFS, no_sound_reason
    from emberd.dsp.sources import load_audio
    from emberd.errors import EmberdError
    from emberd.library.query import Library, encoder_for
    from emberd.models.precision import model_for

    args.model = model_for(args.model, args.precision)
    library = _guard_db(lambda: Library.open(args.library, search=args.search))
    try:
        sr = encoder_for(args.model).manifest.frontend().sr
        library.require_model(args.model)  # fail early, before any query runs
        failed = 0
        for path in args.files:
            try:
                y, _info = load_audio(path, sr=sr, mono=True)
            except EmberdError as exc:  # this input only: say so on stderr, answer the rest
                failed += 1
                why = str(exc) if str(exc).startswith(path) else f"{path}: {exc}"
                print(f"emberd query: {why}", file=sys.stderr, flush=True)
                continue
            # A library that fails now (damaged, locked) fails the command: exit 2.
            silent = no_sound_reason(y, floor_dbfs=QUERY_FLOOR_DBFS)
            if silent is not None:  # silence is never a match: say why there is none
                record: dict[str, Any] = {"query": path, "matches": [],
                                          "reason": f"no sound: {silent}"}
            else:
                matches = _guard_db(lambda y=y: library.query_audio(y, sr, args.k,
                                                                    model=args.model))
                record = {"query": path, "matches": matches}
            _print_record(record, args.json)
    finally:
        library.close()
    return EXIT_SOME_FAILED if failed else 0


def _print_record(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
        return
    print(record["query"])
    if "reason" in record:
        print(f"  no match: {record['reason']}")
    for i, m in enumerate(record["matches"], 1):
        tags = "/".join(m["tags"])
        score = f"{m['score']:.3f}" if "score" in m else "  -  "
        print(f"  {i:2d}. {score} {m['kind']:7s} {m['path']}"
              + (f"  [{tags}]" if tags else "")
              + (f" @ {m['segment_start_s']:.2f} s" if m["segment_start_s"] else ""))


def _info(args: argparse.Namespace) -> int:
    from emberd.library.query import Library

    library = _guard_db(lambda: Library.open(args.library))
    try:
        data = _guard_db(lambda: library.info(recall_sample=args.sample))
    finally:
        library.close()
    if args.json:
        print(json.dumps(data))
        return 0
    print(f"library {data['path']}: {data['files']} files, {data['vectors']} vectors, "
          f"{data['fingerprints']} landmarks")
    for name, entry in data["models"].items():
        print(f"  model {name} v{entry['version']} ({entry['dim']}-d): {entry['files']} files, "
              f"{entry['vectors']} vectors")
        annoy = entry["annoy"]
        if isinstance(annoy, dict):
            recall = next(v for k, v in annoy.items() if k.startswith("recall@"))
            print(f"    annoy: {annoy['items']} items, {annoy['trees']} trees, recall@10 vs "
                  f"exact {recall:.3f} on {annoy['sample']} queries that are not library items"
                  + (" (stale: re-run emberd index)" if annoy["stale"] else ""))
        else:
            print(f"    annoy: {annoy}")
    return 0
