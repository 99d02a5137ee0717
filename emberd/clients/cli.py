"""``emberd watch`` and ``emberd panel``, and the endpoint options every command shares."""

from __future__ import annotations

import argparse

from emberd.clients.wire import DEFAULT_CONTROL_ENDPOINT, DEFAULT_PUB_ENDPOINT
from emberd.cliopts import endpoint_or_none, int_range, positive_float

DEFAULT_PANEL_PORT = 8765
DEFAULT_SILENCE_S = 3.0  # seconds without messages before the daemon counts as gone


def add_zmq(p: argparse.ArgumentParser, *, bind: bool) -> None:
    """``--zmq ENDPOINT`` (alias ``--zmq-pub``): the daemon's ZeroMQ PUB endpoint."""
    what = ("bind the ZeroMQ PUB socket on ENDPOINT ('none' disables)" if bind
            else "the daemon's ZeroMQ PUB endpoint to subscribe to")
    p.add_argument("--zmq", "--zmq-pub", dest="zmq", default=DEFAULT_PUB_ENDPOINT,
                   metavar="ENDPOINT",
                   help=f"{what} (default {DEFAULT_PUB_ENDPOINT}; --zmq-pub is the same "
                        "option)")  # fmt: skip


def add_control(p: argparse.ArgumentParser, *, bind: bool) -> None:
    """``--control ENDPOINT``: the daemon's ZeroMQ control (REQ/REP) endpoint."""
    what = ("bind the ZeroMQ control REP socket on ENDPOINT" if bind
            else "the daemon's ZeroMQ control endpoint, asked for status on connect")
    p.add_argument("--control", default=DEFAULT_CONTROL_ENDPOINT, metavar="ENDPOINT",
                   help=f"{what} (default {DEFAULT_CONTROL_ENDPOINT}; 'none' disables)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``watch`` and ``panel`` to the ``emberd`` parser."""
    w = subparsers.add_parser(
        "watch", help="live terminal view of the daemon's matches, tags and latency",
        description="Live terminal view of a running `emberd run`: top matches per channel, "
                    "live tags, latency p50/p99, overflows, model and provider. When stdout "
                    "is not a terminal (a pipe, a log file) it writes one line per change "
                    "instead, flushed at once; --json writes them as JSON objects.",
    )
    add_zmq(w, bind=False)
    add_control(w, bind=False)
    w.add_argument("--duration", type=positive_float, default=None, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    w.add_argument("--silence", type=positive_float, default=DEFAULT_SILENCE_S, metavar="S",
                   help="seconds without messages before the daemon counts as gone "
                        f"(default {DEFAULT_SILENCE_S:g})")
    w.add_argument("--json", action="store_true",
                   help="one JSON object per change on stdout, flushed (for pipes and logs)")
    w.set_defaults(func=_watch)

    p = subparsers.add_parser(
        "panel", help="mix-down assistant web page (library map, live matches, similarity)",
        description="Serve the mix-down assistant on http://127.0.0.1:PORT/: live matches per "
                    "channel, the library map with each channel as a moving cursor, the channel "
                    "similarity heat map, levels and status. Click a match to audition it.",
    )
    p.add_argument("--port", type=int_range(0, 65535), default=DEFAULT_PANEL_PORT,
                   help=f"HTTP/WebSocket port (default {DEFAULT_PANEL_PORT}; 0 = any free)")
    add_zmq(p, bind=False)
    add_control(p, bind=False)
    p.add_argument("--library", default=None, metavar="PATH",
                   help="library folder for the map and auditioning (the one `emberd run` uses)")
    p.add_argument("--model", default=None,
                   help="model whose vectors to map (default: the library's only model)")
    p.add_argument("--listen-any", action="store_true",
                   help="listen on all interfaces instead of 127.0.0.1 (exposes your library)")
    p.set_defaults(func=_panel)


def _watch(args: argparse.Namespace) -> int:
    from emberd.clients.watch import run_watch

    return run_watch(args.zmq, endpoint_or_none(args.control), duration_s=args.duration,
                     silence_s=args.silence, as_json=args.json)  # fmt: skip


def _panel(args: argparse.Namespace) -> int:
    from emberd.clients.panel.server import run_panel

    return run_panel(args.zmq, args.library, port=args.port,
                     host="0.0.0.0" if args.listen_any else "127.0.0.1",
                     model=args.model, control_endpoint=endpoint_or_none(args.control))
