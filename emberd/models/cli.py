"""``emberd models list|info|fetch|import`` and ``emberd embed``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def register(subparsers: Any) -> None:
    """Add ``models`` and ``embed`` to the ``emberd`` parser."""
    models = subparsers.add_parser("models", help="list, inspect, fetch and import encoders")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="known models and whether they are ready")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="one model's manifest, file and active execution provider")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fetch", help="download/convert a built-in model (aisfx, dsp-baseline)")
    p.add_argument("name")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("import", help="add your own ONNX encoder with a JSON manifest")
    p.add_argument("onnx", metavar="PATH.onnx")
    p.add_argument("--manifest", required=True, metavar="M.json")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("embed", help="embed audio files into a .npy matrix")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--model", default=None, help="model name (default: aisfx, else dsp-baseline)")
    p.add_argument("--out", required=True, metavar="OUT.npy")
    p.add_argument("--pool", choices=("mean", "max", "energy"), default="mean")
    p.add_argument(
        "--frames",
        action="store_true",
        help="write per-window rows instead (plus OUT.json mapping rows to files and times)",
    )
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
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
    info = {**manifest.to_dict(), "ready": ready, "provider": None, "device": args.device}
    if ready:
        info["provider"] = load_encoder(manifest, device=args.device, warmup=False).provider
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
    encoder = load_encoder(manifest, device=args.device, threads=args.threads)
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
