"""``emberd plugins``: every installed encoder, sink and analyser, and whether it loads."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from emberd import plugins


def register(subparsers: Any) -> None:
    """Add ``plugins``."""
    p = subparsers.add_parser(
        "plugins", help="list installed plug-ins (encoders, sinks, analysers), whether they load",
        description="List every entry point of the emberd.encoders, emberd.sinks and "
        "emberd.analyzers groups (emberd's own built-ins included) with its distribution, "
        "version and whether its object imports. Exit 0 even when one does not load.",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=plugins_command)


def plugins_command(args: argparse.Namespace) -> int:
    rows = [plugins.status(info) for group in plugins.GROUPS for info in plugins.discover(group)]
    if args.json:
        json.dump({"plugins": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    for group in plugins.GROUPS:
        print(group)
        for r in (r for r in rows if r["group"] == group):
            state = "ok" if r["loads"] else f"FAILS: {r['error']}"
            print(f"  {r['name']:<{width}}  {r['dist']} {r['version']}  {state}")
        if not any(r["group"] == group for r in rows):
            print("  (none)")
    return 0
