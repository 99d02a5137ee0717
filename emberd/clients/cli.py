"""Subcommands ``emberd watch`` and ``emberd panel``."""

from __future__ import annotations

import argparse

from emberd.clients.wire import DEFAULT_CONTROL_ENDPOINT, DEFAULT_PUB_ENDPOINT

DEFAULT_PANEL_PORT = 8765


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``watch`` and ``panel`` to the ``emberd`` parser."""
    w = subparsers.add_parser(
        "watch", help="live terminal view of the daemon's matches, tags and latency",
        description="Live terminal view of a running `emberd run`: top matches per channel, "
                    "live tags, latency p50/p99, overflows, model and provider.",
    )
    w.add_argument("--zmq", default=DEFAULT_PUB_ENDPOINT, metavar="ENDPOINT",
                   help=f"daemon PUB endpoint (default {DEFAULT_PUB_ENDPOINT})")
    w.add_argument("--control", default=DEFAULT_CONTROL_ENDPOINT, metavar="ENDPOINT",
                   help=f"daemon control endpoint, asked for status on connect "
                        f"(default {DEFAULT_CONTROL_ENDPOINT}; 'none' to skip)")
    w.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    w.add_argument("--silence", type=float, default=3.0, metavar="S",
                   help="seconds without messages before the daemon counts as gone (default 3)")
    w.set_defaults(func=_watch)

    p = subparsers.add_parser(
        "panel", help="mix-down assistant web page (library map, live matches, similarity)",
        description="Serve the mix-down assistant on http://127.0.0.1:PORT/: live matches per "
                    "channel, the library map with each channel as a moving cursor, the channel "
                    "similarity heat map, levels and status. Click a match to audition it.",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PANEL_PORT,
                   help=f"HTTP/WebSocket port (default {DEFAULT_PANEL_PORT}; 0 = any free)")
    p.add_argument("--zmq", default=DEFAULT_PUB_ENDPOINT, metavar="ENDPOINT",
                   help=f"daemon PUB endpoint (default {DEFAULT_PUB_ENDPOINT})")
    p.add_argument("--control", default=None, metavar="ENDPOINT",
                   help="daemon control endpoint, asked for status on connect (optional)")
    p.add_argument("--library", default=None, metavar="PATH",
                   help="library folder for the map and auditioning (the one `emberd run` uses)")
    p.add_argument("--model", default=None,
                   help="model whose vectors to map (default: the library's only model)")
    p.add_argument("--listen-any", action="store_true",
                   help="listen on all interfaces instead of 127.0.0.1 (exposes your library)")
    p.set_defaults(func=_panel)


def _watch(args: argparse.Namespace) -> int:
    from emberd.clients.watch import run_watch

    control = None if str(args.control).lower() == "none" else args.control
    return run_watch(args.zmq, control, duration_s=args.duration, silence_s=args.silence)


def _panel(args: argparse.Namespace) -> int:
    from emberd.clients.panel.server import run_panel
    from emberd.errors import EmberdError

    if not 0 <= args.port <= 65535:
        raise EmberdError(f"--port: {args.port} is not a port number")
    return run_panel(args.zmq, args.library, port=args.port,
                     host="0.0.0.0" if args.listen_any else "127.0.0.1",
                     model=args.model, control_endpoint=args.control)
