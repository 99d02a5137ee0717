"""The ``emberd`` command line.

Each subsystem owns its subcommands in its own ``cli`` module and registers
them here through ``register(subparsers)``. Registration must stay cheap: heavy
imports (onnxruntime, sounddevice, annoy) happen inside the handlers, so
``emberd --help`` is instant and file-only use works without PortAudio.

Errors the user can fix are raised as :class:`emberd.errors.EmberdError` and
printed as one line with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from emberd import __version__
from emberd.errors import EmberdError

#: Modules that contribute subcommands, in ``--help`` order.
SUBCOMMAND_MODULES = (
    "emberd.daemon.cli",  # run, demo
    "emberd.library.cli",  # index, query, library
    "emberd.models.cli",  # models, embed
    "emberd.dsp.cli",  # features, devices
    "emberd.clients.cli",  # watch, panel
    "emberd.plugins.cli",  # plugins
)

EXIT_USAGE = 2  # bad input or environment: one clear line, no traceback


DESCRIPTION = (
    "emberd: a live audio embedding daemon for music producers. It indexes your sample "
    "folders, names the library sounds it hears in live audio (a microphone, a DAW bus, a "
    "file) and publishes matches, tags, levels and embeddings over OSC and ZeroMQ to your "
    "DAW, Pd, SuperCollider, a terminal monitor or the web panel. Start with `emberd demo`."
)
EPILOG = (
    "exit status: 0 success; 1 some inputs failed (`query`: the others were answered); "
    "2 bad usage or environment (one line on stderr); 130 interrupted."
)


class Parser(argparse.ArgumentParser):
    """argparse with the emberd error style: one line on stderr, exit status 2.

    Subparsers inherit the class, so every subcommand reports a bad option the same way
    (``emberd run: error: argument --hop-ms: ...``) instead of a usage block.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``emberd`` parser with every subsystem's subcommands."""
    parser = Parser(prog="emberd", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"emberd {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # subsystem not built yet
                continue
            raise
        module.register(sub)
    return parser


def _leave(code: int) -> int:
    """``code``, or end the process with it at once when an audio stream was left running.

    A PortAudio thread of a stream abandoned after an input stall would call into a
    finalising interpreter (SIGSEGV at exit), whichever way the command ended: success,
    one-line error or Ctrl-C. Everything the command opened is closed by then.
    """
    device = sys.modules.get("emberd.dsp.device")  # not imported: no stream was opened
    if device is not None and device.streams_left_running():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emberd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = (logging.WARNING, logging.INFO, logging.DEBUG)
    logging.basicConfig(
        level=verbosity[min(args.verbose, 2)],
        format="emberd: %(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        rc = args.func(args)
    except EmberdError as exc:
        print(f"emberd: error: {exc}", file=sys.stderr)
        return _leave(EXIT_USAGE)
    except Exception as exc:  # a full disk or read-only place anywhere below: one line
        from emberd.diskerrors import disk_error

        line = disk_error(exc)
        if line is None:
            raise
        print(f"emberd: error: {line}; nothing half-written was kept", file=sys.stderr)
        return _leave(EXIT_USAGE)
    except KeyboardInterrupt:
        return _leave(130)
    return _leave(int(rc or 0))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
