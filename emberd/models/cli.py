"""``emberd models list|info|fetch|import`` and ``emberd embed``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from emberd.cliopts import add_provider, add_threads


def register(subparsers: Any) -> None:
    """Add ``models`` and ``embed`` to the ``emberd`` parser."""
    models = subparsers.add_parser("models", help="list, inspect, fetch and import encoders",
                                   description="Manage the encoders emberd can run.")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="known models and whether they are ready",
                       description="List the built-in and imported models and whether each "
                       "is ready to run.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="one model's manifest, file and active execution provider",
                       description="Show a model's manifest, its file and the ONNX Runtime "
                       "execution provider that would run it.")
    p.add_argument("name", help="model name (see `emberd models list`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_provider(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fetch", help="download/convert a built-in model (aisfx, dsp-baseline)",
                       description="Fetch a built-in model: aisfx comes from its PyPI wheel "
                       "(pip download, sha256-checked) and is converted to ONNX without PyTorch; "
                       "dsp-baseline is built locally.")
    p.add_argument("name", help="aisfx or dsp-baseline")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("import", help="add your own ONNX encoder with a JSON manifest",
                       description="Copy your ONNX encoder and its JSON manifest into the "
                       "emberd data folder, after checking them.")
    p.add_argument("onnx", metavar="PATH.onnx",
                   help="ONNX graph: [batch, frames, n_mels] -> [batch, dim]")
    p.add_argument("--manifest", required=True, metavar="M.json",
                   help="JSON manifest (front end, window, names, licence; see README)")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("embed", help="embed audio files into a .npy matrix",
                              description="One pooled embedding row per file (or one row per "
                              "window with --frames), written atomically as float32 .npy.")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--model", default=None, help="model name (default: aisfx, else dsp-baseline)")
    p.add_argument("--out", required=True, metavar="OUT.npy", help="output matrix (.npy)")
    p.add_argument("--pool", choices=("mean", "max", "energy"), default="mean",
                   help="how window embeddings become one row per file (default mean; energy: "
                        "weighted by window energy)")
    p.add_argument(
        "--frames",
        action="store_true",
        help="write per-window rows instead (plus OUT.json mapping rows to files and times)",
    )
    add_provider(p)
    add_threads(p)
    p.set_defaults(func=cmd_embed)


def cmd_list(args: argparse.Namespace) -> int:
    """Print the known models."""
    from emberd.models import registry

    rows = [{**m.to_dict(), "ready": registry.available(m)} for m in registry.list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "ready" if row["ready"] else f"not fetched (emberd models fetch {row['name']})"
        if row["name"] == "dsp-baseline" and not row["ready"]:
            state = "built on first use"
        print(
            f"{row['name']:<16} {row['origin']:<8} dim {row['dim']:<4} "
            f"window {row['window_frames']} frames  {state}"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print one model's manifest, its file and the provider that would run it."""
    from emberd.errors import ComponentMissing
    from emberd.models import registry
    from emberd.models.plugin import load_encoder

    try:
        manifest = registry.resolve(args.name)
        ready = True
    except ComponentMissing:
        known = {m.name: m for m in registry.list_models()}
        if args.name not in known:
            raise
        manifest, ready = known[args.name], False
    info = {**manifest.to_dict(), "ready": ready, "provider": None, "requested": args.provider}
    if ready:
        info["provider"] = load_encoder(manifest, device=args.provider, warmup=False).provider
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        print(f"{key:>14}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch a built-in model."""
    from emberd.models import registry

    manifest = registry.fetch(args.name)
    print(f"{manifest.name}: ready at {manifest.path}")
    if manifest.name == "aisfx":
        print(f"aiSFX: {manifest.citation}. Licence: {manifest.licence}.")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import a user ONNX model."""
    from emberd.models import registry

    manifest = registry.import_model(args.onnx, args.manifest)
    print(f"{manifest.name}: imported to {manifest.path}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed files: one pooled row per file, or one row per window with ``--frames``."""
    import numpy as np

    from emberd.atomic import atomic_open, atomic_write_text
    from emberd.errors import EmberdError
    from emberd.models import registry
    from emberd.models.embedding import embed_file_windows, pool
    from emberd.models.plugin import load_encoder

    out = Path(args.out)
    if out.suffix != ".npy":
        raise EmberdError(f"{out}: --out must end in .npy")
    if not out.parent.is_dir():
        raise EmberdError(f"{out.parent}: folder does not exist")
    manifest = registry.resolve_default(args.model)
    encoder = load_encoder(manifest, device=args.provider, threads=args.threads)
    rows: list[np.ndarray] = []
    index: list[dict[str, Any]] = []
    count = 0
    for name in args.files:
        emb, starts, energy = embed_file_windows(name, encoder)
        if args.frames:
            rows.append(emb)
            index.append(
                {"path": str(Path(name).resolve()), "rows": [count, count + len(emb)],
                 "start_s": [round(float(s), 6) for s in starts]}
            )  # fmt: skip
            count += len(emb)
        else:
            rows.append(pool(emb, args.pool, energy)[None, :])
    matrix = np.concatenate(rows).astype(np.float32)
    with atomic_open(out, "wb") as fh:
        np.save(fh, matrix)
    if args.frames:
        sidecar = out.with_suffix(".json")
        meta = {"model": manifest.name, "dim": manifest.dim, "files": index}
        atomic_write_text(sidecar, json.dumps(meta, indent=2) + "\n")
    print(
        f"{out}: {matrix.shape[0]} x {matrix.shape[1]} ({manifest.name}, {encoder.provider})",
        file=sys.stderr,
    )
    return 0
