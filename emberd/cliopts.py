"""Options that several ``emberd`` subcommands share: one spelling, one rule, one help text.

Every subsystem's ``cli`` module adds these through the ``add_*`` helpers instead of
writing its own, so a flag means the same thing everywhere:

* ``--zmq`` / ``--control``: :func:`emberd.clients.cli.add_zmq` and ``add_control``
  (they need the wire defaults, which live in the clients layer);
* ``--provider`` is the ONNX Runtime execution provider (``--device`` stays as an
  alias); "device" otherwise always means an audio device (``--input``, ``emberd devices``);
* ``--threads`` is the encoder's ONNX Runtime intra-op threads, 1 or more;
* ``--k`` is the number of matches, 1..:data:`MAX_K`.

Values are checked by argparse ``type`` callables, so a bad value is one line naming
the option and what it accepts (see :class:`emberd.cli.Parser`). This module is at the
top of the package (like :mod:`emberd.errors`) so every layer may use it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("fp32", "int8")  # emberd.models.precision maps them to model variants
DEFAULT_THREADS = 2  # ONNX Runtime intra-op threads: measured best on 2-4 core laptops
MAX_THREADS = 256  # more intra-op threads than this is a typo
MAX_K = 100  # most matches a daemon hop or a query returns


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``lo..hi`` (no upper bound when ``hi`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            span = f"{lo}..{hi}" if hi is not None else f"{lo} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {span})")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return value


def non_negative_float(text: str) -> float:
    """An argparse ``type``: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def add_provider(p: argparse.ArgumentParser) -> None:
    """``--provider auto|cpu|cuda`` (alias ``--device``): where the encoder runs."""
    p.add_argument("--provider", "--device", dest="provider", default="auto",
                   choices=PROVIDER_CHOICES,
                   help="ONNX Runtime execution provider: auto (CUDA when emberd[gpu] is "
                        "installed, else CPU), cpu or cuda (default auto; --device is the old "
                        "spelling)")  # fmt: skip


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision fp32|int8``: the model's float or int8 variant (emberd.models.precision)."""
    p.add_argument("--precision", default=None, choices=PRECISION_CHOICES,
                   help="encoder arithmetic: fp32 (default) or int8 (aisfx -> aisfx-int8: "
                        "~3.4x less CPU per window, embeddings alone -1.2 points top-1; the "
                        "library must be indexed with the same precision)")  # fmt: skip


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads N``: the encoder's intra-op threads."""
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=DEFAULT_THREADS,
                   metavar="N",
                   help=f"ONNX Runtime intra-op threads of the encoder (default "
                        f"{DEFAULT_THREADS})")  # fmt: skip


def add_k(p: argparse.ArgumentParser, *, default: int, what: str) -> None:
    """``--k N``: matches per ``what``, 1..MAX_K."""
    p.add_argument("--k", type=int_range(1, MAX_K), default=default, metavar="N",
                   help=f"matches per {what}, 1..{MAX_K} (default {default})")


def endpoint_or_none(text: str | None) -> str | None:
    """``None`` for an endpoint option set to ``none``/``off``/empty, else the text."""
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    return text
